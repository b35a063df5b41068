"""The four deployment regimes (survey §4.5): how often each calls the policy, and what the interactive
regime carries between calls (a KV cache whose per-call work stays flat as the episode grows)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config
from test_contract import Case, experiment

from wamforge.config import validate
from wamforge.model_zoo import regimes
from wamforge.model_zoo.build import build_model
from wamforge.model_zoo.inference import Inference
from wamforge.model_zoo.regimes.open_loop import PlanSpent


class CountingPolicy:
    """A policy that returns chunks of known actions and counts its calls."""

    def __init__(self, horizon: int, action_dim: int = 2):
        self.horizon, self.action_dim, self.calls = horizon, action_dim, 0

    def act(self, observation: dict, instruction: str) -> np.ndarray:
        self.calls += 1
        return np.full((self.horizon, self.action_dim), self.calls, np.float32) + np.arange(self.horizon)[:, None]


def observe() -> dict:
    return {"image": np.zeros((1, 8, 8, 3), np.uint8), "proprio": np.zeros(2, np.float32)}


def test_open_loop_plans_once_and_executes_the_plan_without_calling_the_policy_again():
    cfg = regimes.OpenLoopConfig(horizon=6)
    policy = CountingPolicy(6)
    loop = regimes.REGISTRY["open_loop"](cfg).control(policy, execute_steps=1, action_dim=2)
    loop.reset("do it", seed=0)
    executed = [loop.step(observe)[0] for _ in range(6)]
    assert policy.calls == 1 and executed == [1, 2, 3, 4, 5, 6]
    with pytest.raises(PlanSpent, match="plan of 6 actions is spent"):
        loop.step(observe)
    loop.reset("again", seed=1)  # a new episode plans anew
    loop.step(observe)
    assert policy.calls == 2


def test_single_step_calls_the_policy_at_every_control_step():
    cfg = regimes.SingleStepConfig()
    assert cfg.horizon == 1
    policy = CountingPolicy(1)
    loop = regimes.REGISTRY["single_step"](cfg).control(policy, execute_steps=8, action_dim=2)
    loop.reset("do it", seed=0)
    executed = [loop.step(observe)[0] for _ in range(5)]
    assert policy.calls == 5 and executed == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="less than or equal to 1"):
        regimes.SingleStepConfig(horizon=4)


def test_chunked_executes_k_of_each_chunk_then_replans():
    policy = CountingPolicy(4)
    loop = regimes.REGISTRY["chunked"](regimes.ChunkedConfig(horizon=4)).control(policy, 2, 2)
    loop.reset("do it", seed=0)
    assert [loop.step(observe)[0] for _ in range(6)] == [1, 2, 2, 3, 3, 4]
    assert policy.calls == 3


@pytest.mark.parametrize("block, sentence", [
    ({"coupling": {"kind": "joint_generation"}, "substrate": {"kind": "pixel.latent"}},
     "joint_generation computes its actions inside a sequence"),
    ({}, "not the middle block a feature.tap head reads"),
    ({"trunk": {"kind": "cosmos", "heads": 2, "head_dim": 16, "layers": 2, "adaln_lora_dim": 8}},
     "which the wan trunk serves"),
])
def test_the_interactive_regime_refuses_designs_it_cannot_serve_with_one_sentence(block, sentence, tmp_path):
    raw = tiny_config(tmp_path)
    raw["model"] = {**raw["model"], **block, "regime": {"kind": "interactive", "horizon": 4}}
    with pytest.raises(ValueError, match=sentence):
        validate(raw)


def interactive_model(tmp_path, recipe: str = "fast_wam", swap: dict | None = None):
    case = Case(recipe, {"regime": {"kind": "interactive", "max_frames": 64}, **(swap or {})})
    cfg = experiment(case, tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg, num_embodiments=2).eval()
    with torch.no_grad():  # as if trained: the zero-initialised action output would hide what the head reads
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model, cfg


def episode(session, frames: int, seed: int = 0, render: bool = False) -> tuple[list[torch.Tensor], list[int]]:
    """`frames` calls, each with a new real frame; -> (chunks, trunk tokens computed per call)."""
    model = session.model
    g = torch.Generator().manual_seed(seed)
    action_mask = torch.zeros(1, model.max_action_dim, dtype=torch.bool)
    action_mask[0, :4] = True
    chunks, tokens = [], []
    for _ in range(frames):
        video = torch.randint(0, 256, (1, 1, 1, 3, 32, 32), generator=g, dtype=torch.uint8)
        before = session.cache.tokens_computed if not session.recompute else 0
        if session.recompute:
            session.cache.tokens_per_call.clear()
        chunk = session.act(model.encode_video(video), torch.zeros(1, cfg_proprio(model)),
                            torch.zeros(1, cfg_proprio(model), dtype=torch.bool),
                            torch.tensor([0]), ["open the drawer"], Inference(action_steps=2, video_steps=2, render_future=render),
                            torch.Generator().manual_seed(1), action_mask)
        tokens.append(session.cache.tokens_computed - before)
        chunks.append(chunk)
    return chunks, tokens


def test_interactive_reuses_its_cache_flat_per_call_and_acts_as_recomputing_the_history(tmp_path):
    model, _ = interactive_model(tmp_path)
    cached, cached_tokens = episode(model.regime.session(model), frames=6)
    recomputed, recomputed_tokens = episode(model.regime.session(model, recompute=True), frames=6)
    assert len(set(cached_tokens)) == 1  # one new frame's tokens per call, however long the episode
    assert recomputed_tokens == [cached_tokens[0] * (i + 1) for i in range(6)]  # the history, every call
    for a, b in zip(cached, recomputed):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(cached[0], cached[-1])  # the growing past changes what it does


def test_interactive_starts_a_fresh_cache_past_max_frames(tmp_path):
    model, _ = interactive_model(tmp_path)
    session = regimes.InteractiveSession(model, max_frames=3)
    episode(session, frames=5)
    assert session.cache.frames <= 3


def cfg_proprio(model) -> int:
    return model.embodiments.proprio_in.shape[1]  # the bank's max_proprio_dim


def test_interactive_keeps_its_rendered_future_until_the_real_frame_replaces_it(tmp_path):
    """LingBot-VA's design: each call's rendered future stays in the cache as the persistent latent,
    and the next call's real observation takes its place."""
    model, _ = interactive_model(tmp_path, "lingbot_va")
    future = model.latent_frames - model.clean_latents
    render = Inference(action_steps=2, video_steps=2, render_future=True)
    session = model.regime.session(model)
    observed = []
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        video = torch.randint(0, 256, (1, 1, 1, 3, 32, 32), generator=g, dtype=torch.uint8)
        session.act(model.encode_video(video), torch.zeros(1, cfg_proprio(model)),
                    torch.zeros(1, cfg_proprio(model), dtype=torch.bool), torch.tensor([0]), ["push it"], render,
                    torch.Generator().manual_seed(1))
        observed.append(list(session.cache.observed))
    assert observed == [[True] * n + [False] * future for n in (1, 2, 3)]
    for a, b in zip(episode(model.regime.session(model), 4, render=True)[0],
                    episode(model.regime.session(model, recompute=True), 4, render=True)[0]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)  # the cache serves what recomputing would
    calls = session.cache.tokens_per_call  # trunk tokens of every pass, three acts' worth
    per_act = len(calls) // 3
    assert calls[:per_act] == calls[per_act:2 * per_act] == calls[2 * per_act:]  # the same work every call
