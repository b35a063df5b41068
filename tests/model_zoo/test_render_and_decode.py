"""Render-and-Decode (survey §3.1; UniPi, VLP): the `pixel.decoded` substrate, the inverse-dynamics head
and the post-prediction procedure that renders the future, decodes it and reads consecutive frames;
and the post-prediction head's `causal` trunk passes."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from test_contract import TINY_WAN_VAE, two_samples

from wamforge.config import validate
from wamforge.config.model import ModelConfig
from wamforge.config.recipes import load_recipe, merge
from wamforge.data_pipeline.schema import Batch
from wamforge.model_zoo.build import build_model
from wamforge.model_zoo.couplings import render_and_decode
from wamforge.model_zoo.inference import Inference

HORIZON = 4
TINY = {"trunk": {"kind": "wan", "dim": 32, "layers": 2, "heads": 2, "ffn_dim": 64},
        "text": {"dim": 32, "max_tokens": 16}, "regime": {"kind": "open_loop", "horizon": HORIZON},
        "coupling": {"kind": "post_prediction_head",
                     "head": {"kind": "inverse_dynamics", "dim": 32, "channels": [16, 32], "grid": [2, 2]}}}


def model_block(recipe: str = "unipi", **changes) -> dict:
    return {"recipe": recipe, **merge(merge(load_recipe(recipe)["model"], TINY), changes)}


def tiny_model(root, num_embodiments: int = 3, **changes):
    cfg = validate(tiny_config(root, model=model_block(**changes)))
    torch.manual_seed(0)
    return cfg, build_model(cfg, num_embodiments=num_embodiments)


def shifted_blobs(cfg, g: torch.Generator, batch: int = 8, frames: int = 9, size: int = 32, max_shift: int = 2):
    """A smooth blob moved by a known (dy, dx) at every step; the action of that step is the shift / max_shift."""
    shifts = torch.randint(-max_shift, max_shift + 1, (batch, frames - 1, 2), generator=g)
    start = torch.randint(10, 22, (batch, 1, 2), generator=g)
    centers = torch.cat([start, start + shifts.cumsum(1)], dim=1).float()  # [B, T, 2]
    ys, xs = torch.arange(size).float()[:, None], torch.arange(size).float()[None]
    blob = torch.exp(-((ys - centers[..., :1, None]) ** 2 + (xs - centers[..., 1:, None]) ** 2) / 8.0)
    video = (2 * blob - 1)[:, :, None, None].expand(-1, -1, 1, 3, -1, -1)  # [B, T, V=1, 3, H, W] in [-1, 1]
    a_max, p_max = cfg.model.max_action_dim, cfg.model.max_proprio_dim
    actions, mask = torch.zeros(batch, HORIZON, a_max), torch.zeros(batch, HORIZON, a_max, dtype=torch.bool)
    actions[:, :, :2], mask[:, :, :2] = shifts[:, :HORIZON].float() / max_shift, True
    return Batch(video=video.contiguous(), latents=None, video_pad=torch.zeros(batch, frames, dtype=torch.bool),
                 actions=actions, action_mask=mask, has_actions=torch.ones(batch, dtype=torch.bool),
                 proprio=torch.zeros(batch, p_max), proprio_mask=torch.zeros(batch, p_max, dtype=torch.bool),
                 embodiment_id=torch.zeros(batch, dtype=torch.long), source_id=torch.zeros(batch, dtype=torch.long),
                 text=[""] * batch, keys=[f"blob/ep{i}/000000" for i in range(batch)])


def test_the_idm_learns_the_shift_between_consecutive_frames(tmp_path):
    cfg, model = tiny_model(tmp_path, num_embodiments=1)
    held_out = shifted_blobs(cfg, torch.Generator().manual_seed(1), batch=16)
    with torch.no_grad():
        before = model.loss(held_out, "action", {})["action_loss"].item()
    optimizer = torch.optim.Adam([*model.action_expert.parameters(), *model.embodiments.parameters()], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        loss = model.loss(shifted_blobs(cfg, g), "action", {})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model.loss(held_out, "action", {})["action_loss"].item()
    assert before > 0.4  # an untrained IDM predicts 0: the targets' mean square, 0.5
    assert after < 0.25 * before


def test_the_action_objective_reaches_the_idm_and_the_bank_and_never_the_trunk(tmp_path):
    cfg, model = tiny_model(tmp_path)
    with torch.no_grad():  # a zero output projection would pass only zero gradients on to the IDM
        model.embodiments.action_out.normal_(std=0.5)
    pixels = two_samples(cfg)
    served = Batch(**{**pixels.__dict__, "video": None, "latents": model.encode_video(pixels.video)})
    for batch in (pixels, served):  # the real pixels, or the cached latents decoded
        model.zero_grad(set_to_none=True)
        out = model.loss(batch, "action", {})
        assert torch.isfinite(out["loss"]) and out["loss"] > 0
        out["loss"].backward()
        idm = dict(model.action_expert.named_parameters())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in idm.values())
        assert all(p.grad is not None for p in model.embodiments.parameters())  # unread ones by an exact 0
        assert all(p.grad is None for p in model.trunk.parameters())
        assert all(p.grad is None for p in model.text_encoder.parameters())
    model.zero_grad(set_to_none=True)
    model.loss(pixels, "joint", {})["loss"].backward()
    assert all(p.grad is not None for p in model.trunk.parameters())


def test_the_idm_reads_views_tiled_along_width_exactly_as_the_vae_decodes_them(tmp_path):
    cfg, model = tiny_model(tmp_path)
    batch = two_samples(cfg)
    two_views = torch.cat([batch.video, batch.video.flip(-1)], dim=2)  # [B, T, V=2, 3, H, W]
    decoded = model.vae.decode(model.encode_video(two_views))  # [B, T, 3, H, 2 W]
    torch.testing.assert_close(render_and_decode.tile_views(two_views)[:, 0], decoded[:, 0])  # frame 0 is exact
    batch = Batch(**{**batch.__dict__, "video": two_views})
    assert torch.isfinite(model.loss(batch, "joint", {})["loss"])


def test_acting_decodes_the_rendered_future_with_the_wan_vae_and_reads_h_pairs(tmp_path):
    cfg, model = tiny_model(tmp_path, vae=TINY_WAN_VAE)
    model.eval()
    with torch.no_grad():  # an untrained bank projects every action to 0: give it weights
        model.embodiments.action_out.normal_(std=0.5)
    batch = two_samples(cfg)
    action_mask = torch.zeros(2, cfg.model.max_action_dim, dtype=torch.bool)
    action_mask[0, :4], action_mask[1, :2] = True, True
    inference = Inference(video_steps=2)
    state = (batch.video[:, :1], batch.proprio, batch.proprio_mask, batch.embodiment_id, batch.text, inference)

    actions = model.sample_actions(*state, generator=torch.Generator().manual_seed(0), action_mask=action_mask)
    assert actions.shape == (2, HORIZON, cfg.model.max_action_dim) and torch.isfinite(actions).all()
    outside = ~action_mask[:, None].expand_as(actions)
    assert torch.all(actions[outside] == 0) and torch.all(actions[~outside] != 0)

    with torch.no_grad():  # the same plan by hand: the real causal decoder on [observed | future], pairs from now on
        observed = model.encode_video(batch.video[:, :1])
        future = model.coupling.imagine(model, observed, *state[1:], generator=torch.Generator().manual_seed(0))
        frames = model.vae.decode(torch.cat([observed, future], dim=2))
        assert frames.shape[1] == 9  # 1 + 4 (latent frames - 1): the Wan VAE's causal decode
        by_hand = render_and_decode.actions_from_frames(model, frames[:, :HORIZON + 1], batch.embodiment_id)
    torch.testing.assert_close(actions, by_hand * action_mask[:, None])
    other_plan = model.sample_actions(*state, generator=torch.Generator().manual_seed(1), action_mask=action_mask)
    assert not torch.allclose(other_plan, actions)  # the actions are read off the rendered future


def test_a_horizon_past_the_decoded_future_frames_is_refused(tmp_path):
    with pytest.raises(ValueError, match="a clip of 9 frames has 8 after the current one"):
        tiny_model(tmp_path, regime={"kind": "open_loop", "horizon": 9})


def test_the_decoded_substrate_and_the_idm_go_together_and_causal_needs_the_wan_trunk():
    with pytest.raises(ValueError, match="head kind inverse_dynamics"):
        ModelConfig.model_validate(model_block(coupling={"kind": "post_prediction_head",
                                                         "head": {"kind": "cross_attention"}}))
    with pytest.raises(ValueError, match="substrate pixel.decoded"):
        ModelConfig.model_validate(model_block(substrate={"kind": "pixel.latent"}))
    with pytest.raises(ValueError, match="cosmos"):
        ModelConfig.model_validate(model_block("dit4dit", trunk={"kind": "cosmos"},
                                               coupling={"kind": "post_prediction_head", "causal": True}))


@pytest.mark.parametrize("causal", [True, False])
def test_with_causal_the_observed_frames_do_not_see_the_future(causal, tmp_path):
    _, model = tiny_model(tmp_path, coupling={"kind": "post_prediction_head", "causal": causal})
    with torch.no_grad():  # Wan starts with a zero output projection: every velocity would be 0
        model.trunk.proj_out.weight.normal_(std=0.1)
    g = torch.Generator().manual_seed(0)
    observed = torch.randn(1, model.vae.latent_channels, 1, 8, 8, generator=g)
    futures = torch.randn(2, 1, model.vae.latent_channels, 2, 8, 8, generator=g)
    frame_t = model.frame_times(torch.full((1,), 0.5), 3)
    text = model.encode_text(["reach the goal"], torch.device("cpu"))
    with torch.no_grad():
        runs = [model.coupling.predict(model, torch.cat([observed, future], dim=2), frame_t, text, taps=(1,))
                for future in futures]
    (velocity_a, tapped_a), (velocity_b, tapped_b) = runs
    observed_tokens = 16  # 8 x 8 latents in 2 x 2 patches
    same = (torch.allclose(velocity_a[:, :, :1], velocity_b[:, :, :1], atol=1e-6)
            and torch.allclose(tapped_a[1][:, :observed_tokens], tapped_b[1][:, :observed_tokens], atol=1e-6))
    assert same == causal
    assert not torch.allclose(velocity_a[:, :, 1:], velocity_b[:, :, 1:])  # the future frames still differ
