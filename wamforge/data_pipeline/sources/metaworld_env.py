"""Driving Meta-World: seeded environments, fast upright rendering, experts and success readout.

Shared by data generation (the `sim` source) and closed-loop evaluation so both see the same
frames, proprio and layouts for a given (task, seed).
"""
from __future__ import annotations

import os
import warnings
import zlib

# Headless rendering; must be chosen before mujoco is first imported. A user's choice wins.
os.environ.setdefault("MUJOCO_GL", "egl")
# Mesa's software rasterizer would spread each render over every core; builds run a task per core
os.environ.setdefault("LP_NUM_THREADS", "1")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from metaworld.env_dict import ALL_V3_ENVIRONMENTS  # noqa: E402
from metaworld.policies import ENV_POLICY_MAP  # noqa: E402

ACTION_SPACE = "ee_delta_xyz+grip"
MAX_PATH_LENGTH = 500  # Meta-World raises if stepped past this without a reset

# The experts saturate on purpose and we clip their actions; the warning is noise.
warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")

_INSTRUCTIONS = {
    "reach-v3": "reach the goal",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "door-close-v3": "close the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-v3": "press the button",
    "peg-insert-side-v3": "insert the peg into the hole",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
    "plate-slide-v3": "slide the plate into the goal",
    "coffee-button-v3": "press the coffee machine button",
}


def instruction(task: str) -> str:
    """A short language instruction; unknown tasks read as their name, e.g. 'lever pull'."""
    return _INSTRUCTIONS.get(task) or task.rsplit("-v", 1)[0].replace("-", " ")


def episode_seed(base: int, task: str, index: int | str) -> int:
    """A reproducible seed per (base, task, index); crc32 because hash() is salted per process."""
    return zlib.crc32(f"{base}/{task}/{index}".encode()) & 0x7FFFFFFF


class _SeededUpright(gym.Wrapper):
    """Seeded layouts and upright images on top of a raw Meta-World env."""

    def __init__(self, env: gym.Env, camera: str):
        super().__init__(env)
        # Some cameras (the corners) are defined with their up axis pointing down.
        self.upside_down = bool(env.unwrapped.data.cam(camera).xmat.reshape(3, 3)[2, 1] < 0)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        # Meta-World ignores reset(seed=...); re-seed the RNG its layouts are drawn from.
        if seed is not None:
            self.env.unwrapped.seed(seed)
        return self.env.reset(options=options)

    def render(self) -> np.ndarray:
        frame = self.env.render()
        return frame[::-1] if self.upside_down else frame


def make_env(task: str, seed: int, camera: str = "corner", resolution: tuple[int, int] = (64, 64),
             max_steps: int = MAX_PATH_LENGTH) -> gym.Env:
    """A goal-observable Meta-World env whose layout is a function of the seed.

    The first `reset()` uses `seed`; `reset(seed=s)` re-seeds, so one env serves many episodes.
    An episode truncates after `max_steps` steps. `resolution` is (height, width).
    """
    if task not in ALL_V3_ENVIRONMENTS:
        raise ValueError(f"unknown Meta-World task '{task}'; known: {', '.join(ALL_V3_ENVIRONMENTS)}")
    if not 1 <= max_steps <= MAX_PATH_LENGTH:
        raise ValueError(f"max_steps must be in 1..{MAX_PATH_LENGTH}, got {max_steps}")
    height, width = resolution
    env = ALL_V3_ENVIRONMENTS[task](render_mode="rgb_array", camera_name=camera, width=width, height=height)
    # What metaworld's goal-observable envs do (env_dict._create_observable_goal_envs), except that
    # layouts come from the env's seeded RNG (seeded_rand_vec) rather than the global numpy one.
    env._partially_observable = False
    del env.sawyer_observation_space  # cached with the goal masked out; recompute with it
    env.observation_space = env.sawyer_observation_space
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    env._set_task_called = True
    env.seed(seed)
    # Shadows and multisampling cost ~6x render time and buy nothing at 64x64.
    env.model.vis.quality.shadowsize = 0
    env.model.vis.quality.offsamples = 0
    return gym.wrappers.TimeLimit(_SeededUpright(env, camera), max_episode_steps=max_steps)


def render(env: gym.Env) -> np.ndarray:
    """The current camera image, uint8 [H, W, 3], upright."""
    return np.ascontiguousarray(env.render(), dtype=np.uint8)


class ExtraViews:
    """More cameras of the same scene, rendered upright beside the env's own: [V, H, W, 3]."""

    def __init__(self, env: gym.Env, cameras: list[str], resolution: tuple[int, int]):
        import mujoco

        raw = env.unwrapped
        unknown = [c for c in cameras if mujoco.mj_name2id(raw.model, mujoco.mjtObj.mjOBJ_CAMERA, c) < 0]
        if unknown:
            raise ValueError(f"Meta-World has no cameras {unknown}; it has corner, corner2, corner3, topview, "
                             f"behindGripper, gripperPOV")
        self.raw, self.cameras = raw, cameras
        self.renderer = mujoco.Renderer(raw.model, *resolution) if cameras else None
        self.flip = [bool(raw.data.cam(c).xmat.reshape(3, 3)[2, 1] < 0) for c in cameras]

    def __call__(self) -> list[np.ndarray]:
        views = []
        for camera, flip in zip(self.cameras, self.flip):
            self.renderer.update_scene(self.raw.data, camera=camera)
            image = self.renderer.render()
            views.append(np.ascontiguousarray(image[::-1] if flip else image))
        return views

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()


def proprio(obs: np.ndarray) -> np.ndarray:
    """[x, y, z, grip_open]: hand position and gripper opening, the first 4 observation dims."""
    return np.asarray(obs[:4], dtype=np.float32)


def clip_action(env: gym.Env, action: np.ndarray) -> np.ndarray:
    space = env.action_space
    return np.clip(np.asarray(action, dtype=np.float32), space.low, space.high)


def expert(task: str):
    """Meta-World's scripted policy for the task: `.get_action(obs) -> action` (may exceed [-1, 1])."""
    if task not in ENV_POLICY_MAP:
        raise ValueError(f"no scripted expert for Meta-World task '{task}'")
    return ENV_POLICY_MAP[task]()


def success(info: dict) -> bool:
    """Meta-World reports success as a float 0.0/1.0 in the step info."""
    return bool(info.get("success", 0.0) > 0.5)
