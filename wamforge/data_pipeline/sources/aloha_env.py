"""Driving ALOHA sim (gym-aloha): seeded layouts, one camera rendered at the asked size, scripted
experts and success readout.

Shared by data generation (the `aloha` source) and closed-loop evaluation (the `aloha` suite) so
both see the same frames, proprio and layouts for a given (task, seed).

Two bimanual ViperX tasks, controlled at 50 Hz by 14-D absolute joint-position targets
(per arm: 6 joints in rad, then the gripper opening normalized to 0 closed .. 1 open):
  transfer-cube: the right arm picks up the red cube and hands it over to the left arm.
  insertion: the left arm picks up the blue socket, the right arm the red peg; they meet in the
             air and the peg goes into the socket.
Success is gym-aloha's own: the step reward reaches the task's maximum (4).

The experts follow the scheme of ACT's scripted policies: end-effector waypoints, linearly
interpolated, are rolled out in gym-aloha's end-effector (mocap) space; the joint positions the arms
reach there, with the commanded gripper openings, become the joint-space actions replayed here
(after one correction pass for the joint servos' friction lag, see `_lead_for_friction`).
Measured success of the replayed experts in the joint-space env, on the seeds
`episode_seed(0, task, i)` for i in 0..19: transfer-cube 20/20 (solved at step ~286),
insertion 20/20 (solved at step ~360). Planning one episode takes about a second on one core.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

# Headless rendering; must be chosen before mujoco (and dm_control) is first imported. A user's choice wins.
os.environ.setdefault("MUJOCO_GL", "egl")
# Mesa's software rasterizer would spread each render over every core; builds run a task per core
os.environ.setdefault("LP_NUM_THREADS", "1")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from dm_control import mujoco as dm_mujoco  # noqa: E402
from dm_control.rl import control  # noqa: E402
from gym_aloha.constants import ASSETS_DIR, DT, FPS  # noqa: E402
from gym_aloha.tasks import sim, sim_end_effector  # noqa: E402
from gym_aloha.utils import sample_box_pose, sample_insertion_pose  # noqa: E402

TASKS = ("transfer-cube", "insertion")
CAMERAS = ("top", "angle", "front_close", "left_pillar", "right_pillar")
ACTION_SPACE = "aloha_joint_pos"
CONTROL_HZ = FPS
EXPERT_STEPS = 400  # the experts' plan length (held still after), and the longest episode LeRobot runs
MAX_REWARD = 4  # both tasks' success reward (gym-aloha's `max_reward`)
TRACKING_PASSES = 1  # joint-space replays that correct the experts' targets for servo lag

# Absolute joint-position targets: the joint env's actuator ranges (rad); grippers 0 closed .. 1 open.
_ARM_LOW = [-3.14158, -1.85005, -1.76278, -3.14158, -1.8675, -3.14158]
_ARM_HIGH = [3.14158, 1.25664, 1.6057, 3.14158, 2.23402, 3.14158]
ACTION_LOW = np.array(_ARM_LOW + [0.0] + _ARM_LOW + [0.0], dtype=np.float32)
ACTION_HIGH = np.array(_ARM_HIGH + [1.0] + _ARM_HIGH + [1.0], dtype=np.float32)

_INSTRUCTIONS = {
    "transfer-cube": "pick up the red cube with the right arm and hand it over to the left arm",
    "insertion": "pick up the socket and the peg and insert the peg into the socket",
}


def instruction(task: str) -> str:
    """The task's language instruction, as the source records it and the suite gives the policy."""
    return _INSTRUCTIONS[_known(task)]


def episode_seed(base: int, task: str, index: int) -> int:
    """A reproducible seed per (base, task, index); crc32 because hash() is salted per process."""
    return zlib.crc32(f"{base}/{task}/{index}".encode()) & 0x7FFFFFFF


def _known(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown ALOHA task '{task}'; known: {', '.join(TASKS)}")
    return task


def object_pose(task: str, seed: int) -> np.ndarray:
    """The objects' free-joint poses (xyz + wxyz quat; the peg's then the socket's) for a seed:
    gym-aloha's own draws, so a seed gives the layout gym-aloha's `reset(seed)` gives."""
    if _known(task) == "transfer-cube":
        return sample_box_pose(seed)
    return np.concatenate(sample_insertion_pose(seed))


# gym-aloha's tasks render three 480x640 cameras into every observation (each render hundreds of
# times a physics step's cost on a CPU); these observe qpos only, and the caller renders what it
# needs, when it needs it, at the size it asks for.
# gym-aloha places the objects from a module global (joint space) or an unseeded draw (end-effector
# space); these place them at `self.layout`, set before each reset.

class _JointSpace:
    layout: np.ndarray

    def initialize_episode(self, physics):
        sim.BOX_POSE[0] = self.layout  # what gym-aloha's joint-space tasks read the layout from
        super().initialize_episode(physics)

    def get_observation(self, physics):
        return {"qpos": self.get_qpos(physics)}


class _EndEffectorSpace:
    layout: np.ndarray

    def initialize_episode(self, physics):
        self.initialize_robots(physics)  # home pose, mocap targets on the grippers, grippers closed
        physics.data.qpos[16:] = self.layout  # the objects' free joints follow the 16 arm joints
        sim_end_effector.BimanualViperXEndEffectorTask.initialize_episode(self, physics)

    def get_observation(self, physics):
        return {"qpos": self.get_qpos(physics)}


class _TransferCube(_JointSpace, sim.TransferCubeTask):
    pass


class _Insertion(_JointSpace, sim.InsertionTask):
    pass


class _TransferCubeEndEffector(_EndEffectorSpace, sim_end_effector.TransferCubeEndEffectorTask):
    pass


class _InsertionEndEffector(_EndEffectorSpace, sim_end_effector.InsertionEndEffectorTask):
    pass


_SCENES = {  # task -> (joint-space scene, its task; end-effector-space scene, its task)
    "transfer-cube": ("bimanual_viperx_transfer_cube.xml", _TransferCube,
                      "bimanual_viperx_end_effector_transfer_cube.xml", _TransferCubeEndEffector),
    "insertion": ("bimanual_viperx_insertion.xml", _Insertion,
                  "bimanual_viperx_end_effector_insertion.xml", _InsertionEndEffector),
}


def _environment(scene: str, task) -> control.Environment:
    physics = dm_mujoco.Physics.from_xml_path(str(ASSETS_DIR / scene))
    # the time limit is the caller's; flat_observation=False keeps our qpos-only dict as it is
    return control.Environment(physics, task, time_limit=float("inf"), control_timestep=DT,
                               flat_observation=False)


class AlohaSim:
    """One task's joint-space environment, reused across episodes: `reset(seed)` fixes the layout.

    gym-aloha's scene, task and 20 ms control step, so the same seed and actions give the same
    states as its `AlohaEnv`. Actions are 14-D joint-position targets (see ACTION_LOW /
    ACTION_HIGH); `render()` draws the cameras at `resolution` (height, width) directly.
    """

    def __init__(self, task: str, cameras: tuple[str, ...] = ("top",), resolution: tuple[int, int] = (64, 64)):
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown or not cameras:
            named = f"no camera '{unknown[0]}'" if unknown else "no cameras named"
            raise ValueError(f"ALOHA sim was given {named}; it has {', '.join(CAMERAS)}")
        scene, task_cls, _, _ = _SCENES[_known(task)]
        self.task, self.cameras = task, tuple(cameras)
        self.env = _environment(scene, task_cls())
        model = self.env.physics.model.ptr
        # The scene asks for 4096^2 shadow maps and 4x multisampling: ~15x the render time on a
        # software rasterizer, for nothing visible at training resolutions.
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        height, width = resolution
        self.renderer = mujoco.Renderer(model, height, width)
        self.reward = 0.0

    def reset(self, seed: int) -> None:
        self.env.task.layout = object_pose(self.task, seed)
        self.env.reset()
        self.reward = 0.0

    def step(self, action: np.ndarray) -> float:
        """Apply one 50 Hz joint-position target, clipped to the action bounds; returns the reward."""
        action = np.clip(np.asarray(action, dtype=np.float64), ACTION_LOW, ACTION_HIGH)
        self.reward = float(self.env.step(action).reward)
        return self.reward

    @property
    def success(self) -> bool:
        return self.reward >= MAX_REWARD

    def render(self) -> np.ndarray:
        """The cameras' images, uint8 [V, H, W, 3]."""
        views = []
        for camera in self.cameras:
            self.renderer.update_scene(self.env.physics.data.ptr, camera=camera)
            views.append(self.renderer.render())
        return np.stack(views).astype(np.uint8, copy=False)

    def proprio(self) -> np.ndarray:
        """The two arms' 14-D qpos: per arm 6 joint angles (rad) and the gripper opening (0..1)."""
        return self.env.task.get_qpos(self.env.physics).astype(np.float32)

    def close(self) -> None:
        self.renderer.close()


# ---- scripted experts -------------------------------------------------------------------------

@dataclass(frozen=True)
class Waypoint:
    """Where one gripper's mocap target is at `step`: the point between its fingers, 2 cm short of
    their tips (where gym-aloha's weld holds the gripper against it)."""
    step: int
    xyz: tuple[float, float, float]
    quat: tuple[float, float, float, float]  # wxyz, world frame; identity is the home orientation
    grip: float  # gripper opening, 0 closed .. 1 open

    def moved(self, step: int, dx: float = 0.0, dy: float = 0.0, dz: float = 0.0,
              grip: float | None = None) -> "Waypoint":
        """The same target at a later step, shifted, and with another opening if given."""
        return Waypoint(step, _offset(self.xyz, dx, dy, dz), self.quat, self.grip if grip is None else grip)


def _offset(xyz, dx=0.0, dy=0.0, dz=0.0) -> tuple[float, float, float]:
    return (float(xyz[0] + dx), float(xyz[1] + dy), float(xyz[2] + dz))


def _rotation(axis: tuple[float, float, float], degrees: float) -> tuple[float, float, float, float]:
    half = np.radians(degrees) / 2
    x, y, z = np.sin(half) * np.asarray(axis, dtype=float)
    return (float(np.cos(half)), float(x), float(y), float(z))


def _pose_at(waypoints: list[Waypoint], step: int) -> np.ndarray:
    """[xyz, quat, grip] at `step`, linear between the waypoints around it (held past the last)."""
    def pose(w: Waypoint) -> np.ndarray:
        return np.array([*w.xyz, *w.quat, w.grip])

    later = [i for i, w in enumerate(waypoints) if w.step > step]
    if not later:
        return pose(waypoints[-1])
    a, b = waypoints[max(later[0] - 1, 0)], waypoints[later[0]]
    frac = (step - a.step) / (b.step - a.step) if b.step > a.step else 1.0
    mixed = pose(a) + min(max(frac, 0.0), 1.0) * (pose(b) - pose(a))
    mixed[3:7] /= np.linalg.norm(mixed[3:7])
    return mixed


def _homes(physics) -> tuple[Waypoint, Waypoint]:
    """Both grippers' targets after reset, closed: where every plan starts."""
    pos, quat = physics.data.mocap_pos, physics.data.mocap_quat
    return (Waypoint(0, tuple(pos[0]), tuple(quat[0]), 0.0), Waypoint(0, tuple(pos[1]), tuple(quat[1]), 0.0))


CUBE_REST_Z = 0.02  # the cube's centre once it has dropped onto the table (its half size)
LOW_GRASP_Z = 0.025  # a downward-pointing gripper's target here leaves its fingertips just off the table


def _transfer_cube_plan(physics, layout):
    """The right gripper comes down over the cube tilted 60 degrees, grasps it and lifts it to a
    point between the arms, while the left gripper, rolled 90 degrees, waits beside that point.
    Then, aimed at where the cube really hangs, the left fingers go around it and close, the right
    gripper lets go and backs off, and the left arm takes the cube away."""
    left_home, right_home = _homes(physics)
    x, y = layout[:2]
    meet = (0.0, 0.5, 0.25)
    above = Waypoint(90, (x, y, CUBE_REST_Z + 0.08), _rotation((0, 1, 0), -60), 1.0)
    right = [right_home, above, above.moved(130, dz=-0.08), above.moved(170, dz=-0.08, grip=0.0),
             Waypoint(200, _offset(meet, dx=0.05), above.quat, 0.0), Waypoint(220, meet, above.quat, 0.0)]
    left = [left_home, Waypoint(100, _offset(meet, dx=-0.1), _rotation((1, 0, 0), 90), 1.0)]
    yield left, right
    cube = _free_pose(physics, 16)[:3]
    beside = Waypoint(240, _offset(cube, dx=-0.1), left[-1].quat, 1.0)
    left = [left[-1].moved(220), beside, beside.moved(270, dx=0.095), beside.moved(290, dx=0.095, grip=0.0),
            beside.moved(350, grip=0.0)]  # fingers around the cube, grasp, take it away
    right = [right[-1], right[-1].moved(295), right[-1].moved(305, grip=1.0),  # hold until the left has it
             right[-1].moved(350, dx=0.1, grip=1.0)]  # back off
    yield left, right


def _insertion_plan(physics, layout):
    """Each gripper comes straight down on its object (left: the socket, right: the peg), so that
    its finger pads hold it along their whole width, grasps it and lifts it to its side of a
    meeting point. Then, in short stages that each start from where the objects really are, the
    right gripper turns the peg onto the socket's axis, brings its tip to the socket's mouth and
    pushes it in past the pin's end."""
    left_home, right_home = _homes(physics)
    peg, socket = layout[:2], layout[7:9]
    meet = (0.0, 0.5, 0.15)
    over_socket = Waypoint(120, (socket[0], socket[1], LOW_GRASP_Z + 0.1), _rotation((0, 1, 0), 90), 1.0)
    over_peg = Waypoint(120, (peg[0], peg[1], LOW_GRASP_Z + 0.1), _rotation((0, 1, 0), -90), 1.0)
    left = [left_home, over_socket, over_socket.moved(170, dz=-0.1), over_socket.moved(220, dz=-0.1, grip=0.0),
            Waypoint(285, _offset(meet, dx=-0.1), over_socket.quat, 0.0)]
    right = [right_home, over_peg, over_peg.moved(170, dz=-0.1), over_peg.moved(220, dz=-0.1, grip=0.0),
             Waypoint(285, _offset(meet, dx=0.1), over_peg.quat, 0.0)]
    yield left, right
    size = physics.named.model.geom_size
    peg_half, socket_half, pin_half = size["red_peg"][0], size["socket-1"][0], size["pin"][0]
    # where the peg's tip goes, as a distance from the socket's centre along its axis (its mouth is +x)
    stages = ((320, socket_half + 0.04), (340, socket_half + 0.02), (375, pin_half - 0.01))
    for end, tip_reach in stages:  # line up well outside, again closer, then push in
        peg_at, socket_at = _free_pose(physics, 16), _free_pose(physics, 23)
        peg_axis, socket_axis = _x_axis(peg_at[3:]), _x_axis(socket_at[3:])
        turn = _turn_between(-peg_axis, -socket_axis)  # the peg's tip end (-x) onto the socket's mouth
        last = right[-1]
        pivot = np.asarray(last.xyz)  # the gripper turns about its target point
        tip = peg_at[:3] - peg_half * peg_axis
        tip_turned = pivot + _rotate(turn, tip - pivot)
        goal = socket_at[:3] + tip_reach * socket_axis
        right = [last, Waypoint(end, _offset(last.xyz, *(goal - tip_turned)), _compose(turn, last.quat), 0.0)]
        left = [left[-1], left[-1].moved(end)]
        yield left, right


def _free_pose(physics, start: int) -> np.ndarray:
    """A free joint's [xyz, wxyz quat] from qpos[start:start + 7]."""
    return physics.data.qpos[start:start + 7].copy()


def _x_axis(quat) -> np.ndarray:
    axis = np.zeros(3)
    mujoco.mju_rotVecQuat(axis, np.array([1.0, 0.0, 0.0]), np.asarray(quat, dtype=float))
    return axis


def _rotate(quat, vector) -> np.ndarray:
    out = np.zeros(3)
    mujoco.mju_rotVecQuat(out, np.asarray(vector, dtype=float), np.asarray(quat, dtype=float))
    return out


def _compose(first, then) -> tuple[float, float, float, float]:
    """The rotation `then` followed by `first` (both in the world frame)."""
    out = np.zeros(4)
    mujoco.mju_mulQuat(out, np.asarray(first, dtype=float), np.asarray(then, dtype=float))
    return tuple(float(v) for v in out)


def _turn_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The shortest rotation (wxyz) taking unit direction a onto unit direction b."""
    q = np.array([1.0 + float(a @ b), *np.cross(a, b)])
    return q / np.linalg.norm(q)


_PLANS = {"transfer-cube": _transfer_cube_plan, "insertion": _insertion_plan}


def expert_actions(task: str, seed: int, steps: int = EXPERT_STEPS) -> np.ndarray:
    """The scripted expert for (task, seed) as joint-space actions, float32 [steps, 14]; every
    stage is causal, so a shorter plan is the first `steps` rows of a longer one.

    The waypoints are rolled out in the end-effector space env (mocap targets welded to the
    grippers), where the arms follow without any inverse kinematics of ours; the joint positions
    they reach there, with the commanded gripper openings, are the joint-space targets. A plan is
    rolled out in stages, so a later stage can aim from where the objects ended up.
    """
    _, _, scene, task_cls = _SCENES[_known(task)]
    env = _environment(scene, task_cls())
    # gym-aloha's welds are soft (impedance 0.25): against the joints' friction the grippers trail
    # their targets by 3-6 cm in motion. Stiff welds make the arms go where the waypoints say.
    env.physics.model.ptr.eq_solimp[:, :3] = (0.9, 0.95, 0.001)
    env.task.layout = layout = object_pose(task, seed)
    env.reset()
    actions: list[np.ndarray] = []

    def advance(left: list[Waypoint], right: list[Waypoint], until: int) -> None:
        while len(actions) < until:
            l_pose, r_pose = _pose_at(left, len(actions)), _pose_at(right, len(actions))
            env.step(np.concatenate([l_pose, r_pose]))
            qpos = env.task.get_qpos(env.physics)
            qpos[6], qpos[13] = l_pose[7], r_pose[7]  # the commanded openings, not the fingers' lagging ones
            actions.append(qpos)

    for left, right in _PLANS[task](env.physics, layout):
        advance(left, right, min(steps, max(left[-1].step, right[-1].step)))
        if len(actions) == steps:
            break
    advance(left, right, steps)  # hold the last targets
    path = np.clip(np.stack(actions), ACTION_LOW, ACTION_HIGH)
    return _lead_for_friction(task, seed, path).astype(np.float32)


_ARM_JOINTS = [*range(0, 6), *range(7, 13)]


def _lead_for_friction(task: str, seed: int, path: np.ndarray, passes: int = TRACKING_PASSES) -> np.ndarray:
    """Joint targets that make the joint-space arms follow `path`, the joint positions reached in
    the end-effector space rollout.

    The joint env's position servos work against heavy joint friction and stop about 0.01 rad
    short of a target, enough to miss the insertion's 8 mm clearance. Each pass replays the
    targets and moves each one by what its joint fell short (or overshot) one step later.
    """
    scene, task_cls, _, _ = _SCENES[task]
    env = _environment(scene, task_cls())
    targets = path.copy()
    for _ in range(passes):
        env.task.layout = object_pose(task, seed)
        env.reset()
        reached = []
        for target in targets:
            env.step(target)
            reached.append(env.task.get_qpos(env.physics))
        shortfall = path[:, _ARM_JOINTS] - np.stack(reached)[:, _ARM_JOINTS]
        targets[:, _ARM_JOINTS] = np.clip(targets[:, _ARM_JOINTS] + shortfall,
                                          ACTION_LOW[_ARM_JOINTS], ACTION_HIGH[_ARM_JOINTS])
    return targets
