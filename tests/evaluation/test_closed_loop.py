"""Closed-loop evaluation on real Meta-World: the report, parallel episodes, bad policies, budget sweeps."""
from __future__ import annotations

import json
import math
import re
import sys

import numpy as np
import pytest

from wamforge.config import validate
from wamforge.config.evaluation import EvalConfig
from wamforge.evaluation import evaluate
from wamforge.evaluation.budget import parse_sweeps, sweep
from wamforge.evaluation.report import success_interval
from wamforge.evaluation.suites import make_suite
from wamforge.evaluation.suites.base import require
from wamforge.evaluation.suites.metaworld import MetaWorldSuiteConfig
from tests.conftest import tiny_config


class ZeroPolicy:
    horizon = 8

    def act(self, observation: dict, instruction: str) -> np.ndarray:
        assert observation["image"].shape == (1, 64, 64, 3) and observation["image"].dtype == np.uint8
        assert observation["proprio"].shape == (4,) and observation["proprio"].dtype == np.float32
        assert instruction == "reach the goal"
        return np.zeros((self.horizon, 4), np.float32)


class NoisyPolicy:
    """Random chunks from a sampler reseeded per episode, as the real policy's is."""

    def reset(self, seed=None):
        self.rng = np.random.default_rng(seed)

    def act(self, observation: dict, instruction: str) -> np.ndarray:
        return self.rng.uniform(-1, 1, (4, 4)).astype(np.float32)


class BadPolicy:
    def __init__(self, fault: str):
        self.fault = fault

    def act(self, observation: dict, instruction: str) -> np.ndarray:
        if self.fault == "raises":
            raise RuntimeError("out of memory")
        return np.full((4, 3), 0.0, np.float32) if self.fault == "shape" else np.full((4, 4), np.nan, np.float32)


def eval_cfg(**changes) -> EvalConfig:
    return EvalConfig(**{"suite": {"kind": "metaworld", "tasks": ["reach-v3"]}, "episodes": 1, "max_steps": 40,
                         "videos": 0, "future_windows": 0, **changes})


def test_policy_and_references_run_on_the_same_seeds(tmp_path):
    report = evaluate(ZeroPolicy(), eval_cfg(max_steps=80, videos=1), out_dir=tmp_path)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert json.loads((tmp_path / "eval_info.json").read_text()) == report["controllers"]["policy"]
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert report["suite"] == "Meta-World v3"
    controllers = report["controllers"]
    assert set(controllers) == {"policy", "expert", "random"}
    for info in controllers.values():  # LeRobot's layout
        assert set(info) == {"per_episode", "per_task", "per_group", "overall"}
        assert [e["seed"] for e in info["per_episode"]] == [controllers["policy"]["per_episode"][0]["seed"]]
        assert info["per_task"][0]["task"] == "reach-v3" and info["per_task"][0]["task_group"] == "easy"
        assert set(info["per_group"]) == {"easy"}
        low, high = info["overall"]["interval"]
        assert 0 <= low <= high <= 100
    expert, policy = controllers["expert"]["overall"], controllers["policy"]["overall"]
    assert expert["pc_success"] == 100 and expert["sustained_horizon"] < 80  # stops at success
    assert policy["pc_success"] == 0 and policy["sustained_horizon"] == 80
    assert policy["latency_ms"]["calls"] == math.ceil(80 / 4)  # re-plans every K
    assert 0 <= policy["latency_ms"]["p50"] <= policy["latency_ms"]["p95"]
    assert policy["peak_memory_mb"]["rss"] > 0 and policy["execute_steps"] == 4
    assert "latency_ms" not in expert
    video = tmp_path / policy["video_paths"][0]  # the first policy episode per task, as mp4
    assert video.suffix == ".mp4" and video.stat().st_size > 1000 and not controllers["expert"]["overall"]["video_paths"]


def test_parallel_episodes_equal_serial_ones(tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test file
    cfg = eval_cfg(suite={"kind": "metaworld", "tasks": ["reach-v3", "drawer-close-v3"]}, episodes=2, max_steps=15,
                   references=["random"])
    serial = evaluate(NoisyPolicy(), cfg, out_dir=tmp_path / "serial")
    parallel = evaluate(NoisyPolicy(), cfg.model_copy(update={"workers": 2}), out_dir=tmp_path / "parallel")
    for name in ("policy", "random"):
        a, b = (r["controllers"][name]["per_episode"] for r in (serial, parallel))
        assert [(e["task"], e["seed"], e["sum_reward"], e["length"]) for e in a] == \
               [(e["task"], e["seed"], e["sum_reward"], e["length"]) for e in b]
    assert len({e["seed"] for e in serial["controllers"]["policy"]["per_episode"]}) == 4


@pytest.mark.parametrize("fault, reason", [("raises", "RuntimeError: out of memory"),
                                           ("shape", "actions \\[H, 4\\], got \\[4, 3\\]"),
                                           ("nan", "non-finite")])
def test_a_faulty_policy_fails_its_episodes_and_the_evaluation_goes_on(tmp_path, fault, reason):
    report = evaluate(BadPolicy(fault), eval_cfg(episodes=2, max_steps=100, references=["expert"]), out_dir=tmp_path)
    policy = report["controllers"]["policy"]
    assert [e["success"] for e in policy["per_episode"]] == [False, False]
    assert all(re.search(reason, e["failure"]) for e in policy["per_episode"])
    assert sum(policy["overall"]["failures"].values()) == 2
    assert report["controllers"]["expert"]["overall"]["pc_success"] == 100  # the rest of the work went on


def test_task_sets_follow_the_few_demo_protocol():
    def tasks(names):
        return make_suite(MetaWorldSuiteConfig(tasks=names)).tasks()

    assert len(tasks("mt50")) == 50 and len(tasks("mt10")) == 10
    assert [len(tasks(s)) for s in ("easy", "medium", "hard", "very_hard")] == [28, 11, 6, 5]
    assert tasks(["reach-v3", "mt10"])[0] == "reach-v3" and len(tasks(["reach-v3", "mt10"])) == 10  # no repeats
    suite = make_suite(MetaWorldSuiteConfig(tasks="mt50"))
    assert {suite.group(t) for t in suite.tasks()} == {"easy", "medium", "hard", "very_hard"}
    with pytest.raises(ValueError, match="no task or task set 'mt11'"):
        tasks("mt11")


def test_a_missing_simulator_is_one_sentence_naming_the_extra():
    with pytest.raises(RuntimeError, match=r"pip install 'wamforge\[aloha\]'"):
        require("a_simulator_that_is_not_installed", "aloha", "aloha")


def test_success_interval_is_the_beta_posterior():
    low, high = success_interval(20, 20)
    assert high > 99 and 80 < low < 90  # Beta(21, 1): 0.025 ** (1 / 21) = 0.839
    assert math.isclose(low, 100 * 0.025 ** (1 / 21), rel_tol=1e-6)
    assert success_interval(10, 20)[0] < 50 < success_interval(10, 20)[1]
    assert np.ptp(success_interval(50, 100)) < np.ptp(success_interval(5, 10))  # narrows with episodes


def test_budget_sweep_writes_points_and_the_frontier(tmp_path):
    raw = tiny_config(tmp_path)
    raw["eval"] = {"suite": {"kind": "metaworld", "tasks": ["reach-v3"]}, "episodes": 1, "max_steps": 12,
                   "videos": 0, "future_windows": 0}
    cfg = validate(raw)
    grid = parse_sweeps(["eval.execute_steps=1,4", "eval.flow_steps=1,2"])
    seen = []

    def run_point(point, out):
        seen.append((point.eval.execute_steps, point.eval.flow_steps, point.eval.references, point.eval.videos))
        return evaluate(ZeroPolicy(), point.eval, out_dir=out)

    budget = sweep(cfg, grid, run_point, tmp_path / "budget")
    assert sorted(seen) == [(1, 1, [], 0), (1, 2, [], 0), (4, 1, [], 0), (4, 2, [], 0)]  # no references per point
    assert json.loads((tmp_path / "budget" / "budget.json").read_text()) == budget
    assert (tmp_path / "budget" / "budget.png").stat().st_size > 1000
    calls = {p["settings"]["eval.execute_steps"]: p["latency_ms"]["calls"] for p in budget["points"]}
    assert calls == {1: 12, 4: 3}
    assert any(p["on_frontier"] for p in budget["points"])
    with pytest.raises(ValueError, match="expected eval.KNOB"):
        parse_sweeps(["training.world_size=1,2"])
