"""UWM's joint generation: which streams are held clean, held at noise or denoised picks what one
model samples, action-free clips train with the actions at pure noise, and the backbone decides
whether the two streams share a training time.

The per-token timesteps are read where the trunk receives them: `model.trunk.condition` is wrapped in
a function that records its input and calls the real one.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import tiny_config

from wamforge.config import validate
from wamforge.data_pipeline.schema import Batch
from wamforge.model_zoo.build import build_model
from wamforge.model_zoo.inference import Inference

HORIZON, NOISE, CLEAN = 4, 1000.0, 0.0  # flow times on the trunk's (Wan's) scale
INFERENCE = Inference(action_steps=2, video_steps=2)
# per mode, what happens to (the action stream, the future video stream)
MODES = {"policy": ("denoised", "noise"), "forward_dynamics": ("given", "denoised"),
         "inverse_dynamics": ("denoised", "given"), "video": ("noise", "denoised"),
         "joint": ("denoised", "denoised")}


def uwm(tmp_path, **model):
    """The uwm recipe at tiny size, its zero-initialized outputs given weights so every velocity is nonzero."""
    cfg = validate(tiny_config(tmp_path, model={
        "recipe": "uwm", "trunk": {"kind": "wan", "dim": 32, "layers": 2, "heads": 2, "ffn_dim": 64},
        "regime": {"kind": "chunked", "horizon": HORIZON}, "text": {"dim": 32, "max_tokens": 16}, **model}))
    torch.manual_seed(0)
    wam = build_model(cfg, num_embodiments=3)
    with torch.no_grad():
        for p in wam.parameters():
            if not p.any():
                p.normal_(std=0.05)
    return wam


class TrunkTimesteps:
    """The per-token timesteps [B, L] of every trunk pass, split into the sequence's streams."""

    def __init__(self, model, observed_shape):
        self.calls: list[torch.Tensor] = []
        condition = model.trunk.condition

        def recording(timestep, text_emb):
            self.calls.append(timestep.detach().clone())
            return condition(timestep, text_emb)

        model.trunk.condition = recording
        _, p_h, p_w = model.trunk.patch_size
        per_frame = (observed_shape[-2] // p_h) * (observed_shape[-1] // p_w)
        observed, video = model.clean_latents * per_frame, model.latent_frames * per_frame
        self.spans = {"observed": slice(0, observed), "video": slice(observed, video),
                      "action": slice(video, video + model.horizon), "rest": slice(video + model.horizon, None)}

    def of(self, stream: str) -> list[torch.Tensor]:
        return [t[:, self.spans[stream]] for t in self.calls]


def batch(has_actions=(True, False), seed: int = 0) -> Batch:
    """Two 9-frame 32x32 sawyer samples; an action-free one carries no action dims."""
    g = torch.Generator().manual_seed(seed)
    has = torch.tensor(has_actions)
    mask = torch.zeros(2, HORIZON, 8, dtype=torch.bool)
    mask[:, :, :4] = has[:, None, None]
    return Batch(video=torch.randint(0, 256, (2, 9, 1, 3, 32, 32), generator=g, dtype=torch.uint8), latents=None,
                 video_pad=torch.zeros(2, 9, dtype=torch.bool), actions=torch.randn(2, HORIZON, 8, generator=g) * mask,
                 action_mask=mask, has_actions=has, proprio=torch.randn(2, 8, generator=g),
                 proprio_mask=torch.ones(2, 8, dtype=torch.bool), embodiment_id=torch.tensor([0, 0]),
                 source_id=torch.tensor([0, 1]), text=["reach the goal", "push the block"], keys=["a/0/0", "b/0/0"])


def sample_inputs(model):
    b = batch((True, True))
    observed = model.encode_video(b.video[:, :1])
    action_mask = torch.zeros(2, 8, dtype=torch.bool)
    action_mask[:, :4] = True
    future_shape = (2, observed.shape[1], model.latent_frames - observed.shape[2], *observed.shape[3:])
    g = torch.Generator().manual_seed(1)
    return b, observed, action_mask, torch.randn(2, HORIZON, 8, generator=g), torch.randn(future_shape, generator=g)


def sample(model, mode, b, observed, action_mask, actions=None, future=None, seed=7):
    return model.coupling.sample(model, mode, observed, b.proprio, b.proprio_mask, b.embodiment_id, b.text, INFERENCE,
                                 generator=torch.Generator().manual_seed(seed), action_mask=action_mask,
                                 actions=actions, future=future)


def test_every_sample_mode_the_model_offers_has_an_expectation_here(tmp_path):
    assert set(uwm(tmp_path).capabilities.samples) == set(MODES)


@pytest.mark.parametrize("mode", MODES)
def test_each_sample_mode_holds_its_streams_clean_or_at_noise_and_denoises_the_rest(mode, tmp_path):
    model = uwm(tmp_path)
    b, observed, action_mask, given_actions, given_future = sample_inputs(model)
    action_role, video_role = MODES[mode]
    actions = given_actions if action_role == "given" else None
    future = given_future if video_role == "given" else None
    g = torch.Generator().manual_seed(7)  # the sampler's own draws, in its order: the future, then the actions
    start_future = future.clone() if future is not None else torch.randn(given_future.shape, generator=g)
    start_actions = actions if actions is not None else torch.randn(given_actions.shape, generator=g)
    start_actions = start_actions * action_mask[:, None]

    seen = TrunkTimesteps(model, observed.shape)
    out_actions, out_future = sample(model, mode, b, observed, action_mask, actions, future)

    assert len(seen.calls) == 2  # both streams take 2 steps: one pass per step
    assert all(torch.all(t == CLEAN) for t in seen.of("observed") + seen.of("rest"))
    for stream, role, out, start in (("action", action_role, out_actions, start_actions),
                                     ("video", video_role, out_future, start_future)):
        times = seen.of(stream)
        if role == "given":
            assert torch.equal(out, start), stream
            assert all(torch.all(t == CLEAN) for t in times), stream
        elif role == "noise":
            assert torch.equal(out, start), stream
            assert all(torch.all(t == NOISE) for t in times), stream
        else:
            assert not torch.allclose(out, start), stream
            levels = [t.unique().tolist() for t in times]  # one time per pass over the whole stream
            assert levels[0] == [NOISE] and all(len(level) == 1 for level in levels), (stream, levels)
            assert all(a[0] > b[0] > CLEAN for a, b in zip(levels, levels[1:])), (stream, levels)
    assert torch.all(out_actions[~action_mask[:, None].expand_as(out_actions)] == 0)


@pytest.mark.parametrize("mode", [m for m, roles in MODES.items() if "given" in roles])
def test_a_mode_that_holds_a_stream_clean_refuses_to_run_without_it(mode, tmp_path):
    model = uwm(tmp_path)
    b, observed, action_mask, _, _ = sample_inputs(model)
    with pytest.raises(ValueError, match="clean: pass it"):
        sample(model, mode, b, observed, action_mask)


def test_an_unknown_sample_mode_is_a_value_error(tmp_path):
    model = uwm(tmp_path)
    b, observed, action_mask, actions, future = sample_inputs(model)
    with pytest.raises(ValueError, match="unknown sample mode 'dream'"):
        sample(model, "dream", b, observed, action_mask, actions, future)


def training_timesteps(model, b, objective="joint", seed=0) -> tuple[TrunkTimesteps, dict]:
    seen = TrunkTimesteps(model, model.encode_video(b.video[:, :1]).shape)
    torch.manual_seed(seed)
    out = model.loss(b, objective, {})
    assert len(seen.calls) == 1
    return seen, out


def test_an_action_free_sample_trains_with_its_actions_at_pure_noise(tmp_path):
    model = uwm(tmp_path)
    seen, _ = training_timesteps(model, batch((True, False)))
    action, = seen.of("action")
    assert torch.all(action[1] == NOISE)
    assert action[0].unique().numel() == 1 and action[0, 0] < NOISE
    observed, = seen.of("observed")
    assert torch.all(observed == CLEAN)


def test_an_action_free_sample_contributes_no_action_loss(tmp_path):
    model, b = uwm(tmp_path), batch((True, False))
    _, out = training_timesteps(model, b)
    garbage = replace(b, actions=b.actions.clone(), action_mask=b.action_mask.clone())
    garbage.actions[1] = 100 * torch.randn(HORIZON, 8)
    garbage.action_mask[1] = True  # whatever it carries, it has no actions
    _, out_garbage = training_timesteps(model, garbage)
    assert torch.equal(out["action_loss"], out_garbage["action_loss"])
    assert out["per_sample"]["action_count"][1] == 0 and out["per_sample"]["action_sq"][1] == 0
    moved = replace(b, actions=b.actions * 3)  # control: the sample with actions does move the loss
    _, out_moved = training_timesteps(model, moved)
    assert not torch.equal(out["action_loss"], out_moved["action_loss"])


@pytest.mark.parametrize("objective, held", [("action", "video"), ("video", "action")])
def test_an_objective_holds_the_stream_it_does_not_train_at_pure_noise(objective, held, tmp_path):
    seen, _ = training_timesteps(uwm(tmp_path), batch((True, True)), objective)
    times, = seen.of(held)
    assert torch.all(times == NOISE)


@pytest.mark.parametrize("backbone, shared", [({"kind": "diffusion", "timesteps": "shared"}, True),
                                              ({"kind": "hybrid", "timesteps": "independent"}, False)],
                         ids=["diffusion-shared", "hybrid-independent"])
def test_the_backbone_decides_whether_actions_share_the_futures_training_time(backbone, shared, tmp_path):
    seen, _ = training_timesteps(uwm(tmp_path, backbone=backbone), batch((True, True)))
    (action,), (video,) = seen.of("action"), seen.of("video")
    per_sample = torch.stack([action[:, 0], video[:, 0]], dim=1)  # [B, (action t, future t)]
    assert torch.all(action == action[:, :1]) and torch.all(video == video[:, :1])  # one time per stream
    assert torch.all(per_sample[:, 0] == per_sample[:, 1]) == shared
