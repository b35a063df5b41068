import sys

import pytest
import torch

from wamforge.config.model import ModelConfig
from wamforge.data_pipeline.schema import Batch
from wamforge.model_zoo.couplings import PostPredictionHeadConfig
from wamforge.model_zoo.encoders import TextConfig
from wamforge.model_zoo.heads import ActionExpertConfig
from wamforge.model_zoo.inference import Inference
from wamforge.model_zoo.regimes import ChunkedConfig
from wamforge.model_zoo.substrates import FeatureTapConfig
from wamforge.model_zoo.trunks import WanTrunkConfig
from wamforge.model_zoo.vae import PatchifyVAEConfig
from wamforge.model_zoo.wam import Geometry, WorldActionModel
from wamforge.model_zoo.common.attention import attention
from wamforge.model_zoo.common.layers import apply_rotary
from wamforge.model_zoo.trunks.wan.model import WanRotaryPosEmbed
from wamforge.model_zoo.vae import PatchifyVAE

CLIP, RES, A_MAX, P_MAX, HORIZON = 9, (32, 32), 8, 4, 8
LATENT = (12, 16, 16)  # VAE stride 2: 3 * 2 * 2 channels
TOKENS_PER_FRAME = (16 // 2) ** 2  # patch 2


def tiny_config() -> ModelConfig:
    return ModelConfig(
        substrate=FeatureTapConfig(layer=1),
        trunk=WanTrunkConfig(dim=32, layers=2, heads=2, ffn_dim=64),
        vae=PatchifyVAEConfig(spatial=2),  # 48 values per token: dim 32 can carry most of the noise
        text=TextConfig(dim=16, max_tokens=16),
        coupling=PostPredictionHeadConfig(head=ActionExpertConfig(dim=32, layers=2, heads=2)),
        regime=ChunkedConfig(horizon=HORIZON), max_action_dim=A_MAX, max_proprio_dim=P_MAX)


def tiny_model(seed: int = 0) -> WorldActionModel:
    torch.manual_seed(seed)
    return WorldActionModel(tiny_config(), Geometry(CLIP, RES), num_embodiments=2)


def make_batch(size: int = 2, has_actions: bool = True, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    action_mask = torch.zeros(size, HORIZON, A_MAX, dtype=torch.bool)
    action_mask[:, :, :4] = has_actions  # a 4-dof embodiment padded to A_MAX
    return Batch(
        video=torch.rand(size, CLIP, 1, 3, *RES, generator=g) * 2 - 1,
        video_pad=torch.zeros(size, CLIP, dtype=torch.bool), latents=None,
        actions=torch.randn(size, HORIZON, A_MAX, generator=g) * action_mask,
        action_mask=action_mask,
        has_actions=torch.full((size,), has_actions),
        proprio=torch.randn(size, P_MAX, generator=g),
        proprio_mask=torch.ones(size, P_MAX, dtype=torch.bool),
        embodiment_id=torch.arange(size) % 2,
        source_id=torch.zeros(size, dtype=torch.long),
        text=["push the red block left", "open the drawer"][:size] + [""] * max(0, size - 2),
        keys=[f"src/ep/{i:06d}" for i in range(size)])


@pytest.mark.parametrize("objective", ["video", "joint", "action"])
def test_loss_outputs(objective):
    model = tiny_model()
    out = model.loss(make_batch(), objective, {})
    for key in ("loss", "video_loss", "action_loss"):
        assert out[key].shape == () and torch.isfinite(out[key])
    assert (out["action_loss"] == 0) == (objective == "video")
    assert (out["video_loss"] == 0) == (objective == "action")
    out["loss"].backward()
    expert_grads = [p.grad for p in model.action_expert.parameters()]
    assert all(g is None for g in expert_grads) == (objective == "video")


def test_loss_weights_scale_components():
    model, batch = tiny_model(), make_batch()
    torch.manual_seed(1)
    out = model.loss(batch, "joint", {"video": 0.5, "action": 2.0})
    assert torch.allclose(out["loss"], 0.5 * out["video_loss"] + 2.0 * out["action_loss"])


def test_vae_roundtrip_on_temporally_constant_video_is_exact():
    vae = PatchifyVAE(spatial=4, temporal=4)
    frame = torch.rand(2, 1, 3, 32, 32) * 2 - 1
    video = frame.expand(2, CLIP, 3, 32, 32).contiguous()
    latents = vae.encode(video)
    assert latents.shape == (2, vae.latent_channels, 3, 8, 8) and vae.latent_channels == 48
    assert torch.equal(vae.decode(latents), video)
    assert not any(p.requires_grad for p in vae.parameters())


def test_vae_is_causal_in_time():
    vae, video = PatchifyVAE(), torch.rand(1, CLIP, 3, 32, 32)
    changed = video.clone()
    changed[:, 5:] += 1  # the last group only
    a, b = vae.encode(video), vae.encode(changed)
    assert torch.equal(a[:, :, :2], b[:, :, :2]) and not torch.equal(a[:, :, 2], b[:, :, 2])


def test_views_are_tiled_along_width():
    model = WorldActionModel(tiny_config(), Geometry(CLIP, RES, views=2), num_embodiments=2)
    video = torch.rand(1, CLIP, 2, 3, *RES)
    tiled = torch.cat([video[:, :, 0], video[:, :, 1]], dim=-1)
    assert torch.equal(model.encode_video(video), model.vae.encode(tiled))


def test_attention_matches_reference_and_respects_padding():
    q, k, v = torch.randn(3, 2, 2, 5, 8).unbind(0)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    assert torch.allclose(attention(q, k, v, mask), scores.softmax(-1) @ v, atol=1e-6)
    assert "flash_attn" not in sys.modules and "xformers" not in sys.modules


def test_rope_scores_depend_only_on_relative_position():
    rope = WanRotaryPosEmbed(head_dim=16)
    rotary = rope(6, 1, 1, "cpu")  # positions along time only
    q = apply_rotary(torch.randn(1, 1, 1, 16).expand(1, 1, 6, 16), rotary)
    k = apply_rotary(torch.randn(1, 1, 1, 16).expand(1, 1, 6, 16), rotary)
    scores = (q @ k.transpose(-1, -2))[0, 0]
    assert torch.allclose(scores[0, 2], scores[3, 5], atol=1e-5)
    assert not torch.allclose(scores[0, 2], scores[0, 3], atol=1e-3)


def test_trunk_does_not_mix_batch_elements():
    model = tiny_model()
    torch.nn.init.normal_(model.trunk.proj_out.weight)  # zero-initialised head would hide any mixing
    trunk = model.trunk
    latents = torch.randn(2, LATENT[0], 3, *LATENT[1:])
    timestep = torch.rand(2, 3 * TOKENS_PER_FRAME) * 1000
    pred, tapped = trunk(latents, timestep, *model.text_encoder(["pick", "place it"]), tap_layer=1)

    latents[1], timestep[1] = torch.randn(LATENT[0], 3, *LATENT[1:]), 0.0
    # a longer second text also changes how much padding the first one gets
    pred2, tapped2 = trunk(latents, timestep, *model.text_encoder(["pick", "a much longer instruction"]), tap_layer=1)
    assert torch.allclose(pred[0], pred2[0], atol=1e-5) and torch.allclose(tapped[0], tapped2[0], atol=1e-5)
    assert not torch.allclose(pred[1], pred2[1], atol=1e-3)


def test_clean_first_frame_gets_timestep_zero_and_no_video_loss():
    model, batch = tiny_model(), make_batch()
    seen = {}
    predict = model.trunk.predict

    def capture(latents, frame_t, *args, **kwargs):
        seen["latents"], seen["frame_t"] = latents, frame_t
        return predict(latents, frame_t, *args, **kwargs)

    model.trunk.predict = capture
    torch.manual_seed(3)
    reference = model.loss(batch, "video", {})["video_loss"]

    frame_t = seen["frame_t"]
    assert torch.equal(frame_t[:, 0], torch.zeros(2)) and (frame_t[:, 1:] > 0).all()
    assert torch.equal(seen["latents"][:, :, 0], model.encode_video(batch.video)[:, :, 0])

    # whatever the trunk predicts for the clean frame must not move the loss
    def garbage_on_first_frame(*args, **kwargs):
        prediction, tapped = predict(*args, **kwargs)
        prediction = prediction.clone()
        prediction[:, :, 0] = 1e3
        return prediction, tapped

    model.trunk.predict = garbage_on_first_frame
    torch.manual_seed(3)
    assert torch.equal(model.loss(batch, "video", {})["video_loss"], reference)


def test_flow_conventions_hold_for_an_oracle_velocity():
    """x_t = (1 - t) x0 + t noise with target noise - x0: the exact velocity (x_t - x0) / t scores
    zero loss, and Euler integration from t = 1 to 0 lands on x0."""
    model, batch = tiny_model(), make_batch()
    x0 = model.encode_video(batch.video)

    def oracle_trunk(latents, frame_t, *args, **kwargs):
        t = frame_t[:, None, :, None, None]  # [B, 1, F, 1, 1]
        return (latents - x0) / t.clamp(min=1e-9), {}

    model.trunk.predict = oracle_trunk
    torch.manual_seed(5)
    assert model.loss(batch, "video", {})["video_loss"] < 1e-6
    del model.trunk.predict

    def oracle_expert(model, noisy, mask, t, *args):
        return (noisy - batch.actions) / t[:, None, None]

    model.coupling.velocity = oracle_expert
    torch.manual_seed(5)
    out = model.loss(batch, "action", {})
    assert out["action_loss"] < 1e-8 and out["loss"] < 1e-8
    actions = model.sample_actions(batch.video[:, :1], batch.proprio, batch.proprio_mask, batch.embodiment_id,
                                   batch.text, inference=Inference(action_steps=4),
                                   action_mask=batch.action_mask[:, 0])
    assert torch.allclose(actions, batch.actions, atol=1e-5)


@pytest.mark.parametrize("objective", ["joint", "action"])
def test_action_loss_is_exact_zero_without_actions(objective):
    model = tiny_model()
    out = model.loss(make_batch(has_actions=False), objective, {})
    assert out["action_loss"].item() == 0.0
    out["loss"].backward()
    assert all(p.grad is not None for p in model.action_expert.parameters())
    assert model.embodiments.action_out.grad is not None


def test_action_loss_ignores_padded_dims():
    model, batch = tiny_model(), make_batch()
    torch.nn.init.normal_(model.embodiments.action_out)  # nonzero velocity on every dim
    torch.manual_seed(4)
    reference = model.loss(batch, "action", {})["action_loss"]
    batch.actions[:, :, 4:] = 100.0  # garbage under the mask
    torch.manual_seed(4)
    assert torch.allclose(model.loss(batch, "action", {})["action_loss"], reference)


def test_overfits_one_batch_with_joint_objective():
    model, batch = tiny_model(), make_batch(seed=1)
    t = torch.arange(CLIP, dtype=torch.float32)[:, None, None, None]
    x = torch.linspace(-1, 1, RES[1])
    batch.video[:, :, 0] = 0.8 * torch.sin(3 * x - 0.4 * t).expand(CLIP, 3, *RES)  # a drifting grating

    def evaluate() -> float:  # same noise and timesteps every time
        torch.manual_seed(123)
        with torch.no_grad():
            return sum(model.loss(batch, "joint", {})["loss"].item() for _ in range(8)) / 8

    before = evaluate()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model.loss(batch, "joint", {})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate()
    assert after < 0.4 * before, (before, after)


def test_sample_actions_and_tap_fast_path():
    model, batch = tiny_model(), make_batch()
    torch.nn.init.normal_(model.embodiments.action_out)
    model.eval()
    current = batch.video[:, :1]
    action_mask = batch.action_mask[:, 0]
    args = (current, batch.proprio, batch.proprio_mask, batch.embodiment_id, batch.text)
    actions = model.sample_actions(*args, inference=Inference(action_steps=4), generator=torch.Generator().manual_seed(0),
                                   action_mask=action_mask)
    assert actions.shape == (2, HORIZON, A_MAX) and torch.isfinite(actions).all()
    assert (actions[:, :, 4:] == 0).all() and (actions[:, :, :4] != 0).all()
    again = model.sample_actions(*args, inference=Inference(action_steps=4), generator=torch.Generator().manual_seed(0),
                                 action_mask=action_mask)
    assert torch.equal(actions, again)

    latents = torch.cat([model.encode_video(current), torch.randn(2, LATENT[0], 2, *LATENT[1:])], dim=2)
    timestep = torch.rand(2, 3 * TOKENS_PER_FRAME) * 1000
    text = model.text_encoder(batch.text)
    with torch.no_grad():
        pred, full = model.trunk(latents, timestep, *text, tap_layer=1)
        none, fast = model.trunk(latents, timestep, *text, tap_layer=1, stop_at_tap=True)
    assert pred is not None and none is None and torch.equal(full, fast)


def test_trained_action_dims_mask_inference_without_an_explicit_mask():
    model, batch = tiny_model(), make_batch()
    model.eval()
    model.loss(batch, "action", {})  # eval-mode losses record nothing
    assert not model.embodiments.action_dims.any()
    model.train()
    model.loss(batch, "action", {})
    expected = torch.tensor([True] * 4 + [False] * (A_MAX - 4))
    assert torch.equal(model.embodiments.action_dims, expected.expand(2, A_MAX))

    restored = tiny_model(seed=1)
    restored.load_state_dict(model.state_dict())  # the record travels with the weights
    restored.eval()
    args = (batch.video[:, :1], batch.proprio, batch.proprio_mask, batch.embodiment_id, batch.text)
    implicit = restored.sample_actions(*args, inference=Inference(action_steps=2), generator=torch.Generator().manual_seed(0))
    explicit = restored.sample_actions(*args, inference=Inference(action_steps=2), generator=torch.Generator().manual_seed(0),
                                       action_mask=batch.action_mask[:, 0])
    assert torch.equal(implicit, explicit) and (implicit[:, :, 4:] == 0).all()


def test_runs_with_weights_cast_to_bf16():
    model = tiny_model().to(torch.bfloat16)
    batch = make_batch().to("cpu", torch.bfloat16)
    out = model.loss(batch, "joint", {})
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32
    out["loss"].backward()
    actions = model.sample_actions(batch.video[:, :1], batch.proprio, batch.proprio_mask,
                                   batch.embodiment_id, batch.text, inference=Inference(action_steps=2))
    assert actions.shape == (2, HORIZON, A_MAX) and actions.dtype == torch.float32


def test_activation_checkpointing_gives_the_same_gradients():
    model, batch = tiny_model(), make_batch(seed=2)
    calls = []
    model.trunk.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    grads, block_calls = [], []
    for checkpointing in (False, True):
        model.trunk.gradient_checkpointing = checkpointing
        model.zero_grad()
        calls.clear()
        torch.manual_seed(5)
        model.loss(batch, "joint", {})["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        block_calls.append(len(calls))
    assert block_calls == [1, 2]  # checkpointed blocks run again in backward
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6)


def test_frozen_t5_text_encoder_with_cache(tmp_path):
    from tests.test_text_encoders import build_checkpoint

    checkpoint = build_checkpoint(tmp_path / "t5", "t5")
    cfg = tiny_config()
    cfg.text = TextConfig(encoder="t5", dim=32, max_tokens=16, path=str(checkpoint), cache_dir=str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = WorldActionModel(cfg, Geometry(CLIP, RES), num_embodiments=2)
    assert not any(k.startswith(("text_encoder", "frozen")) for k in model.state_dict())
    batch = make_batch()
    model.loss(batch, "joint", {})["loss"].backward()
    cached = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(cached) == len(set(batch.text))
    model.loss(batch, "joint", {})  # the same captions again: served from the cache
    assert sorted((tmp_path / "cache").rglob("*.safetensors")) == cached

    cfg.text = TextConfig(encoder="t5", dim=64, max_tokens=16, path=str(checkpoint))
    with pytest.raises(ValueError, match="d_model 32"):
        WorldActionModel(cfg, Geometry(CLIP, RES), num_embodiments=2)


@pytest.mark.parametrize("kind, fields, mean", [("uniform", {}, 0.5), ("logit_normal", {"mean": 0.0, "std": 1.0}, 0.5),
                                                ("shifted", {"shift": 3.0}, 0.6760), ("beta", {"alpha": 1.5, "beta": 1.0}, 0.6)])
def test_timestep_samplers_draw_their_distributions(kind, fields, mean):
    from wamforge.model_zoo.common.timesteps import TimestepConfig
    from wamforge.model_zoo.common.timesteps import sample_timesteps

    torch.manual_seed(0)
    t = sample_timesteps(TimestepConfig(kind=kind, **fields), 200_000, "cpu")  # shifted: 1.5 - 0.75 ln 3
    assert 0 <= t.min() and t.max() <= 1 and abs(t.mean().item() - mean) < 0.005
    if kind == "logit_normal":  # weight on the middle: fewer draws near the ends than uniform
        assert ((t < 0.1) | (t > 0.9)).float().mean() < 0.1


def test_stage_timesteps_reach_the_losses():
    from wamforge.model_zoo.common.timesteps import TimestepConfig

    model, batch = tiny_model(), make_batch()
    losses = {}
    for name, timesteps in [("default", None), ("late", {"video": TimestepConfig(kind="beta", alpha=50, beta=1),
                                                         "action": TimestepConfig(kind="beta", alpha=50, beta=1)})]:
        torch.manual_seed(0)
        losses[name] = model.loss(batch, "joint", {}, timesteps)
    # near t = 1 the target is almost pure noise: a fresh model's losses move towards E|noise - x0|^2
    assert losses["late"]["video_loss"] != losses["default"]["video_loss"]
    assert losses["late"]["action_loss"] != losses["default"]["action_loss"]


def test_loss_weight_schedules_ramp_between_breakpoints():
    from wamforge.config.stages import StageConfig
    from wamforge.training.stages import loss_weights_at

    stage = StageConfig(name="s", objective="joint", steps=100, mixture={"weights": {"a": 1}},
                        loss_weights={"video": 1.0, "action": 5.0},
                        loss_weight_schedule={"action": [{"step": 10, "weight": 0.0}, {"step": 30, "weight": 2.0}]})
    assert loss_weights_at(stage, 0) == {"video": 1.0, "action": 0.0}
    assert loss_weights_at(stage, 20) == {"video": 1.0, "action": pytest.approx(1.0)}
    assert loss_weights_at(stage, 99)["action"] == 2.0
    with pytest.raises(ValueError, match="increasing step order"):
        StageConfig(name="s", objective="joint", steps=9, mixture={"weights": {"a": 1}},
                    loss_weight_schedule={"action": [{"step": 5, "weight": 1}, {"step": 2, "weight": 0}]})


def test_ema_averages_trainable_weights_only(tmp_path):
    from wamforge.training.ema import EMA

    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    module[1].requires_grad_(False)
    ema = EMA(module, decay=0.9)
    start = module[0].weight.detach().clone()
    with torch.no_grad():
        module[0].weight.add_(1.0)
    ema.update()
    ema.update()
    # two updates towards start + 1: 1 - 0.9^2 of the way
    torch.testing.assert_close(ema.shadow["0.weight"], start + 0.19)
    assert set(ema.shadow) == {"0.weight", "0.bias"}
    averaged = ema.gather()
    EMA.save(averaged, tmp_path / "ema.safetensors")
    again = EMA(module, decay=0.9)
    again.load(tmp_path / "ema.safetensors")
    torch.testing.assert_close(again.shadow["0.weight"], start + 0.19)
    full = ema.state_dict(module.state_dict(), averaged)
    torch.testing.assert_close(full["1.weight"], module[1].weight.detach())
