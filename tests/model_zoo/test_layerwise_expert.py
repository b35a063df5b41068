"""GE-Act's per-layer action head: shapes, gradient flow, one trunk layer per block, state token first."""
from __future__ import annotations

import pydantic
import pytest
import torch

from wamforge.model_zoo.common.layers import apply_rotary
from wamforge.model_zoo.heads.layerwise_expert import LayerwiseActionExpert, LayerwiseExpertConfig, rope_1d

DIM, HEADS, HORIZON, LAYERS, CONTEXT_DIM, BATCH = 16, 2, 4, 2, 24, 2
CONTEXT_LENGTHS = (5, 7)  # the layers' sequences need not match; each is read on its own


def build() -> LayerwiseActionExpert:
    torch.manual_seed(0)
    return LayerwiseActionExpert(LayerwiseExpertConfig(dim=DIM, heads=HEADS), CONTEXT_DIM, LAYERS, HORIZON)


def inputs(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    actions = torch.randn(BATCH, HORIZON, DIM, generator=generator)
    proprio = torch.randn(BATCH, 1, DIM, generator=generator)
    timestep = torch.tensor([250.0, 900.0])
    features = [torch.randn(BATCH, length, CONTEXT_DIM, generator=generator) for length in CONTEXT_LENGTHS]
    return actions, proprio, timestep, features


def test_the_output_is_one_hidden_state_per_action_token():
    out = build()(*inputs())
    assert out.shape == (BATCH, HORIZON, DIM)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_backward_reaches_every_parameter():
    expert = build()
    out = expert(*inputs())
    (out * torch.randn_like(out)).sum().backward()  # a random readout: a plain sum cancels under LayerNorm
    for name, param in expert.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_each_block_cross_attends_its_own_layer_projected_by_its_own_projection():
    expert = build()
    actions, proprio, timestep, features = inputs()
    seen = {}
    hooks = [block.attn2.register_forward_hook(lambda module, args, out, i=i: seen.__setitem__(i, args[1]))
             for i, block in enumerate(expert.blocks)]
    with torch.no_grad():
        expert(actions, proprio, timestep, features)
        for i in range(LAYERS):
            expected = expert.context_proj[i](expert.context_norm[i](features[i]))
            for got, want in zip(seen[i], expert.blocks[i].attn2.project_context(expected)):  # its keys, values
                torch.testing.assert_close(got, want)
    for hook in hooks:
        hook.remove()


def test_every_layer_feature_changes_the_output_and_receives_gradient():
    expert = build()
    actions, proprio, timestep, features = inputs()
    features = [f.clone().requires_grad_(True) for f in features]
    out = expert(actions, proprio, timestep, features)
    (out * torch.randn_like(out)).sum().backward()
    for j in range(LAYERS):
        assert features[j].grad.abs().sum() > 0, f"no gradient reaches features[{j}]"
        perturbed = [f.detach().clone() for f in features]
        perturbed[j] += torch.randn_like(perturbed[j])
        with torch.no_grad():
            assert not torch.allclose(expert(actions, proprio, timestep, perturbed), out.detach(), atol=1e-5), j


def test_the_state_token_comes_first_and_every_action_token_attends_it():
    expert = build()
    actions, proprio, timestep, features = inputs()
    seen = {}
    hook = expert.blocks[0].register_forward_pre_hook(lambda module, args: seen.__setitem__("x", args[0]))
    with torch.no_grad():
        out = expert(actions, proprio, timestep, features)
        hook.remove()
        torch.testing.assert_close(seen["x"][:, :1], proprio)
        torch.testing.assert_close(seen["x"][:, 1:], actions)
        moved = expert(actions, proprio + torch.randn_like(proprio), timestep, features)
    changed = (moved - out).abs().amax(dim=-1)  # [B, H]
    assert (changed > 1e-5).all(), "some action token ignores the state token"


def test_the_timestep_modulates_the_output():
    expert = build()
    actions, proprio, timestep, features = inputs()
    with torch.no_grad():
        assert not torch.allclose(expert(actions, proprio, timestep, features),
                                  expert(actions, proprio, 1000.0 - timestep, features), atol=1e-5)


@pytest.mark.parametrize("count", [LAYERS - 1, LAYERS + 1])
def test_a_wrong_number_of_feature_tensors_is_a_value_error(count):
    expert = build()
    actions, proprio, timestep, features = inputs()
    features = (features * 2)[:count]
    with pytest.raises(ValueError, match="feature tensors"):
        expert(actions, proprio, timestep, features)


def test_rope_1d_attention_scores_depend_only_on_the_position_difference():
    torch.manual_seed(0)
    head_dim = 8
    q, k = torch.randn(1, 1, 1, head_dim), torch.randn(1, 1, 1, head_dim)
    cos, sin = rope_1d(torch.arange(12.0), head_dim)
    assert cos.shape == sin.shape == (12, head_dim // 2)

    def score(i: int, j: int) -> torch.Tensor:
        qi = apply_rotary(q, (cos[i:i + 1], sin[i:i + 1]))
        kj = apply_rotary(k, (cos[j:j + 1], sin[j:j + 1]))
        return (qi * kj).sum()

    torch.testing.assert_close(score(3, 1), score(9, 7))
    assert not torch.allclose(score(3, 1), score(3, 2))


def test_the_config_defaults_the_ffn_width_and_rejects_unknown_keys():
    cfg = LayerwiseExpertConfig()
    assert (cfg.kind, cfg.dim, cfg.heads, cfg.ffn_dim) == ("layerwise", 64, 4, None)
    expert = LayerwiseActionExpert(LayerwiseExpertConfig(dim=DIM, heads=HEADS), CONTEXT_DIM, LAYERS, HORIZON)
    assert expert.blocks[0].ffn.net[0].proj.out_features == 4 * DIM
    with pytest.raises(pydantic.ValidationError):
        LayerwiseExpertConfig(layers=3)
