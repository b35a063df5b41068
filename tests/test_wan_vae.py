"""The Wan VAE against diffusers' AutoencoderKLWan: same names, same numbers, same shapes."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from wamforge.model_zoo.vae.wan.model import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WanVAE
from wamforge.model_zoo.vae.wan.weights import load_wan_vae, native_names, save_wan_vae

diffusers = pytest.importorskip("diffusers")

# tiny configs: the first has the released (4, 8, 8) strides and 16 latents, the second covers
# num_res_blocks 2, a 2-level temporal stride of 2, a mid-level temporal step and z_dim 4
CONFIGS = {
    "stride_4x8x8": dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                         temperal_downsample=[False, True, True]),
    "stride_2x4x4": dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=2,
                         temperal_downsample=[True, False]),
}
TOLERANCE = 1e-5


def randomized(model):
    """Random weights, so untouched init values (gamma = 1, zero biases) cannot hide a mix-up."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2 + (param == 1).float())
    return model


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request):
    config = CONFIGS[request.param]
    torch.manual_seed(0)
    reference = randomized(diffusers.AutoencoderKLWan(**config)).eval()
    ours = WanVAE(**config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return request.param, reference, ours


@pytest.mark.parametrize("frames", [5, 9])
def test_encode_and_decode_match_diffusers(pair, frames):
    name, reference, ours = pair
    video = torch.rand(2, 3, frames, 16, 24, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    with torch.no_grad():
        posterior = reference.encode(video).latent_dist
        mean, logvar = ours.encode_posterior(video)
        encode_error = (mean - posterior.mean).abs().max().item()
        logvar_error = (logvar - posterior.logvar).abs().max().item()
        decoded = reference.decode(posterior.mean).sample
        ours_decoded = ours.decode_latents(posterior.mean)
        decode_error = (ours_decoded - decoded).abs().max().item()
    print(f"{name} T={frames}: encode {encode_error:.2e} logvar {logvar_error:.2e} decode {decode_error:.2e}")
    assert ours_decoded.shape == decoded.shape == video.shape
    assert encode_error <= TOLERANCE and logvar_error <= TOLERANCE and decode_error <= TOLERANCE
    assert decoded.abs().max() > 0.05  # not a trivially clamped / zero output


def test_frames_first_interface_shapes_and_normalization():
    config = CONFIGS["stride_4x8x8"]
    vae = randomized(WanVAE(**config)).eval()
    assert (vae.temporal_stride, vae.spatial_stride, vae.latent_channels) == (4, 8, 16)
    assert vae.latent_frames(9) == 3
    with pytest.raises(ValueError):
        vae.latent_frames(8)
    video = torch.rand(3, 9, 3, 16, 32) * 2 - 1  # [B, T, 3, H, W]
    with torch.no_grad():
        latents = vae.encode(video)
        raw_mean, _ = vae.encode_posterior(video.transpose(1, 2))
        sampled = vae.encode(video, sample=True, generator=torch.Generator().manual_seed(0))
        decoded = vae.decode(latents)
    assert latents.shape == (3, 16, 3, 2, 4)
    expected = (raw_mean - torch.tensor(WAN21_LATENTS_MEAN).view(1, -1, 1, 1, 1)) / torch.tensor(
        WAN21_LATENTS_STD).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(latents, expected)
    torch.testing.assert_close(vae.denormalize(vae.normalize(raw_mean)), raw_mean)
    assert sampled.shape == latents.shape and not torch.equal(sampled, latents)
    assert decoded.shape == video.shape and decoded.abs().max() <= 1.0
    with torch.no_grad():
        # denormalize(normalize(x)) rounds, and the decoder amplifies it a little
        torch.testing.assert_close(decoded, vae.decode_latents(raw_mean).transpose(1, 2), rtol=0, atol=1e-4)


def test_causality_later_frames_do_not_change_earlier_latents():
    vae = randomized(WanVAE(**CONFIGS["stride_4x8x8"])).eval()
    video = torch.rand(1, 9, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        full = vae.encode(video)
        prefix = vae.encode(video[:, :5])
    torch.testing.assert_close(full[:, :, :2], prefix, rtol=0, atol=1e-6)


def test_default_config_has_the_released_parameter_names():
    # the full-size model only builds its modules here; names and shapes must equal diffusers'
    ours = {k: v.shape for k, v in WanVAE().state_dict().items()}
    theirs = {k: v.shape for k, v in diffusers.AutoencoderKLWan().state_dict().items()}
    assert ours == theirs


# ---- the official Wan2.1 checkpoint layout (wan_vae_weights.py) ----


def test_native_names_invert_diffusers_conversion():
    # diffusers' converter hard-codes the released config, so compare on that one (names only)
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    names = native_names(WanVAE())
    converted = convert_wan_vae_to_diffusers({native: native for native in names})  # {diffusers: native}
    assert converted == {ours: native for native, ours in names.items()}
    # a few names as they are in Wan2.1_VAE.pth
    for native in ("encoder.conv1.weight", "encoder.downsamples.0.residual.0.gamma",
                   "encoder.downsamples.2.resample.1.weight", "encoder.downsamples.5.time_conv.weight",
                   "encoder.middle.1.to_qkv.weight", "encoder.head.2.bias",
                   "conv1.weight", "conv2.bias", "decoder.upsamples.3.time_conv.weight",
                   "decoder.upsamples.4.shortcut.weight", "decoder.upsamples.11.resample.1.bias",
                   "decoder.upsamples.14.residual.6.weight", "decoder.head.0.gamma"):
        assert native in names, native
    assert "decoder.upsamples.11.time_conv.weight" not in names  # the last upsampler is spatial only


@pytest.mark.parametrize("layout", ["native", "diffusers"])
def test_safetensors_round_trip(tmp_path, layout):
    config = CONFIGS["stride_2x4x4"]
    source = randomized(WanVAE(**config))
    path = save_wan_vae(source, tmp_path / "vae.safetensors", layout)
    target = load_wan_vae(WanVAE(**config), path)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name
    # the folder form, with exactly one safetensors file
    load_wan_vae(WanVAE(**config), tmp_path)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    config = CONFIGS["stride_2x4x4"]
    model = WanVAE(**config)
    state = {native: tensor for native, tensor in
             ((native, model.state_dict()[ours]) for native, ours in native_names(model).items())}
    state.pop("decoder.head.2.weight")
    state["decoder.extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "vae.safetensors"))
    with pytest.raises(ValueError, match=r"decoder\.head\.2\.weight.*decoder\.extra\.weight"):
        load_wan_vae(WanVAE(**config), tmp_path / "vae.safetensors")
    with pytest.raises(ValueError, match="only .safetensors"):
        load_wan_vae(model, tmp_path / "Wan2.1_VAE.pth")
