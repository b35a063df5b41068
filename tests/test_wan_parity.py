"""wamforge's WanDiT against diffusers' WanTransformer3DModel, weight for weight, in fp32 on CPU."""
from __future__ import annotations

import pytest
import torch

from wamforge.model_zoo.trunks.wan_dit import WanDiT, WanRotaryPosEmbed

transformer_wan = pytest.importorskip("diffusers.models.transformers.transformer_wan")

TOLERANCE = 1e-5


def reference_and_ours(heads: int, head_dim: int, patch=(1, 2, 2), channels=16, text_dim=32, ffn_dim=64, layers=2):
    torch.manual_seed(0)
    reference = transformer_wan.WanTransformer3DModel(
        patch_size=patch, num_attention_heads=heads, attention_head_dim=head_dim, in_channels=channels,
        out_channels=channels, text_dim=text_dim, freq_dim=256, ffn_dim=ffn_dim, num_layers=layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6).eval()
    with torch.no_grad():  # default norm weights are ones and biases zeros: perturb so every one matters
        for param in reference.parameters():
            param.add_(0.1 * torch.randn_like(param))
    ours = WanDiT(channels, heads * head_dim, layers, heads, ffn_dim, text_dim=text_dim, patch=patch).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)  # same names, same shapes
    return reference, ours


CASES = {
    # name: (heads, head_dim, patch, batch, frames, height, width, per-token timesteps)
    "square_one_timestep_per_sample": (2, 16, (1, 2, 2), 2, 3, 8, 8, False),
    "wide_per_token_timesteps": (2, 24, (1, 2, 2), 3, 4, 6, 14, True),
    "tall_temporal_patch": (3, 16, (2, 2, 2), 2, 4, 12, 4, True),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_diffusers(case):
    heads, head_dim, patch, batch, frames, height, width, per_token = CASES[case]
    reference, ours = reference_and_ours(heads, head_dim, patch)
    latents = torch.randn(batch, 16, frames, height, width)
    tokens = (frames // patch[0]) * (height // patch[1]) * (width // patch[2])
    timestep = torch.rand(batch, tokens) * 1000 if per_token else torch.rand(batch) * 1000
    text = torch.randn(batch, 7, 32)
    with torch.no_grad():
        expected = reference(latents, timestep, text).sample
        prediction, _ = ours(latents, timestep, text)
        all_real = torch.ones(batch, 7, dtype=torch.bool)  # a mask with no padding changes nothing
        masked, _ = ours(latents, timestep, text, text_mask=all_real)
    assert prediction.shape == expected.shape
    assert (prediction - expected).abs().max() <= TOLERANCE
    assert (masked - expected).abs().max() <= TOLERANCE


def test_per_sample_timestep_equals_the_same_timestep_on_every_token():
    reference, ours = reference_and_ours(2, 16)
    latents, text = torch.randn(2, 16, 2, 4, 6), torch.randn(2, 5, 32)
    timestep = torch.tensor([3.0, 870.0])
    with torch.no_grad():
        per_token = reference(latents, timestep[:, None].expand(2, 2 * 2 * 3), text).sample
        prediction, _ = ours(latents, timestep, text)
    assert (prediction - per_token).abs().max() <= TOLERANCE


@pytest.mark.parametrize("head_dim", [16, 24, 128])
def test_rope_matches_diffusers_at_full_resolution(head_dim):
    grid = (21, 30, 52)  # Wan2.1 at 81 frames 480x832
    latents_shape_only = torch.empty(1, 1, grid[0], 2 * grid[1], 2 * grid[2], device="meta")
    cos, sin = transformer_wan.WanRotaryPosEmbed(head_dim, (1, 2, 2), 1024)(latents_shape_only)
    our_cos, our_sin = WanRotaryPosEmbed(head_dim)(*grid, "cpu")
    # diffusers stores every angle twice (interleaved); wamforge stores each once
    assert torch.equal(cos[0, :, 0, 0::2], our_cos)
    assert torch.equal(sin[0, :, 0, 0::2], our_sin)
