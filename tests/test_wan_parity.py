"""wamforge's WanDiT against diffusers' WanTransformer3DModel, weight for weight, in fp32 on CPU."""
from __future__ import annotations

import pytest
import torch

from wamforge.model_zoo.trunks.wan.model import WanDiT, WanRotaryPosEmbed

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


def reference_and_ours_i2v(heads=2, head_dim=16, image_dim=24, pos_embed_seq_len=None, text_dim=32, ffn_dim=64,
                           layers=2, in_channels=20, out_channels=16):
    torch.manual_seed(0)
    dim = heads * head_dim
    reference = transformer_wan.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_channels,
        out_channels=out_channels, text_dim=text_dim, freq_dim=256, ffn_dim=ffn_dim, num_layers=layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=image_dim,
        added_kv_proj_dim=dim, pos_embed_seq_len=pos_embed_seq_len).eval()
    with torch.no_grad():  # perturb every parameter, pos_embed (zeros) and the norms (ones) included
        for param in reference.parameters():
            param.add_(0.1 * torch.randn_like(param))
    ours = WanDiT(in_channels, dim, layers, heads, ffn_dim, text_dim=text_dim, out_channels=out_channels,
                  image_dim=image_dim, pos_embed_seq_len=pos_embed_seq_len).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


# diffusers takes the image tokens off the front of the context and assumes 512 text tokens after them
DIFFUSERS_TEXT_TOKENS = 512


@pytest.mark.parametrize("per_token", [False, True])
def test_i2v_matches_diffusers(per_token):
    reference, ours = reference_and_ours_i2v()
    batch, frames, height, width = 2, 3, 6, 10
    latents = torch.randn(batch, 20, frames, height, width)
    tokens = frames * (height // 2) * (width // 2)
    timestep = torch.rand(batch, tokens) * 1000 if per_token else torch.rand(batch) * 1000
    text = torch.randn(batch, DIFFUSERS_TEXT_TOKENS, 32)
    image = torch.randn(batch, 257, 24)
    with torch.no_grad():
        expected = reference(latents, timestep, text, encoder_hidden_states_image=image).sample
        prediction, _ = ours(latents, timestep, text, image_emb=image)
        masked, _ = ours(latents, timestep, text, image_emb=image,
                         text_mask=torch.ones(batch, DIFFUSERS_TEXT_TOKENS, dtype=torch.bool))
        text_only, _ = ours(latents, timestep, text)
    assert prediction.shape == expected.shape == (batch, 16, frames, height, width)
    assert (prediction - expected).abs().max() <= TOLERANCE
    assert (masked - expected).abs().max() <= TOLERANCE
    assert (text_only - expected).abs().max() > 1e-3  # the image tokens do matter


def test_flf2v_matches_diffusers():
    reference, ours = reference_and_ours_i2v(pos_embed_seq_len=2 * 257)
    batch = 2
    latents = torch.randn(batch, 20, 2, 4, 6)
    timestep = torch.rand(batch) * 1000
    text = torch.randn(batch, DIFFUSERS_TEXT_TOKENS, 32)
    first_last = torch.randn(batch, 2 * 257, 24)  # ours: first- and last-frame tokens concatenated
    with torch.no_grad():
        # diffusers takes them as [2B, 257, D] and folds each pair back into one sample
        expected = reference(latents, timestep, text, encoder_hidden_states_image=first_last.view(2 * batch, 257, 24)).sample
        prediction, _ = ours(latents, timestep, text, image_emb=first_last)
    assert (prediction - expected).abs().max() <= TOLERANCE
    with pytest.raises(ValueError, match="514"):
        ours(latents, timestep, text, image_emb=first_last[:, :257])


def test_i2v_gradient_checkpointing_matches():
    _, ours = reference_and_ours_i2v(layers=1)
    latents, text, image = torch.randn(2, 20, 1, 4, 4), torch.randn(2, 5, 32), torch.randn(2, 257, 24)
    timestep = torch.rand(2) * 1000
    plain, _ = ours(latents, timestep, text, image_emb=image)
    plain_grads = torch.autograd.grad(plain.square().sum(), list(ours.parameters()))
    ours.gradient_checkpointing = True
    checkpointed, _ = ours(latents, timestep, text, image_emb=image)
    grads = torch.autograd.grad(checkpointed.square().sum(), list(ours.parameters()))
    assert torch.equal(plain, checkpointed)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain_grads, grads))


def test_image_emb_needs_an_i2v_model():
    _, ours = reference_and_ours(2, 16)
    with pytest.raises(ValueError, match="image_dim"):
        ours(torch.randn(1, 16, 1, 4, 4), torch.rand(1), torch.randn(1, 3, 32), image_emb=torch.randn(1, 257, 24))
