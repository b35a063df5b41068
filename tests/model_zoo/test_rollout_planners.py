"""The action-conditioned rollout (survey §4.3.1) and its planners.

The planners run on a toy world whose best chunk is known (score = -||chunk - target||^2): CEM and MPPI
must find it, best-of-N must keep the highest-scoring candidate, every iteration must score all its
candidates in one call, and no candidate may leave the bound. The coupling runs at the contract test's
tiny sizes: every objective reaches every weight, an action-free sample trains the video path only,
the chunk steers the predicted future, `act` scores one batch of candidates per observation and keeps
the best, and a goal makes it prefer the candidate whose predicted future ends at the goal.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import tiny_config
from test_contract import HORIZON, two_samples

from wamforge.config import validate
from wamforge.data_pipeline.schema import Batch
from wamforge.model_zoo.build import build_model
from wamforge.model_zoo.couplings.action_conditioned_rollout import (CEM, MPPI, BestOfN, BestOfNConfig, CEMConfig,
                                                                     MPPIConfig)
from wamforge.model_zoo.inference import Inference

ACTION_DIM = 3
TARGET = torch.tensor([[0.5, -0.3, 0.1], [0.2, 0.6, -0.5], [-0.4, 0.0, 0.3], [0.1, -0.2, 0.4]])
TRUNKS = {"wan": {"kind": "wan", "dim": 32, "layers": 2, "heads": 2, "ffn_dim": 64},
          "cosmos": {"kind": "cosmos", "heads": 2, "head_dim": 16, "layers": 2, "adaln_lora_dim": 8}}
DESIGNS = [("adaln", "wan"), ("tokens", "wan"), ("adaln", "cosmos")]
INFERENCE = Inference(video_steps=2)


class ToyWorld:
    """score = -||chunk - target||^2, recording every call's candidates."""

    def __init__(self, target: torch.Tensor):
        self.target, self.calls = target, []

    def __call__(self, candidates: torch.Tensor) -> torch.Tensor:
        self.calls.append(candidates.clone())
        return -((candidates - self.target) ** 2).flatten(1).sum(1)


def test_cem_finds_the_known_best_chunk_within_the_bound():
    target = TARGET.clone()
    target[0, 0] = 1.5  # beyond the bound: the best chunk the planner may return has 1.0 there
    world = ToyWorld(target)
    plan = CEM(CEMConfig(samples=200, elites=10, iterations=10)).plan(world, (HORIZON, ACTION_DIM),
                                                                      torch.Generator().manual_seed(0))
    assert [len(c) for c in world.calls] == [200] * 10  # one batched call per iteration
    assert (plan - target.clamp(-1, 1)).abs().max() < 0.05


def test_mppi_finds_the_known_best_chunk():
    world = ToyWorld(TARGET)
    plan = MPPI(MPPIConfig(samples=1024, iterations=10, temperature=1.0, std=0.5)).plan(
        world, (HORIZON, ACTION_DIM), torch.Generator().manual_seed(0))
    assert [len(c) for c in world.calls] == [1024] * 10
    assert (plan - TARGET).abs().max() < 0.1  # from 0.6 at the start; the fixed sampling std leaves a little noise


def test_best_of_n_keeps_the_highest_scoring_candidate():
    proposed = torch.randn(6, HORIZON, ACTION_DIM, generator=torch.Generator().manual_seed(1)) * 0.4
    world = ToyWorld(TARGET)
    plan = BestOfN(BestOfNConfig(samples=6)).plan(world, (HORIZON, ACTION_DIM), propose=lambda n: proposed[:n])
    scores = world(proposed)
    assert len(world.calls) == 2 and torch.equal(world.calls[0], proposed)  # the planner's one call, then ours
    assert torch.equal(plan, proposed[scores.argmax()])
    assert scores.argmax() != 0 and (scores < scores.max()).sum() == 5  # a real choice among distinct scores


@pytest.mark.parametrize("planner", [CEM(CEMConfig(samples=64, elites=4, iterations=3, bound=0.5)),
                                     MPPI(MPPIConfig(samples=64, iterations=3, bound=0.5)),
                                     BestOfN(BestOfNConfig(samples=64, bound=0.5))], ids=["cem", "mppi", "best_of_n"])
def test_no_candidate_leaves_the_bound(planner):
    world = ToyWorld(TARGET * 3)  # the best chunk lies outside the bound
    plan = planner.plan(world, (HORIZON, ACTION_DIM), torch.Generator().manual_seed(0))
    candidates = torch.cat(world.calls)
    assert candidates.abs().max() <= 0.5 and plan.abs().max() <= 0.5
    assert candidates.abs().max() == 0.5  # the bound was reached, so clipping was exercised


# --- the coupling at tiny size ---

def rollout_model(tmp_path, trunk: str = "wan", substrate: str = "pixel.latent", **coupling):
    """A tiny rollout model; its zero-initialized outputs get weights, so the chunk moves the future."""
    cfg = validate(tiny_config(tmp_path, model={
        "substrate": {"kind": substrate}, "trunk": TRUNKS[trunk], "text": {"dim": 32, "max_tokens": 16},
        "coupling": {"kind": "action_conditioned_rollout", "planner": {"kind": "best_of_n", "samples": 5}, **coupling},
        "regime": {"kind": "chunked", "horizon": HORIZON}}))
    torch.manual_seed(0)
    model = build_model(cfg, num_embodiments=3)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.05)
    return cfg, model


def one(batch: Batch, index: int) -> Batch:
    """The batch of sample `index` alone."""
    pick = slice(index, index + 1)
    return replace(batch, **{name: value[pick] for name, value in vars(batch).items()
                             if isinstance(value, (torch.Tensor, list))})


def grads(model, objective: str, batch: Batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model.loss(batch, objective, {})
    assert torch.isfinite(out["loss"]), objective
    out["loss"].backward()
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def moved(grad: dict, prefix: str) -> bool:
    return any(g.abs().sum() > 0 for name, g in grad.items() if name.startswith(prefix))


@pytest.mark.parametrize("entry,trunk", DESIGNS)
def test_every_objective_trains_its_weights_and_reaches_every_other_one(entry, trunk, tmp_path):
    cfg, model = rollout_model(tmp_path, trunk, action_entry=entry)
    assert model.design == ("Pixel (latent)", "Diffusion", "Cond. rollout", "Chunked")
    batch = two_samples(cfg)
    for objective in ("video", "joint", "action"):
        grad = grads(model, objective, batch)
        missing = sorted(name for name, g in grad.items() if g is None)
        assert missing == [], f"{objective}: no gradient reaches {missing}"  # DeepSpeed needs every one
        assert all(torch.isfinite(g).all() for g in grad.values()), objective
        assert moved(grad, "trunk.") == (objective != "action"), objective  # the value objective skips the trunk
        assert moved(grad, "rollout.value.") == (objective != "video"), objective
        assert moved(grad, "embodiments.action_in") == (objective == "joint"), objective  # video: actions dropped


@pytest.mark.parametrize("entry", ["adaln", "tokens"])
def test_an_action_free_sample_trains_the_video_path_only(entry, tmp_path):
    cfg, model = rollout_model(tmp_path, action_entry=entry)
    batch = two_samples(cfg)
    clip = grads(model, "joint", one(batch, 1))
    assert moved(clip, "trunk.") and moved(clip, "rollout.no_action")  # a plain video predictor
    assert not moved(clip, "embodiments.action_in") and not moved(clip, "rollout.value.")  # outcome unknown
    robot = grads(model, "joint", one(batch, 0))
    assert moved(robot, "embodiments.action_in") and moved(robot, "rollout.value.")
    assert not moved(robot, "rollout.no_action")


@pytest.mark.parametrize("entry,trunk", DESIGNS)
def test_the_chunk_steers_the_predicted_future(entry, trunk, tmp_path):
    cfg, model = rollout_model(tmp_path, trunk, action_entry=entry)
    batch = two_samples(cfg)
    observed = model.encode_video(batch.video[:1, :1])
    chunks = torch.randn(2, 1, HORIZON, cfg.model.max_action_dim, generator=torch.Generator().manual_seed(3))

    def future(chunk):
        return model.coupling.sample(model, "forward_dynamics", observed, batch.proprio[:1], batch.proprio_mask[:1],
                                     batch.embodiment_id[:1], batch.text[:1], INFERENCE,
                                     torch.Generator().manual_seed(0), actions=chunk)[1]
    first = future(chunks[0])
    assert first.shape == (1, *observed.shape[1:2], model.latent_frames - model.clean_latents, *observed.shape[3:])
    assert torch.equal(first, future(chunks[0]))
    assert (first - future(chunks[1])).abs().max() > 1e-4


def test_on_decoded_pixels_the_value_reads_the_decoded_future(tmp_path):
    cfg, model = rollout_model(tmp_path, substrate="pixel.decoded")
    assert model.design == ("Pixel (decoded)", "Diffusion", "Cond. rollout", "Chunked")
    batch = two_samples(cfg)
    latents = model.encode_video(batch.video)
    clean = model.clean_latents
    frames = model.coupling.value_input(model, latents[:, :, :clean], latents[:, :, clean:])
    assert torch.equal(frames, model.vae.decode(latents)[:, 1:].transpose(1, 2))  # the 8 frames after the current
    assert frames.shape == (2, 3, 8, 32, 32)
    for objective in ("joint", "action"):
        grad = grads(model, objective, batch)
        assert all(g is not None for g in grad.values()) and moved(grad, "rollout.value."), objective


class Recorded:
    """Every candidate batch whose futures the coupling predicts, and every score it computes, passed on unchanged."""

    def __init__(self, coupling):
        self.candidates, self.futures, self.scores = [], [], []
        futures, score = coupling.futures, coupling.score

        def recording_futures(model, observed, candidates, *args):
            self.candidates.append(candidates.clone())
            self.futures.append(futures(model, observed, candidates, *args))
            return self.futures[-1]

        def recording_score(*args):
            self.scores.append(score(*args))
            return self.scores[-1]
        coupling.futures, coupling.score = recording_futures, recording_score


def act(model, cfg, batch, action_mask=None):
    return model.sample_actions(batch.video[:, :1], batch.proprio, batch.proprio_mask, batch.embodiment_id,
                                batch.text, INFERENCE, torch.Generator().manual_seed(0), action_mask)


def test_act_scores_one_batch_of_candidates_per_observation_and_keeps_the_best(tmp_path):
    cfg, model = rollout_model(tmp_path)
    model.eval()
    batch = two_samples(cfg)
    action_mask = torch.zeros(2, cfg.model.max_action_dim, dtype=torch.bool)
    action_mask[0, :4], action_mask[1, :2] = True, True
    recorded = Recorded(model.coupling)
    chunks = act(model, cfg, batch, action_mask)
    assert [len(c) for c in recorded.candidates] == [5, 1, 5, 1]  # per observation: the candidates, then the chosen
    assert [len(s) for s in recorded.scores] == [5, 5]
    outside = ~action_mask[:, None].expand_as(chunks)
    assert torch.all(chunks[outside] == 0) and torch.all(chunks[~outside] != 0)
    for b in range(2):
        candidates, scores = recorded.candidates[2 * b], recorded.scores[b]
        assert torch.equal(chunks[b], candidates[scores.argmax()])
        # the chosen chunk's future is the one it was scored by (the same noise; rounding differs by batch size)
        assert torch.allclose(recorded.futures[2 * b + 1][0], recorded.futures[2 * b][scores.argmax()], atol=1e-5)
    act(model, cfg, batch)  # the embodiments' own dims, as `imagine` masks them
    imagined = model.coupling.imagine(model, model.encode_video(batch.video[:, :1]), batch.proprio,
                                      batch.proprio_mask, batch.embodiment_id, batch.text, INFERENCE,
                                      torch.Generator().manual_seed(0))
    assert torch.equal(imagined, torch.cat([recorded.futures[5], recorded.futures[7]]))  # its chosen chunks' futures


def test_a_goal_makes_act_prefer_the_candidate_whose_future_ends_at_it(tmp_path):
    cfg, model = rollout_model(tmp_path)
    coupling, batch = model.coupling, two_samples(cfg)
    observed = model.encode_video(batch.video[:1, :1])
    dims = model.embodiments.action_mask(batch.embodiment_id[:1])[:, None].float()
    candidates = torch.randn(2, HORIZON, cfg.model.max_action_dim, generator=torch.Generator().manual_seed(4)) * dims
    captions = tuple(model.encode_text(c, observed.device) for c in (batch.text[:1], [""]))
    noise = torch.randn((1, observed.shape[1], model.latent_frames - model.clean_latents, *observed.shape[3:]))
    with torch.no_grad():
        futures = coupling.futures(model, observed, candidates, dims, batch.proprio[:1], batch.proprio_mask[:1],
                                   batch.embodiment_id[:1], captions, INFERENCE, noise)
        for target in (0, 1):
            coupling.set_goal(futures[target:target + 1])
            assert coupling.score(model, observed, futures, coupling.goal).argmax() == target

    recorded = Recorded(coupling)  # the goal set last (candidate 1's future) now scores act's candidates
    act(model, cfg, one(batch, 0))
    distances = (recorded.futures[0][:, :, -1:] - coupling.goal).abs().flatten(1).mean(1)
    assert torch.equal(recorded.scores[0], -distances)
    assert torch.allclose(recorded.futures[1][0], recorded.futures[0][distances.argmin()], atol=1e-5)
    coupling.set_goal(None)
    act(model, cfg, one(batch, 0))
    assert recorded.scores[1].abs().max() < 1 and not torch.equal(recorded.scores[1], -distances)  # the value again


def test_combinations_it_cannot_build_are_refused_in_one_sentence(tmp_path):
    def model_block(**changes):
        return tiny_config(tmp_path, model={"substrate": {"kind": "pixel.latent"}, "trunk": TRUNKS["wan"],
                                            "coupling": {"kind": "action_conditioned_rollout"}, **changes})
    with pytest.raises(ValueError, match="use trunk kind wan, or action_entry adaln"):
        validate(model_block(trunk=TRUNKS["cosmos"], coupling={"kind": "action_conditioned_rollout",
                                                                "action_entry": "tokens"}))
    with pytest.raises(ValueError, match="use substrate pixel.latent"):
        validate(model_block(substrate={"kind": "feature.tap", "layer": 1}))
    with pytest.raises(ValueError, match="keep fewer elites"):
        validate(model_block(coupling={"kind": "action_conditioned_rollout",
                                       "planner": {"kind": "cem", "samples": 4, "elites": 5}}))
