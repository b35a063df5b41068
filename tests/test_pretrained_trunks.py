"""A recipe started from a released trunk: tiny random checkpoints written in each official layout
(the Wan repository's, Cosmos-Predict2's with its release-only extras, and diffusers' own
`save_pretrained` folders), loaded strictly into the WAM's trunk through the stage's init, with the
parts the WAM adds listed as new, and the trunk computing what the release computes."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from pydantic import TypeAdapter, ValidationError
from safetensors.torch import load_file, save_file

from wamforge.config import validate
from wamforge.config.paths import RunPaths
from wamforge.model_zoo.build import build_model
from wamforge.model_zoo.trunks import TrunkConfig
from wamforge.model_zoo.trunks.cosmos.sizes import COSMOS_SIZES
from wamforge.model_zoo.trunks.cosmos.weights import save_cosmos_weights
from wamforge.model_zoo.trunks.wan.sizes import WAN_SIZES
from wamforge.model_zoo.trunks.wan.weights import save_wan_weights
from wamforge.training.stages import load_initial_weights

diffusers = pytest.importorskip("diffusers")

# the tiny sizes' widths: 16-channel latents (a real Wan2.1 VAE, at its fewest levels) and 32-wide captions
VAE = {"kind": "wan2.1", "base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2], "num_res_blocks": 1}
RECIPES = {"wan": "uwm", "cosmos": "mimic_video"}  # joint generation's streams; a post-prediction head
TINY_HEAD = {"kind": "cross_attention", "dim": 32, "layers": 1, "heads": 2}


def released(kind: str) -> torch.nn.Module:
    """The tiny size as its release would ship it: every parameter random (no zero-initialised table)."""
    torch.manual_seed(1)
    model = (WAN_SIZES if kind == "wan" else COSMOS_SIZES)["tiny"].build()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)
    return model.eval()


def write_checkpoint(kind: str, fmt: str, release: torch.nn.Module, root):
    if fmt == "diffusers":  # diffusers writes its own folder: config.json and its tensor names
        cls = diffusers.WanTransformer3DModel if kind == "wan" else diffusers.CosmosTransformer3DModel
        size = (WAN_SIZES if kind == "wan" else COSMOS_SIZES)["tiny"]
        config = wan_diffusers_config(size) if kind == "wan" else size.config()
        reference = cls(**config)
        reference.load_state_dict(release.state_dict())
        reference.save_pretrained(root / "pipeline" / "transformer")
        return root / "pipeline"  # a pipeline folder: the transformer is found in it
    if kind == "wan":
        return save_wan_weights(release, root / "wan", layout="native")
    path = save_cosmos_weights(release, root / "cosmos", layout="native")
    tensors = load_file(path)  # what NVIDIA's files carry beside the network, which the load drops
    tensors["net.accum_iteration"] = torch.tensor(1000)
    tensors["net.blocks.0.self_attn.q_proj._extra_state"] = torch.zeros(4, dtype=torch.uint8)
    save_file(tensors, path)
    return path


def wan_diffusers_config(size) -> dict:
    return dict(patch_size=size.patch, num_attention_heads=size.heads, attention_head_dim=size.dim // size.heads,
                in_channels=size.in_channels, out_channels=size.in_channels, text_dim=size.text_dim,
                ffn_dim=size.ffn_dim, num_layers=size.layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads")


def experiment(kind: str, root, init_from: dict | None, **model):
    block = {"recipe": RECIPES[kind], "trunk": {"kind": kind, "size": "tiny", "init_from": init_from},
             "vae": VAE, "text": {"dim": 32, "max_tokens": 16}, "regime": {"kind": "chunked", "horizon": 4}, **model}
    if kind == "cosmos":
        block["coupling"] = {"kind": "post_prediction_head", "head": TINY_HEAD}
    return validate(tiny_config(root, model=block))


@pytest.mark.parametrize("kind, fmt", [("wan", "wan"), ("wan", "diffusers"), ("cosmos", "cosmos"),
                                       ("cosmos", "diffusers")])
def test_a_recipe_starts_from_each_official_layout(kind, fmt, tmp_path):
    release = released(kind)
    path = write_checkpoint(kind, fmt, release, tmp_path)
    cfg = experiment(kind, tmp_path, {"format": fmt, "path": str(path)})
    torch.manual_seed(0)
    model = build_model(cfg, num_embodiments=2)
    report = load_initial_weights(model, cfg.stages[0], cfg, RunPaths.of(cfg))

    trunk = model.state_dict()
    for name, tensor in release.state_dict().items():
        torch.testing.assert_close(trunk[f"trunk.{name}"], tensor, rtol=0, atol=0)
    assert sorted(report.loaded) == sorted(f"trunk.{n}" for n in release.state_dict())
    assert report.new == sorted(n for n in trunk if not n.startswith("trunk."))
    assert any(n.startswith("embodiments.") for n in report.new)
    assert "new (fresh init)" in str(report) and "embodiments (" in str(report)
    if fmt == "cosmos":
        assert report.dropped == ["net.accum_iteration", "net.blocks.0.self_attn.q_proj._extra_state"]

    # the trunk computes what the release computes, on what the WAM feeds it
    latents, frame_t = torch.randn(2, 16, 3, 4, 4), torch.tensor([[0.0, 0.4, 0.4], [0.0, 0.9, 0.9]])
    text = torch.randn(2, 5, 32)
    with torch.no_grad():
        ours, _ = model.trunk.predict(latents, frame_t, text)
        if kind == "wan":
            expected, _ = release.predict(latents, frame_t, text)
        else:  # Video2World: the condition mask marks the frames at flow time 0
            mask = (frame_t == 0).float()[:, None, :, None, None].expand(2, 1, 3, 4, 4)
            expected, _ = release(latents, frame_t, text, condition_mask=mask)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_a_checkpoint_of_another_size_is_refused_naming_the_misfits(tmp_path):
    other = WAN_SIZES["tiny"].__class__(dim=32, ffn_dim=64, layers=1, heads=2, text_dim=32).build()
    path = save_wan_weights(other, tmp_path / "other", layout="native")
    cfg = experiment("wan", tmp_path, {"format": "wan", "path": str(path)})
    model = build_model(cfg, num_embodiments=2)
    with pytest.raises(KeyError, match=r"missing .*blocks\.1\..*shape mismatch"):
        load_initial_weights(model, cfg.stages[0], cfg, RunPaths.of(cfg))


@pytest.mark.parametrize("change, message", [
    ({"vae": {"kind": "patchify"}}, "trained on 16-channel latents, but vae patchify gives 48"),
    ({"text": {"dim": 64, "max_tokens": 16}}, "reads 32-wide caption embeddings"),
])
def test_a_released_size_refuses_other_widths_before_launch(change, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        experiment("wan", tmp_path, {"format": "wan", "path": str(tmp_path)}, **change)


def test_a_format_of_another_trunk_is_refused(tmp_path):
    with pytest.raises(ValueError, match="trunk kind wan loads formats wan or diffusers, not 'cosmos'"):
        experiment("wan", tmp_path, {"format": "cosmos", "path": str(tmp_path)})


@pytest.mark.parametrize("trunk", [{"kind": "wan", "size": "tiny", "dim": 64, "layers": 3},
                                   {"kind": "cosmos", "size": "tiny", "heads": 2, "layers": 3}])
def test_a_size_takes_its_own_dims_again_but_refuses_others(trunk, tmp_path):
    adapter = TypeAdapter(TrunkConfig)
    saved = adapter.validate_python({k: v for k, v in trunk.items() if k != "layers"})
    assert adapter.validate_python(saved.model_dump()) == saved  # a saved config repeats the size's dims
    with pytest.raises(ValidationError, match=r"fixes \['layers'\]"):
        adapter.validate_python(trunk)


def test_the_release_example_validates_with_matching_widths():
    from wamforge.config import load_config

    cfg = load_config("configs/experiments/fast_wam_wan2.1_1.3b.yaml")
    assert (cfg.model.trunk.size, cfg.model.trunk.init_from.format) == ("wan2.1-1.3b", "wan")
    assert (cfg.model.vae.kind, cfg.model.text.dim, cfg.data.caches) == ("wan2.1", 4096, ["vae"])
