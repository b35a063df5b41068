"""Wan checkpoint layouts: the name map, safetensors round trips, sharding, strictness, sizes."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from wamforge.model_zoo.trunks.wan.sizes import WAN_SIZES, WanSize
from wamforge.model_zoo.trunks.wan.weights import (checkpoint_files, layout_names, load_wan_weights,
                                                   native_name, save_wan_weights)

# every tensor of one block of the Wan2.1 repository's WanModel (wan/modules/model.py)
NATIVE_BLOCK = [f"blocks.0.{name}" for name in (
    *(f"{attn}.{proj}.{kind}" for attn in ("self_attn", "cross_attn") for proj in "qkvo" for kind in ("weight", "bias")),
    *(f"{attn}.{norm}.weight" for attn in ("self_attn", "cross_attn") for norm in ("norm_q", "norm_k")),
    "norm3.weight", "norm3.bias", "ffn.0.weight", "ffn.0.bias", "ffn.2.weight", "ffn.2.bias", "modulation")]
NATIVE_TOP = ["patch_embedding.weight", "patch_embedding.bias", "text_embedding.0.weight", "text_embedding.0.bias",
              "text_embedding.2.weight", "text_embedding.2.bias", "time_embedding.0.weight", "time_embedding.0.bias",
              "time_embedding.2.weight", "time_embedding.2.bias", "time_projection.1.weight",
              "time_projection.1.bias", "head.head.weight", "head.head.bias", "head.modulation"]


def one_block_model():
    return WanSize(dim=32, ffn_dim=64, layers=1, heads=2, text_dim=24).build()


# what the Wan2.1 I2V / FLF2V WanModel adds: MLPProj on the CLIP tokens, image k/v in each cross-attention
NATIVE_I2V = [*(f"img_emb.proj.{i}.{kind}" for i in (0, 1, 3, 4) for kind in ("weight", "bias")),
              *(f"blocks.0.cross_attn.{proj}.{kind}" for proj in ("k_img", "v_img") for kind in ("weight", "bias")),
              "blocks.0.cross_attn.norm_k_img.weight"]


def one_block_i2v_model(flf2v=False):
    return WanSize(dim=32, ffn_dim=64, layers=1, heads=2, text_dim=24, in_channels=20, out_channels=16,
                   image_dim=40, pos_embed_seq_len=6 if flf2v else None).build()


def randomized(model):
    with torch.no_grad():
        for param in model.parameters():
            param.normal_()
    return model


def test_native_names_are_the_wan_repository_names():
    assert sorted(layout_names(one_block_model(), "native")) == sorted(NATIVE_TOP + NATIVE_BLOCK)


def test_i2v_native_names_are_the_wan_repository_names():
    assert sorted(layout_names(one_block_i2v_model(), "native")) == sorted(NATIVE_TOP + NATIVE_BLOCK + NATIVE_I2V)
    assert sorted(layout_names(one_block_i2v_model(flf2v=True), "native")) == sorted(
        NATIVE_TOP + NATIVE_BLOCK + NATIVE_I2V + ["img_emb.emb_pos"])


@pytest.mark.parametrize("build", [one_block_model, one_block_i2v_model])
def test_native_map_inverts_diffusers_conversion(build):
    single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
    names = list(build().state_dict())
    converted = single_file_utils.convert_wan_transformer_to_diffusers({native_name(n): n for n in names})
    assert {key: value for key, value in converted.items()} == {n: n for n in names}


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("layout", ["native", "diffusers"])
def test_round_trip_single_file(tmp_path, layout):
    source = randomized(one_block_model())
    written = {native_name(n) if layout == "native" else n: t for n, t in source.state_dict().items()}
    save_file(written, tmp_path / "checkpoint.safetensors")

    model = one_block_model()
    report = load_wan_weights(model, tmp_path / "checkpoint.safetensors")
    assert report.layout == layout and report.complete and len(report.loaded) == len(written)
    assert_same_tensors(model.state_dict(), source.state_dict())

    saved = save_wan_weights(model, tmp_path / "out", layout=layout)
    assert_same_tensors(load_file(saved), written)


@pytest.mark.parametrize("layout", ["native", "diffusers"])
def test_round_trip_sharded(tmp_path, layout):
    source = randomized(one_block_model())
    index = save_wan_weights(source, tmp_path / "sharded", layout=layout, max_shard_bytes=20_000)
    weight_map = json.loads(index.read_text())["weight_map"]
    assert len(set(weight_map.values())) > 1

    model = one_block_model()
    load_wan_weights(model, tmp_path / "sharded")  # the folder is enough
    assert_same_tensors(model.state_dict(), source.state_dict())
    again = save_wan_weights(model, tmp_path / "again", layout=layout, max_shard_bytes=20_000)
    assert_same_tensors({n: load_file(f)[n] for n, f in checkpoint_files(again).items()},
                        {n: load_file(f)[n] for n, f in checkpoint_files(index).items()})


@pytest.mark.parametrize("flf2v", [False, True])
@pytest.mark.parametrize("layout", ["native", "diffusers"])
def test_i2v_round_trip(tmp_path, layout, flf2v):
    source = randomized(one_block_i2v_model(flf2v))
    written = {native_name(n) if layout == "native" else n: t for n, t in source.state_dict().items()}
    save_file(written, tmp_path / "checkpoint.safetensors")

    model = one_block_i2v_model(flf2v)
    report = load_wan_weights(model, tmp_path / "checkpoint.safetensors")
    assert report.layout == layout and report.complete and len(report.loaded) == len(written)
    assert_same_tensors(model.state_dict(), source.state_dict())
    assert_same_tensors(load_file(save_wan_weights(model, tmp_path / "out", layout=layout)), written)

    # and an I2V checkpoint does not load into a text-to-video model
    with pytest.raises(KeyError, match="unexpected"):
        load_wan_weights(one_block_model(), tmp_path / "checkpoint.safetensors")


def test_comfyui_prefix_is_stripped(tmp_path):
    source = randomized(one_block_model())
    written = {"model.diffusion_model." + native_name(n): t for n, t in source.state_dict().items()}
    save_file(written, tmp_path / "comfy.safetensors")
    model = one_block_model()
    load_wan_weights(model, tmp_path / "comfy.safetensors")
    assert_same_tensors(model.state_dict(), source.state_dict())


def broken_checkpoint(tmp_path):
    """Native layout, one tensor missing, one extra (an I2V image key), one of the wrong shape."""
    source = randomized(one_block_model())
    tensors = {native_name(n): t for n, t in source.state_dict().items()}
    del tensors["blocks.0.ffn.2.bias"]
    tensors["blocks.0.cross_attn.k_img.weight"] = torch.zeros(32, 32)
    tensors["head.head.weight"] = torch.zeros(3, 32)
    save_file(tensors, tmp_path / "broken.safetensors")
    return source, tmp_path / "broken.safetensors"


def test_mismatches_are_an_error_naming_them_and_nothing_is_loaded(tmp_path):
    _, path = broken_checkpoint(tmp_path)
    model = one_block_model()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(KeyError) as error:
        load_wan_weights(model, path)
    for name in ("blocks.0.ffn.net.2.bias", "blocks.0.cross_attn.k_img.weight", "head.head.weight"):
        assert name in str(error.value)
    assert_same_tensors(model.state_dict(), before)


def test_partial_load_reports_what_it_skipped(tmp_path):
    source, path = broken_checkpoint(tmp_path)
    model = one_block_model()
    report = load_wan_weights(model, path, partial=True)
    assert report.missing == ["blocks.0.ffn.net.2.bias"]
    assert report.unexpected == ["blocks.0.cross_attn.k_img.weight"]
    assert report.mismatched == ["head.head.weight: (3, 32) vs (64, 32)"]
    assert "proj_out.weight" not in report.loaded
    assert torch.equal(model.blocks[0].ffn.net[0].proj.weight, source.blocks[0].ffn.net[0].proj.weight)


def test_pickles_are_refused(tmp_path):
    torch.save({}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="safetensors"):
        load_wan_weights(one_block_model(), tmp_path / "model.pt")


@pytest.mark.parametrize("size", sorted(WAN_SIZES))
def test_parameter_count_matches_diffusers(size):
    transformer_wan = pytest.importorskip("diffusers.models.transformers.transformer_wan")
    cfg = WAN_SIZES[size]
    with torch.device("meta"):
        ours = cfg.build()
        reference = transformer_wan.WanTransformer3DModel(
            patch_size=cfg.patch, num_attention_heads=cfg.heads, attention_head_dim=cfg.dim // cfg.heads,
            in_channels=cfg.in_channels, out_channels=cfg.out_channels or cfg.in_channels, text_dim=cfg.text_dim,
            freq_dim=256, ffn_dim=cfg.ffn_dim, num_layers=cfg.layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", image_dim=cfg.image_dim, pos_embed_seq_len=cfg.pos_embed_seq_len,
            added_kv_proj_dim=None if cfg.image_dim is None else cfg.dim)
    assert {n: p.shape for n, p in ours.named_parameters()} == {n: p.shape for n, p in reference.named_parameters()}
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())


def test_released_sizes_have_the_published_parameter_counts():
    with torch.device("meta"):
        counts = {size: sum(p.numel() for p in WAN_SIZES[size].build().parameters()) / 1e9
                  for size in ("wan2.1-1.3b", "wan2.1-14b", "wan2.1-i2v-14b", "wan2.2-ti2v-5b")}
    assert 1.3 < counts["wan2.1-1.3b"] < 1.5 and 14 < counts["wan2.1-14b"] < 14.5
    assert 16.3 < counts["wan2.1-i2v-14b"] < 16.5  # 14B plus image k/v in each of the 40 blocks
    assert 4.9 < counts["wan2.2-ti2v-5b"] < 5.1
