"""wamforge's CosmosDiT against diffusers' CosmosTransformer3DModel, weight for weight, in fp32 on CPU."""
from __future__ import annotations

import pytest
import torch

from wamforge.model_zoo.trunks.cosmos.model import CosmosDiT, CosmosRotaryPosEmbed
from wamforge.model_zoo.trunks.cosmos.sizes import COSMOS_SIZES

transformer_cosmos = pytest.importorskip("diffusers.models.transformers.transformer_cosmos")

TOLERANCE = 1e-5
TEXT_DIM, TEXT_LEN = 32, 7


# diffusers' Cosmos resizes the padding mask with torchvision, absent here: conftest stands in
pytestmark = pytest.mark.usefixtures("nearest_resize_without_torchvision")


def reference_and_ours(**config):
    torch.manual_seed(0)
    config = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2.0,
                  text_embed_dim=TEXT_DIM, adaln_lora_dim=8, max_size=(16, 32, 32),
                  extra_pos_embed_type=None) | config
    reference = transformer_cosmos.CosmosTransformer3DModel(**config).eval()
    with torch.no_grad():  # zero-init position tables, unit norms: perturb so every parameter matters
        for param in reference.parameters():
            param.add_(0.1 * torch.randn_like(param))
    ours = CosmosDiT(**config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)  # same names, same shapes
    return reference, ours


CASES = {
    # Predict2 Text2Image: one timestep per sample, padding mask at latent size, text padding
    "text2image_wide": dict(
        config=dict(in_channels=16, rope_scale=(1.0, 4.0, 4.0)),
        batch=2, frames=3, height=6, width=10, per_frame=False, condition=False, fps=None, mask_size=(6, 10)),
    # Predict2 Video2World: condition-mask channel, per-frame timesteps, fps-scaled RoPE, mask resized
    "video2world_tall": dict(
        config=dict(in_channels=17, rope_scale=(20 / 24, 2.0, 2.0), attention_head_dim=24),
        batch=3, frames=4, height=12, width=4, per_frame=True, condition=True, fps=16, mask_size=(24, 8)),
    # Cosmos1-style: learnable absolute positions, temporal patching, no padding-mask channel
    "learnable_positions_temporal_patch": dict(
        config=dict(in_channels=16, rope_scale=(2.0, 1.0, 1.0), patch_size=(2, 2, 2), concat_padding_mask=False,
                    extra_pos_embed_type="learnable", num_attention_heads=3),
        batch=2, frames=4, height=4, width=8, per_frame=False, condition=False, fps=24, mask_size=None),
}


def inputs(case):
    batch, frames, height, width = case["batch"], case["frames"], case["height"], case["width"]
    latents = torch.randn(batch, 16, frames, height, width)
    if case["per_frame"]:
        timestep = torch.rand(batch, 1, frames, 1, 1)
    else:
        timestep = torch.rand(batch)
    condition = (torch.rand(batch, 1, frames, 1, 1) < 0.5).float().expand(-1, -1, -1, height, width)
    padding = None if case["mask_size"] is None else (torch.rand(1, 1, *case["mask_size"]) < 0.3).float()
    text = torch.randn(batch, TEXT_LEN, TEXT_DIM)
    text_mask = torch.arange(TEXT_LEN) < torch.randint(2, TEXT_LEN + 1, (batch, 1))
    return latents, timestep, (condition if case["condition"] else None), padding, text, text_mask


@pytest.mark.parametrize("name", CASES)
def test_matches_diffusers(name):
    case = CASES[name]
    reference, ours = reference_and_ours(**case["config"])
    latents, timestep, condition, padding, text, text_mask = inputs(case)
    captured = {}
    reference.transformer_blocks[0].register_forward_hook(lambda m, args, out: captured.update(block_1=out))
    with torch.no_grad():
        expected = reference(latents, timestep, text, attention_mask=text_mask, fps=case["fps"],
                             condition_mask=condition, padding_mask=padding).sample
        prediction, tapped = ours(latents, timestep, text, condition_mask=condition, padding_mask=padding,
                                  fps=case["fps"], text_mask=text_mask, tap_layer=1)
        stopped, tapped_early = ours(latents, timestep, text, condition_mask=condition, padding_mask=padding,
                                     fps=case["fps"], text_mask=text_mask, tap_layer=1, stop_at_tap=True)
    assert prediction.shape == expected.shape == (case["batch"], 16, case["frames"], case["height"], case["width"])
    error = (prediction - expected).abs().max().item()
    print(f"{name}: max abs error {error:.2e} (output scale {expected.abs().max().item():.2f})")
    assert error <= TOLERANCE
    assert (tapped - captured["block_1"]).abs().max() <= TOLERANCE
    assert stopped is None and torch.equal(tapped_early, tapped)


def test_per_frame_timestep_forms_agree_and_per_sample_is_constant_per_frame():
    reference, ours = reference_and_ours(in_channels=16, rope_scale=(1.0, 3.0, 3.0))
    latents, text = torch.randn(2, 16, 3, 4, 6), torch.randn(2, 5, TEXT_DIM)
    timestep = torch.tensor([0.1, 0.9])
    zeros = torch.zeros(1, 1, 4, 6)
    with torch.no_grad():
        expected = reference(latents, timestep[:, None, None, None, None].expand(2, 1, 3, 1, 1).contiguous(),
                             text, padding_mask=zeros).sample
        per_sample, _ = ours(latents, timestep, text)  # padding mask defaults to zeros, as the pipelines pass
        per_frame, _ = ours(latents, timestep[:, None].expand(2, 3), text)
    assert (per_sample - expected).abs().max() <= TOLERANCE
    assert (per_frame - expected).abs().max() <= TOLERANCE


@pytest.mark.parametrize("name", ["tiny", "cosmos-predict2-2b-text2image", "cosmos-predict2-2b-video2world",
                                  "cosmos-predict2-14b-text2image", "cosmos-predict2-14b-video2world"])
def test_named_sizes_match_diffusers_parameter_for_parameter(name):
    size = COSMOS_SIZES[name]
    with torch.device("meta"):
        ours = size.build()
        reference = transformer_cosmos.CosmosTransformer3DModel(**size.config())
    ours_shapes = {key: value.shape for key, value in ours.state_dict().items()}
    assert ours_shapes == {key: value.shape for key, value in reference.state_dict().items()}
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    if name.startswith("cosmos-predict2-2b"):
        assert 1.9e9 < count < 2.1e9
    if name.startswith("cosmos-predict2-14b"):
        assert 13.5e9 < count < 15e9


@pytest.mark.parametrize("fps", [None, 16])
def test_rope_matches_diffusers_at_720p(fps):
    grid = (24, 44, 80)  # Predict2 Video2World: 93 frames at 704x1280, after the VAE and 1x2x2 patches
    reference = transformer_cosmos.CosmosRotaryPosEmbed(128, rope_scale=(1.0, 3.0, 3.0))
    latents_shape_only = torch.empty(1, 1, grid[0], 2 * grid[1], 2 * grid[2])
    cos, sin = reference(latents_shape_only, fps=fps)
    our_cos, our_sin = CosmosRotaryPosEmbed(128, rope_scale=(1.0, 3.0, 3.0))(*grid, "cpu", fps=fps)
    # diffusers stores every angle twice (both halves of the head dim); wamforge stores each once
    assert torch.equal(cos[:, :64], our_cos) and torch.equal(cos[:, 64:], our_cos)
    assert torch.equal(sin[:, :64], our_sin)


def test_builds_from_a_diffusers_config():
    reference = transformer_cosmos.CosmosTransformer3DModel(**COSMOS_SIZES["tiny"].config())
    ours = CosmosDiT.from_diffusers_config(dict(reference.config))
    ours.load_state_dict(reference.state_dict(), strict=True)
    with pytest.raises(ValueError, match="use_crossattn_projection"):
        CosmosDiT.from_diffusers_config(dict(reference.config) | {"use_crossattn_projection": True})


def test_matches_diffusers_in_bf16():
    """Same dtype policy as diffusers: a model cast wholesale to bf16 gives diffusers' bf16 output."""
    case = CASES["video2world_tall"]
    reference, ours = reference_and_ours(**case["config"])
    reference.to(torch.bfloat16), ours.to(torch.bfloat16)
    *floats, text_mask = inputs(case)
    latents, timestep, condition, padding, text = (None if x is None else x.to(torch.bfloat16) for x in floats)
    with torch.no_grad():
        expected = reference(latents, timestep, text, attention_mask=text_mask, fps=16, condition_mask=condition,
                             padding_mask=padding).sample
        prediction, _ = ours(latents, timestep, text, condition_mask=condition, padding_mask=padding, fps=16,
                             text_mask=text_mask)
    assert prediction.dtype == torch.bfloat16
    assert (prediction.float() - expected.float()).abs().max() <= 1e-2
