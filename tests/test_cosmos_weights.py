"""Cosmos checkpoint layouts: the name map, safetensors round trips, sharding, strictness, dropped keys."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from wamforge.model_zoo.trunks.cosmos.sizes import COSMOS_SIZES
from wamforge.model_zoo.trunks.cosmos.weights import (checkpoint_files, is_dropped, layout_names,
                                                      load_cosmos_weights, native_name, save_cosmos_weights)

# every tensor of one block of Cosmos-Predict2's MiniTrainDIT, as the released checkpoints name them
NATIVE_BLOCK = [f"net.blocks.0.{name}" for name in (
    *(f"{attn}.{proj}.weight" for attn in ("self_attn", "cross_attn")
      for proj in ("q_proj", "k_proj", "v_proj", "output_proj", "q_norm", "k_norm")),
    *(f"adaln_modulation_{part}.{i}.weight" for part in ("self_attn", "cross_attn", "mlp") for i in (1, 2)),
    "mlp.layer1.weight", "mlp.layer2.weight")]
NATIVE_TOP = ["net.x_embedder.proj.1.weight", "net.t_embedder.1.linear_1.weight", "net.t_embedder.1.linear_2.weight",
              "net.t_embedding_norm.weight", "net.final_layer.adaln_modulation.1.weight",
              "net.final_layer.adaln_modulation.2.weight", "net.final_layer.linear.weight"]
# tensors the official checkpoints carry that the model has no parameter for
OFFICIAL_EXTRAS = {
    "net.accum_video_sample_counter": torch.tensor(7), "net.accum_image_sample_counter": torch.tensor(3),
    "net.accum_iteration": torch.tensor(10), "net.accum_train_in_hours": torch.tensor(1.5),
    "net.pos_embedder.seq": torch.arange(8.0), "net.pos_embedder.dim_spatial_range": torch.arange(4.0),
    "net.pos_embedder.dim_temporal_range": torch.arange(2.0),
    "net.blocks.0.self_attn.attn_op._extra_state": torch.zeros(0, dtype=torch.uint8),
    "net.blocks.0.mlp.layer1._extra_state": torch.zeros(4, dtype=torch.uint8),
}


def one_block_model(**overrides):
    return dataclasses.replace(COSMOS_SIZES["tiny"], num_layers=1, **overrides).build()


def tiny_model():
    torch.manual_seed(0)
    return COSMOS_SIZES["tiny"].build()


def randomized(model):
    with torch.no_grad():
        for param in model.parameters():
            param.normal_()
    return model


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def native_state(model):
    return {native_name(n): t for n, t in model.state_dict().items()}


def test_native_names_are_the_cosmos_predict2_names():
    assert sorted(layout_names(one_block_model(), "native")) == sorted(NATIVE_TOP + NATIVE_BLOCK)


def test_native_map_inverts_diffusers_conversion():
    single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
    names = list(tiny_model().state_dict())
    checkpoint = {native_name(n): n for n in names} | dict.fromkeys(OFFICIAL_EXTRAS, "extra")
    converted = single_file_utils.convert_cosmos_transformer_checkpoint_to_diffusers(checkpoint)
    # diffusers renames every parameter back and deletes exactly the keys we drop
    assert converted == {n: n for n in names}
    assert all(is_dropped(name) for name in OFFICIAL_EXTRAS)
    assert not any(is_dropped(name) for name in layout_names(tiny_model(), "native"))
    # the keys diffusers' single-file loader recognizes a Predict2 checkpoint by
    detect, drop = single_file_utils.CHECKPOINT_KEY_NAMES["cosmos-2.0"][:2], \
        single_file_utils.CHECKPOINT_KEY_NAMES["cosmos-2.0"][2:]
    assert set(detect) <= set(layout_names(tiny_model(), "native")) and all(map(is_dropped, drop))


def test_native_file_loads_into_diffusers_through_its_converter(tmp_path):
    single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
    transformer_cosmos = pytest.importorskip("diffusers.models.transformers.transformer_cosmos")
    source = randomized(tiny_model())
    path = save_cosmos_weights(source, tmp_path, layout="native")
    converted = single_file_utils.convert_cosmos_transformer_checkpoint_to_diffusers(
        load_file(path) | OFFICIAL_EXTRAS)
    reference = transformer_cosmos.CosmosTransformer3DModel(**COSMOS_SIZES["tiny"].config())
    reference.load_state_dict(converted, strict=True)
    assert_same_tensors(dict(reference.state_dict()), dict(source.state_dict()))


@pytest.mark.parametrize("layout", ["native", "diffusers"])
def test_round_trip_single_file(tmp_path, layout):
    source = randomized(tiny_model())
    written = native_state(source) if layout == "native" else dict(source.state_dict())
    save_file(written, tmp_path / "checkpoint.safetensors")

    model = tiny_model()
    report = load_cosmos_weights(model, tmp_path / "checkpoint.safetensors")
    assert report.layout == layout and report.complete and not report.dropped
    assert len(report.loaded) == len(written)
    assert_same_tensors(model.state_dict(), source.state_dict())

    saved = save_cosmos_weights(model, tmp_path / "out", layout=layout)
    assert_same_tensors(load_file(saved), written)


@pytest.mark.parametrize("layout", ["native", "diffusers"])
def test_round_trip_sharded(tmp_path, layout):
    source = randomized(tiny_model())
    index = save_cosmos_weights(source, tmp_path / "sharded", layout=layout, max_shard_bytes=10_000)
    weight_map = json.loads(index.read_text())["weight_map"]
    assert len(set(weight_map.values())) > 1
    assert set(weight_map) == set(layout_names(source, layout))

    model = tiny_model()
    report = load_cosmos_weights(model, tmp_path / "sharded")  # the folder is enough
    assert report.layout == layout and report.complete
    assert_same_tensors(model.state_dict(), source.state_dict())
    again = save_cosmos_weights(model, tmp_path / "again", layout=layout, max_shard_bytes=10_000)
    assert_same_tensors({n: load_file(f)[n] for n, f in checkpoint_files(again).items()},
                        {n: load_file(f)[n] for n, f in checkpoint_files(index).items()})


def test_native_checkpoint_we_save_reproduces_the_output(tmp_path):
    source = randomized(tiny_model())
    with torch.no_grad():
        for param in source.parameters():
            param.mul_(0.2)
    path = save_cosmos_weights(source, tmp_path, layout="native")
    model = tiny_model()
    load_cosmos_weights(model, path, layout="native")

    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 16, 3, 8, 8, generator=generator)
    condition_mask = torch.zeros(2, 1, 3, 8, 8)
    condition_mask[:, :, 0] = 1
    text = torch.randn(2, 5, 32, generator=generator)
    timestep = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        expected, _ = source(latents, timestep, text, condition_mask=condition_mask)
        got, _ = model(latents, timestep, text, condition_mask=condition_mask)
    assert expected.shape == latents.shape and expected.abs().sum() > 0
    assert torch.equal(got, expected)


def test_official_extras_are_dropped_and_reported(tmp_path):
    source = randomized(tiny_model())
    save_file(native_state(source) | OFFICIAL_EXTRAS, tmp_path / "official.safetensors")
    model = tiny_model()
    report = load_cosmos_weights(model, tmp_path / "official.safetensors")
    assert report.layout == "native" and report.complete
    assert report.dropped == sorted(OFFICIAL_EXTRAS)
    assert_same_tensors(model.state_dict(), source.state_dict())


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "model.diffusion_model.net."])
def test_native_without_net_or_under_comfyui_prefix(tmp_path, prefix):
    source = randomized(tiny_model())
    tensors = {prefix + name.removeprefix("net."): t for name, t in (native_state(source) | OFFICIAL_EXTRAS).items()}
    save_file(tensors, tmp_path / "bare.safetensors")
    model = tiny_model()
    report = load_cosmos_weights(model, tmp_path / "bare.safetensors")
    assert report.layout == "native" and report.complete and len(report.dropped) == len(OFFICIAL_EXTRAS)
    assert_same_tensors(model.state_dict(), source.state_dict())


def test_learnable_position_embedding_round_trips(tmp_path):
    source = randomized(one_block_model(extra_pos_embed_type="learnable"))
    names = layout_names(source, "native")
    assert {"net.extra_pos_embedder.pos_emb_t", "net.extra_pos_embedder.pos_emb_h",
            "net.extra_pos_embedder.pos_emb_w"} <= set(names)
    path = save_cosmos_weights(source, tmp_path, layout="native")
    model = one_block_model(extra_pos_embed_type="learnable")
    assert load_cosmos_weights(model, path).complete
    assert_same_tensors(model.state_dict(), source.state_dict())


def broken_checkpoint(tmp_path):
    """Native layout, one tensor missing, one unknown, one of the wrong shape, plus the official extras."""
    source = randomized(tiny_model())
    tensors = native_state(source) | OFFICIAL_EXTRAS
    del tensors["net.blocks.1.mlp.layer2.weight"]
    tensors["net.blocks.0.cross_attn.k_img.weight"] = torch.zeros(32, 32)
    tensors["net.final_layer.linear.weight"] = torch.zeros(3, 32)
    save_file(tensors, tmp_path / "broken.safetensors")
    return source, tmp_path / "broken.safetensors"


def test_mismatches_are_an_error_naming_them_and_nothing_is_loaded(tmp_path):
    _, path = broken_checkpoint(tmp_path)
    model = tiny_model()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(KeyError) as error:
        load_cosmos_weights(model, path)
    message = str(error.value)
    for name in ("transformer_blocks.1.ff.net.2.weight", "net.blocks.0.cross_attn.k_img.weight",
                 "net.final_layer.linear.weight: (3, 32) vs (64, 32)"):
        assert name in message
    assert "accum_iteration" not in message and "_extra_state" not in message
    assert_same_tensors(model.state_dict(), before)


def test_partial_load_reports_what_it_skipped(tmp_path):
    source, path = broken_checkpoint(tmp_path)
    model = tiny_model()
    report = load_cosmos_weights(model, path, partial=True)
    assert report.missing == ["transformer_blocks.1.ff.net.2.weight"]
    assert report.unexpected == ["net.blocks.0.cross_attn.k_img.weight"]
    assert report.mismatched == ["net.final_layer.linear.weight: (3, 32) vs (64, 32)"]
    assert report.dropped == sorted(OFFICIAL_EXTRAS)
    assert "proj_out.weight" not in report.loaded and "transformer_blocks.1.ff.net.2.weight" not in report.loaded
    assert torch.equal(model.transformer_blocks[1].ff.net[0].proj.weight,
                       source.transformer_blocks[1].ff.net[0].proj.weight)


def test_diffusers_layout_does_not_drop_official_extras(tmp_path):
    source = randomized(tiny_model())
    save_file(dict(source.state_dict()) | {"accum_iteration": torch.tensor(1)}, tmp_path / "d.safetensors")
    with pytest.raises(KeyError, match="unexpected.*accum_iteration"):
        load_cosmos_weights(tiny_model(), tmp_path / "d.safetensors")


def test_wrong_layout_is_an_error(tmp_path):
    save_cosmos_weights(randomized(tiny_model()), tmp_path, layout="diffusers")
    with pytest.raises(KeyError) as error:  # missing: model names; unexpected: names in the file
        load_cosmos_weights(tiny_model(), tmp_path, layout="native")
    assert "missing (47)" in str(error.value) and "unexpected (47)" in str(error.value)
    assert "patch_embed.proj.weight" in str(error.value)
    with pytest.raises(ValueError, match="unknown layout"):
        load_cosmos_weights(tiny_model(), tmp_path, layout="original")


def test_bf16_checkpoint_is_cast_to_the_model_dtype(tmp_path):
    source = randomized(tiny_model()).to(torch.bfloat16)
    path = save_cosmos_weights(source, tmp_path, layout="native")
    model = tiny_model()
    load_cosmos_weights(model, path)
    assert all(t.dtype == torch.float32 for t in model.state_dict().values())
    assert_same_tensors({n: t.bfloat16() for n, t in model.state_dict().items()}, source.state_dict())


def test_pickles_are_refused(tmp_path):
    torch.save({}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="safetensors"):
        load_cosmos_weights(tiny_model(), tmp_path / "model.pt")
