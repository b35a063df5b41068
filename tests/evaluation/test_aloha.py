"""ALOHA sim (gym-aloha) as a data source and as an evaluation suite, on the real (headless)
simulator: seeded layouts, the scripted experts' episodes, failures kept, configs without it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from wamforge.config.data import DataConfig, SourceConfig
from wamforge.data_pipeline.embodiments import EmbodimentRegistry
from wamforge.data_pipeline.sources import aloha_env as ae
from wamforge.data_pipeline.sources import make_source
from wamforge.data_pipeline.sources.aloha import SUCCESS_TAIL_STEPS, AlohaSource
from wamforge.evaluation.suites import aloha as suite_module
from wamforge.evaluation.suites.aloha import AlohaSuite, AlohaSuiteConfig

EMBODIMENTS = Path(__file__).resolve().parents[2] / "configs" / "embodiments.yaml"
RESOLUTION = (32, 32)
TASKS = ["transfer-cube", "insertion"]


def make_aloha_source(tasks=("transfer-cube",), episodes=1, seed=0, **fields) -> AlohaSource:
    cfg = SourceConfig(format="aloha", kind="sim", embodiment="aloha", tasks=list(tasks),
                       episodes_per_task=episodes, seed=seed, **fields)
    return make_source("aloha", cfg, DataConfig(sources={"aloha": cfg}, resolution=RESOLUTION))


def first_frame(sim: ae.AlohaSim, seed: int) -> np.ndarray:
    sim.reset(seed)
    return sim.render()


@pytest.fixture(scope="module", params=TASKS)
def expert_episode(request):
    source = make_aloha_source(tasks=[request.param])
    spec = source.episode_specs()[0]
    return source, spec, source.load(spec)


def test_episode_specs_are_deterministic_json_and_seeded_per_task_and_index():
    specs = make_aloha_source(tasks=TASKS, episodes=3).episode_specs()
    assert specs == make_aloha_source(tasks=TASKS, episodes=3).episode_specs()
    assert [(s["task"], s["index"]) for s in specs] == [(t, i) for t in TASKS for i in range(3)]
    assert len({s["seed"] for s in specs}) == len(specs)
    json.dumps(specs)  # must travel to Ray workers
    other = make_aloha_source(tasks=TASKS, episodes=3, seed=1).episode_specs()
    assert {s["seed"] for s in specs}.isdisjoint(s["seed"] for s in other)


@pytest.mark.parametrize("task", TASKS)
def test_seeds_fix_the_layout(task):
    sim = ae.AlohaSim(task, ("top",), RESOLUTION)
    try:
        a, b = first_frame(sim, 1), first_frame(sim, 2)
        assert a.shape == (1, *RESOLUTION, 3) and a.dtype == np.uint8
        assert not np.array_equal(a, b)
        swing = sim.proprio()
        swing[[0, 7]] += 0.3  # both waists; then the same seed must give the same scene again
        for _ in range(5):
            sim.step(swing)
        assert not np.array_equal(sim.render(), b)
        assert np.array_equal(first_frame(sim, 1), a)
        assert np.array_equal(ae.object_pose(task, 7), ae.object_pose(task, 7))
    finally:
        sim.close()


def test_an_expert_episode_from_the_source_is_valid_and_successful(expert_episode):
    source, spec, ep = expert_episode
    ep.validate()
    n = len(ep.frames)
    assert ep.frames.shape == (n, 1, *RESOLUTION, 3) and ep.frames.dtype == np.uint8
    assert ep.actions.shape == (n, 14) and ep.actions.dtype == np.float32
    assert ep.proprio.shape == (n, 14) and ep.proprio.dtype == np.float32
    assert (ep.actions >= ae.ACTION_LOW).all() and (ep.actions <= ae.ACTION_HIGH).all()
    assert ep.views == ["top"] and ep.fps == source.data.fps and ep.language == ae.instruction(spec["task"])
    assert (ep.kind, ep.embodiment, ep.action_space) == ("sim", "aloha", ae.ACTION_SPACE)
    assert ep.extra["success"] is True and ep.extra["task"] == spec["task"] and ep.extra["seed"] == spec["seed"]
    assert ep.extra["success_step"] + SUCCESS_TAIL_STEPS == n <= source.cfg.max_steps == ae.EXPERT_STEPS
    # frame 0 is the seed's layout before any action; then both arms move and the frames change
    sim = ae.AlohaSim(spec["task"], ("top",), RESOLUTION)
    try:
        assert np.array_equal(ep.frames[0], first_frame(sim, spec["seed"]))
        assert np.allclose(ep.proprio[0], sim.proprio())
    finally:
        sim.close()
    travel = np.abs(ep.proprio[-1] - ep.proprio[0])
    assert travel[:6].max() > 0.1 and travel[7:13].max() > 0.1
    assert np.abs(ep.frames[-1].astype(int) - ep.frames[0].astype(int)).mean() > 1.0


@pytest.mark.parametrize("task", TASKS)
def test_the_expert_succeeds_in_the_suite_env(task):
    seed = ae.episode_seed(0, task, 0)  # the source test's layout, here through the suite
    suite = AlohaSuite(AlohaSuiteConfig(tasks=task))
    env = suite.make_env(task, "top", RESOLUTION, suite.default_max_steps)
    try:
        env.reset(seed)
        first = env.observation()
        assert first["image"].shape == (1, *RESOLUTION, 3) and first["image"].dtype == np.uint8
        assert first["proprio"].shape == (14,) and first["proprio"].dtype == np.float32
        steps, result = 0, None
        while result is None or not result.done:
            action = env.expert_action()
            assert action.shape == (14,) and (action >= env.action_low).all() and (action <= env.action_high).all()
            result = env.step(action)
            steps += 1
        assert result.success and result.reward == ae.MAX_REWARD and steps < suite.default_max_steps
        env.reset(seed)  # the same seed gives the same scene, whatever the last episode did
        again = env.observation()
        assert np.array_equal(first["image"], again["image"]) and np.array_equal(first["proprio"], again["proprio"])
    finally:
        env.close()


@pytest.mark.parametrize("task", TASKS)
def test_an_episode_cut_short_fails_and_is_kept_flagged(task):
    source = make_aloha_source(tasks=[task], max_steps=8)
    ep = source.load(source.episode_specs()[0])
    ep.validate()
    assert len(ep.frames) == len(ep.actions) == 8
    assert ep.extra["success"] is False and ep.extra["success_step"] is None

    suite = AlohaSuite(AlohaSuiteConfig(tasks=task))
    env = suite.make_env(task, "top", RESOLUTION, 3)
    try:
        env.reset(5)
        results = [env.step(env.expert_action()) for _ in range(3)]
        assert [(r.success, r.done) for r in results] == [(False, False), (False, False), (False, True)]
    finally:
        env.close()


def test_configs_validate_without_the_simulator():
    code = ("import sys; from wamforge.evaluation.suites.aloha import AlohaSuite, AlohaSuiteConfig; "
            "from wamforge.config.data import SourceConfig; from wamforge.data_pipeline.sources import ADAPTERS; "
            "s = AlohaSuite(AlohaSuiteConfig(tasks=['aloha'])); assert s.tasks() == ['transfer-cube', 'insertion']; "
            "SourceConfig(format='aloha', kind='sim', embodiment='aloha', tasks=['insertion']); "
            "print(sorted(m for m in ('gym_aloha', 'dm_control', 'mujoco') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_names_defaults_and_bad_input():
    cfg = SourceConfig(format="aloha", kind="sim", embodiment="aloha", tasks=["insertion"])
    assert (cfg.camera, cfg.max_steps) == ("top", ae.EXPERT_STEPS)  # not Meta-World's corner and 120
    assert isinstance(make_aloha_source(), AlohaSource)  # registered under its format name
    with pytest.raises(ValidationError, match="format aloha needs at least one task"):
        SourceConfig(format="aloha", kind="sim", embodiment="aloha")
    with pytest.raises(ValueError, match="unknown ALOHA task 'pour'"):
        make_aloha_source(tasks=["pour"])
    with pytest.raises(ValidationError, match="no task or task set 'pour'"):
        AlohaSuiteConfig(tasks=["aloha", "pour"])
    with pytest.raises(ValueError, match="no camera 'corner'"):
        ae.AlohaSim("insertion", ("corner",))

    suite = AlohaSuite(AlohaSuiteConfig(tasks=["insertion", "aloha"]))
    assert suite.tasks() == ["insertion", "transfer-cube"] and suite_module.TASKS == list(ae.TASKS)
    assert (suite.name, suite.extra, suite.embodiment, suite.default_max_steps) == ("aloha", "aloha", "aloha", 400)
    assert suite.instruction("insertion") == ae.instruction("insertion")
    body = EmbodimentRegistry.from_yaml(EMBODIMENTS)["aloha"]
    assert (body.action_dim, body.proprio_dim, body.control_hz, body.cameras) == (14, 14, ae.CONTROL_HZ, ("top",))
    assert np.allclose(body.action_low, ae.ACTION_LOW) and np.allclose(body.action_high, ae.ACTION_HIGH)
    assert [i for i, n in enumerate(body.normalize) if not n] == [6, 13]  # the grippers stay in [0, 1]


def test_the_evaluation_runs_a_policy_beside_the_expert_on_aloha(tmp_path):
    from wamforge.config.evaluation import EvalConfig
    from wamforge.evaluation import evaluate

    class HoldStill:  # a 14-D chunk of the arms' current joint targets: never solves the task
        def act(self, observation, instruction):
            assert observation["proprio"].shape == (14,) and "cube" in instruction
            return np.repeat(observation["proprio"][None], 8, axis=0)

    cfg = EvalConfig(suite={"kind": "aloha", "tasks": ["transfer-cube"]}, episodes=1, references=["expert"],
                     videos=0, future_windows=0)
    report = evaluate(HoldStill(), cfg, resolution=RESOLUTION, camera="top", out_dir=tmp_path)
    assert report["suite"].startswith("ALOHA") and report["protocol"]["max_steps"] == 400
    expert, policy = (report["controllers"][n]["overall"] for n in ("expert", "policy"))
    assert expert["pc_success"] == 100 and policy["pc_success"] == 0 and policy["sustained_horizon"] == 400
    assert policy["latency_ms"]["calls"] == 100  # K = 4 of 400 steps


def test_sawyer_and_aloha_windows_train_one_model_across_embodiments(expert_episode, tmp_path):
    """Cross-embodiment: a Meta-World and an ALOHA window in one batch, each with its own action
    and proprio dims, through one model's loss and sampler."""
    import torch

    from tests.conftest import tiny_config
    from wamforge.config import validate
    from wamforge.data_pipeline.build.shard_writer import clip_windows
    from wamforge.data_pipeline.loader.collate import Collator, Normalizer
    from wamforge.data_pipeline.sources.metaworld import MetaWorldSource
    from wamforge.model_zoo.build import build_model

    data = DataConfig(sources={}, resolution=RESOLUTION, clip_frames=9, clip_stride=8, action_frames=8)
    sawyer_cfg = SourceConfig(format="metaworld", kind="sim", embodiment="sawyer", tasks=["drawer-close-v3"],
                              episodes_per_task=1, max_steps=24)
    sawyer = MetaWorldSource("sim", sawyer_cfg, data)
    episodes = {"sim": sawyer.load(sawyer.episode_specs()[0]), "aloha": expert_episode[2]}
    registry = EmbodimentRegistry.from_yaml(EMBODIMENTS)
    collator = Collator(Normalizer({}, registry), registry, {"sim": 0, "aloha": 1}, horizon=4, max_action_dim=14,
                        max_proprio_dim=14)
    batch = collator.collate([collator.decode(next(iter(clip_windows(episodes[s], data)))) for s in ("sim", "aloha")])
    assert batch.action_mask[0, 0].sum() == 4 and batch.action_mask[1, 0].sum() == 14
    assert batch.proprio_mask[0].sum() == 4 and batch.proprio_mask[1].sum() == 14

    raw = tiny_config(tmp_path)
    raw["model"] |= {"max_action_dim": 14, "max_proprio_dim": 14}
    raw["data"]["resolution"] = list(RESOLUTION)
    torch.manual_seed(0)
    model = build_model(validate(raw), num_embodiments=len(registry))
    out = model.loss(batch, "joint", {})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["per_sample"]["action_count"].tolist() == [16, 56]
    actions = model.eval().sample_actions(batch.video[:, :1], batch.proprio, batch.proprio_mask,
                                          batch.embodiment_id, batch.text, generator=torch.Generator().manual_seed(0))
    assert torch.all(actions[0, :, 4:] == 0) and torch.all(actions[1] != 0)  # each robot's own dims
