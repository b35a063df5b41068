"""Cosmos-Policy's tiled joint generation (couplings/tiled_joint_generation.py): vectors tiled into latent
frames and read back, the condition masks of its three modes, gradients of every objective, best-of-N
planning by predicted value, and the recipe on both trunks at tiny size."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_contract import HORIZON, Case, experiment, two_samples

from wamforge.model_zoo.build import build_model
from wamforge.model_zoo.couplings.tiled_joint_generation import (
    SAMPLES, TiledJointGeneration, TiledJointGenerationConfig, tile, untile)
from wamforge.model_zoo.inference import Inference

COSMOS = Case("cosmos_policy")
WAN = Case("cosmos_policy", {"trunk": {"kind": "wan"}})
STEPS = Inference(action_steps=2, video_steps=2)


def tiny(case: Case, root, seed: int = 0):
    cfg = experiment(case, root)
    torch.manual_seed(seed)
    return cfg, build_model(cfg, num_embodiments=3)


def with_returns(batch):
    """The sawyer sample succeeds 10 steps after the chunk; the clip's outcome is unknown."""
    return replace(batch, steps_to_go=torch.tensor([HORIZON + 10, 5]), success=torch.tensor([1.0, float("nan")]))


def test_tiling_round_trips_and_keeps_masked_dims_zero():
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, HORIZON, 8, dtype=torch.bool)
    mask[0, :, :4], mask[1, :, :2] = True, True
    actions = torch.randn(2, HORIZON, 8, generator=g) * mask
    frame = tile(actions.flatten(1), (3, 5, 7))  # 105 slots for 32 values: copies of unequal count
    assert frame.shape == (2, 3, 5, 7)
    assert torch.allclose(untile(frame, 32).view_as(actions), actions)
    copies_of = torch.arange(105) % 32  # the value each slot holds a copy of
    assert torch.all(frame.flatten(1)[~mask.flatten(1)[:, copies_of]] == 0)  # every copy of a masked dim is zero
    noisy = frame + torch.randn(frame.shape, generator=g)  # averaging the copies shrinks independent noise
    assert (untile(noisy, 32).view_as(actions) - actions).abs().mean() < 0.8
    with pytest.raises(ValueError, match="do not fit one latent frame"):
        tile(torch.zeros(1, 106), (3, 5, 7))


def test_it_needs_the_pixel_latent_substrate(tmp_path):
    with pytest.raises(ValueError, match="use substrate pixel.latent"):
        experiment(Case("cosmos_policy", {"substrate": {"kind": "feature.tap", "layer": 1}}), tmp_path)


@pytest.mark.parametrize("mode", SAMPLES)
def test_each_mode_holds_its_frames_clean_and_noises_the_rest(mode, tmp_path):
    cfg, model = tiny(COSMOS, tmp_path)
    shares = {s: float(s == mode) for s in SAMPLES}
    model.coupling = TiledJointGeneration(TiledJointGenerationConfig(shares=shares))
    seen, predict = [], model.trunk.predict

    def recorded(latents, frame_t, *rest, **kw):  # the real trunk, its inputs kept
        seen.append((latents, frame_t))
        return predict(latents, frame_t, *rest, **kw)
    model.trunk.predict = recorded
    batch = with_returns(two_samples(cfg))
    model.loss(batch, "joint", {})
    (inputs, frame_t), = seen

    x0 = model.encode_video(batch.video)
    shape = (x0.shape[1], *x0.shape[3:])
    value = 2 * 0.99 ** 10 - 1  # success after 10 steps, scaled to [-1, 1]
    clean = torch.cat([tile(batch.proprio * batch.proprio_mask, shape)[:, :, None], x0[:, :, :1],
                       tile(batch.actions.flatten(1), shape)[:, :, None], x0[:, :, 1:],
                       tile(torch.tensor([[value], [-1.0]]), shape)[:, :, None]], dim=2)
    # frames: proprio, current, action, future x 2, value; a mode of rank m keeps ranks <= m clean
    ranks = torch.tensor([0, 0, 1, 2, 2, 3])
    held = ranks <= SAMPLES.index(mode)
    assert torch.all(frame_t[0, held] == 0) and torch.all(frame_t[0, ~held] > 0)
    assert torch.equal(inputs[0][:, held], clean[0][:, held])  # e.g. world_model: the clean tiled action
    assert torch.all((inputs[0][:, ~held] - clean[0][:, ~held]).abs().amax(dim=(0, 2, 3)) > 1e-3)
    # the action-free clip is a policy sample whatever the shares, with its action frame at pure noise
    assert torch.all(frame_t[1, :2] == 0) and frame_t[1, 2] == 1 and torch.all(frame_t[1, 3:] > 0)
    assert inputs[1, :, 2].std() > 0.5


def test_every_objective_reaches_every_weight_including_the_bank(tmp_path):
    cfg, model = tiny(COSMOS, tmp_path)
    batch = with_returns(two_samples(cfg))
    for objective in model.capabilities.objectives:
        model.zero_grad(set_to_none=True)
        out = model.loss(batch, objective, {})
        out["loss"].backward()
        unreached = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
        assert unreached == [], f"{objective}: no gradient reaches {unreached}"
        assert all(torch.all(p.grad == 0) for p in model.embodiments.parameters())  # present, exactly zero
        assert torch.isfinite(out["loss"])
        assert (out["video_loss"] > 0) == (objective != "action"), objective
        if objective == "video":
            assert out["action_loss"] == 0
        if objective == "action":  # every sample a policy sample: the sawyer's 4 real dims of each of its H rows
            assert out["action_loss"] > 0 and out["per_sample"]["action_count"].tolist() == [4 * HORIZON, 0]
    assert model.embodiments.action_dims[0].tolist() == [True] * 4 + [False] * 4


def test_best_of_n_keeps_the_candidate_of_highest_predicted_value(tmp_path):
    cfg, model = tiny(COSMOS, tmp_path)
    with torch.no_grad():  # an untrained Cosmos head predicts ~0: give it weights with opinions
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    batch, coupling = two_samples(cfg), model.coupling
    samples = coupling.cfg.planning.samples
    observed = model.encode_video(batch.video[:1, :1])
    dims = torch.zeros(1, cfg.model.max_action_dim, dtype=torch.bool)
    dims[0, :4] = True
    one = (observed, batch.proprio[:1], batch.proprio_mask[:1], batch.embodiment_id[:1], batch.text[:1])
    chunk = coupling.act(model, *one, STEPS, generator=torch.Generator().manual_seed(3), action_mask=dims)

    g = torch.Generator().manual_seed(3)  # the same draws, scored here
    many = tuple(x.expand(samples, *x.shape[1:]) for x in one[:4]) + (batch.text[:1] * samples,)
    candidates = coupling.sample(model, "policy", *many, STEPS, g, dims.expand(samples, -1))[0]
    candidates = candidates.clamp(-coupling.cfg.planning.bound, coupling.cfg.planning.bound)  # as the planner does
    values = coupling.value_of(model, *many, STEPS, candidates, g, dims.expand(samples, -1))
    assert values.shape == (samples,) and len(set(values.tolist())) == samples
    assert values.argmax() != 0  # so that keeping the first draw would fail
    assert torch.equal(chunk[0], candidates[values.argmax()])


@pytest.mark.parametrize("case", [COSMOS, WAN], ids=["cosmos", "wan"])
def test_it_builds_trains_acts_and_imagines_on_both_trunks(case, tmp_path):
    cfg, model = tiny(case, tmp_path)
    assert model.design == ("Pixel (latent)", "Diffusion", "Joint generation", "Chunked")
    batch = with_returns(two_samples(cfg))
    assert torch.isfinite(model.loss(batch, "joint", {})["loss"])
    model.eval()
    mask = torch.zeros(2, cfg.model.max_action_dim, dtype=torch.bool)
    mask[0, :4], mask[1, :2] = True, True
    actions = model.sample_actions(batch.video[:, :1], batch.proprio, batch.proprio_mask, batch.embodiment_id,
                                   batch.text, STEPS, torch.Generator().manual_seed(0), action_mask=mask)
    assert actions.shape == (2, HORIZON, cfg.model.max_action_dim) and torch.isfinite(actions).all()
    assert torch.all(actions[~mask[:, None].expand_as(actions)] == 0)
    observed = model.encode_video(batch.video[:, :1])
    future = model.coupling.imagine(model, observed, batch.proprio, batch.proprio_mask, batch.embodiment_id,
                                    batch.text, STEPS, torch.Generator().manual_seed(0))
    assert future.shape == (2, observed.shape[1], model.latent_frames - 1, *observed.shape[3:])
