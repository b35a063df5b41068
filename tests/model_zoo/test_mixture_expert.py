"""Fast-WAM's mixture-of-transformers action expert on the encoder-only substrate (the fast_wam recipe).

The expert's shapes and gradients; video that never sees the actions; actions that read the observed
frame and never a future token; prefilled inference that equals the trunk's ordinary forward on the
observed frames; render_future refused; the combination rules.
"""
from __future__ import annotations

import pydantic
import pytest
import torch
from test_contract import CASES, experiment, two_samples

from wamforge.config.model import ModelConfig
from wamforge.model_zoo.build import build_model
from wamforge.model_zoo.common.layers import apply_rotary
from wamforge.model_zoo.couplings.post_prediction_head import PostPredictionHead
from wamforge.model_zoo.heads import MixtureActionExpert, MixtureExpertConfig
from wamforge.model_zoo.inference import Inference

DIM, TRUNK_DIM, TRUNK_HEADS, LAYERS, HORIZON, BATCH, VIDEO_TOKENS = 16, 32, 2, 2, 4, 2, 6


def expert_inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    head_dim = TRUNK_DIM // TRUNK_HEADS
    kv = [tuple(torch.randn(BATCH, TRUNK_HEADS, VIDEO_TOKENS, head_dim, generator=g, requires_grad=True)
                for _ in range(2)) for _ in range(LAYERS)]
    return (torch.randn(BATCH, HORIZON, DIM, generator=g), torch.randn(BATCH, 1, DIM, generator=g),
            torch.tensor([250.0, 900.0]), kv)


def tiny_fast_wam(tmp_path, perturb: bool = True):
    """The fast_wam recipe at the contract test's tiny sizes, with every weight nudged off its init (the
    bank's action_out starts at zero, which would make every velocity 0 whatever the frame)."""
    cfg = experiment(CASES["fast_wam"], tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg, num_embodiments=3)
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return cfg, model


def count_trunk_tokens(model) -> list[int]:
    """Record the tokens of every trunk embed and per-token condition call (wrappers on the instance)."""
    seen, trunk = [], model.trunk
    embed, condition = trunk.embed, trunk.condition

    def counted_embed(latents):
        x = embed(latents)
        seen.append(x.shape[1])
        return x

    def counted_condition(timestep, text_emb):
        if timestep.ndim == 2:
            seen.append(timestep.shape[1])
        return condition(timestep, text_emb)

    trunk.embed, trunk.condition = counted_embed, counted_condition
    return seen


def test_the_expert_gives_one_state_per_action_token_and_backward_reaches_every_weight_and_the_trunk_kv():
    torch.manual_seed(0)
    expert = MixtureActionExpert(MixtureExpertConfig(dim=DIM), TRUNK_DIM, HORIZON, LAYERS, TRUNK_HEADS)
    actions, proprio, timestep, kv = expert_inputs()
    out = expert(actions, proprio, timestep, kv)
    assert out.shape == (BATCH, HORIZON, DIM) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()  # a random readout: a plain sum cancels under LayerNorm
    for name, param in expert.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for k, v in kv:  # every block attends to its own trunk layer's keys and values
        assert k.grad.abs().sum() > 0 and v.grad.abs().sum() > 0


def test_the_attention_runs_in_the_trunks_head_space_and_refuses_a_mismatched_one():
    expert = MixtureActionExpert(MixtureExpertConfig(dim=DIM), TRUNK_DIM, HORIZON, LAYERS, TRUNK_HEADS)
    assert expert.blocks[0].attn.to_q.out_features == TRUNK_DIM and expert.blocks[0].attn.to_out[0].out_features == DIM
    actions, proprio, timestep, kv = expert_inputs()
    wrong = [(k[:, :1], v[:, :1]) for k, v in kv]  # one head where the expert has two
    with pytest.raises(ValueError, match="head space"):
        expert(actions, proprio, timestep, wrong)
    with pytest.raises(ValueError, match="joins 2 trunk blocks"):
        expert(actions, proprio, timestep, kv[:1])


def test_the_action_objective_trains_the_expert_and_the_trunk_through_the_observed_keys_and_values(tmp_path):
    cfg, model = tiny_fast_wam(tmp_path)
    seen = count_trunk_tokens(model)
    out = model.loss(two_samples(cfg), "action", {})
    out["loss"].backward()
    observed_tokens = seen[0]
    assert all(n == observed_tokens for n in seen)  # the observed frames alone: cheap
    for name, param in model.action_expert.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for block in model.trunk.blocks:  # the prefill keeps its graph: the action loss shapes the trunk
        assert block.attn1.to_k.weight.grad.abs().sum() > 0 and block.attn1.to_v.weight.grad.abs().sum() > 0


def test_the_video_prediction_is_bit_identical_whatever_the_actions(tmp_path):
    cfg, model = tiny_fast_wam(tmp_path)
    batch = two_samples(cfg)
    losses = []
    for actions in (batch.actions, torch.randn_like(batch.actions) * batch.action_mask):
        torch.manual_seed(3)
        with torch.no_grad():
            losses.append(model.loss(batch.__class__(**{**batch.__dict__, "actions": actions}), "joint", {}))
    assert torch.equal(losses[0]["video_loss"], losses[1]["video_loss"])
    assert torch.equal(losses[0]["per_sample"]["video_loss"], losses[1]["per_sample"]["video_loss"])
    assert not torch.equal(losses[0]["action_loss"], losses[1]["action_loss"])  # the actions did change


def test_the_actions_follow_the_observed_frame_and_acting_computes_no_future_token(tmp_path):
    cfg, model = tiny_fast_wam(tmp_path)
    model.eval()
    batch = two_samples(cfg)
    assert model.latent_frames > model.clean_latents  # the clip has future frames that acting must skip
    seen = count_trunk_tokens(model)
    chunks = []
    for video in (batch.video[:, :1], 255 - batch.video[:, :1]):
        chunks.append(model.sample_actions(video, batch.proprio, batch.proprio_mask, batch.embodiment_id,
                                           batch.text, Inference(action_steps=3),
                                           generator=torch.Generator().manual_seed(0)))
    observed_tokens = model.video_tokens(batch) * model.clean_latents // model.latent_frames
    assert seen and all(n == observed_tokens for n in seen), seen
    assert len(seen) == 4  # one prefill (embed + condition) per chunk, none per action step
    assert not torch.allclose(chunks[0], chunks[1])


def test_prefilled_inference_equals_the_trunks_ordinary_forward_on_the_observed_frames(tmp_path):
    """One Euler step from t = 1 is a = noise - v(noise, 1); v from the KV cache prefill (inference) must
    match v from keys/values taken inside `trunk.predict` on the observed frames with gradients on."""
    cfg, model = tiny_fast_wam(tmp_path)
    batch = two_samples(cfg)
    action_mask = torch.zeros(2, cfg.model.max_action_dim, dtype=torch.bool)
    action_mask[:, :4] = True
    model.eval()
    acted = model.sample_actions(batch.video[:, :1], batch.proprio, batch.proprio_mask, batch.embodiment_id,
                                 batch.text, Inference(action_steps=1), generator=torch.Generator().manual_seed(0),
                                 action_mask=action_mask)

    trunk, kv = model.trunk, {}

    def keep_kv(index):
        def hook(module, args, kwargs, output):
            k = module.norm_k(module.to_k(args[0])).unflatten(-1, (module.heads, -1)).transpose(1, 2)
            v = module.to_v(args[0]).unflatten(-1, (module.heads, -1)).transpose(1, 2)
            kv[index] = (apply_rotary(k, kwargs["rotary"]), v)
        return hook

    hooks = [block.attn1.register_forward_hook(keep_kv(i), with_kwargs=True) for i, block in enumerate(trunk.blocks)]
    x0 = model.encode_video(batch.video)  # the training path slices the whole clip's latents
    observed = x0[:, :, :model.clean_latents]
    text = model.encode_text(batch.text, x0.device)
    trunk.predict(observed, torch.zeros(2, observed.shape[2]), *text)
    for hook in hooks:
        hook.remove()
    noise = torch.randn((2, model.horizon, cfg.model.max_action_dim), generator=torch.Generator().manual_seed(0))
    mask = action_mask[:, None].float()
    velocity = PostPredictionHead.velocity(model, noise, mask, torch.ones(2), [kv[i] for i in range(len(kv))],
                                           batch.proprio, batch.proprio_mask, batch.embodiment_id)
    torch.testing.assert_close(acted, (noise - velocity) * mask, atol=1e-5, rtol=1e-5)


def test_render_future_is_refused_because_no_future_video_exists(tmp_path):
    cfg, model = tiny_fast_wam(tmp_path, perturb=False)
    batch = two_samples(cfg)
    with pytest.raises(ValueError, match="nothing to render"):
        model.sample_actions(batch.video[:, :1], batch.proprio, batch.proprio_mask, batch.embodiment_id,
                             batch.text, Inference(render_future=True))


@pytest.mark.parametrize("block, message", [
    ({"substrate": {"kind": "feature.encoder_only"}}, "head kind mixture"),  # default head: cross_attention
    ({"substrate": {"kind": "feature.encoder_only"}, "trunk": {"kind": "cosmos"},
      "coupling": {"kind": "post_prediction_head", "head": {"kind": "mixture"}}}, "trunk kind wan"),
    ({"substrate": {"kind": "feature.tap"}, "coupling": {"kind": "post_prediction_head", "head": {"kind": "mixture"}}},
     "use substrate feature.encoder_only"),
])
def test_the_encoder_only_substrate_and_the_mixture_head_fit_only_each_other_and_wan(block, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        ModelConfig.model_validate(block)
