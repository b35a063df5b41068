"""`wamforge export --format diffusers | native`: the video trunk as a release folder that diffusers
loads and runs with the trunk's own outputs, beside the WAM's own parts; `load_policy` reads it back."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config

from wamforge.cli import main
from wamforge.config import validate
from wamforge.config.paths import RunPaths
from wamforge.data_pipeline.embodiments import EmbodimentRegistry
from wamforge.evaluation.policy import load_policy
from wamforge.model_zoo.build import build_model
from wamforge.model_zoo.trunks.cosmos.model import CosmosDiT
from wamforge.model_zoo.trunks.wan.model import WanDiT
from wamforge.model_zoo.trunks.wan.weights import load_wan_weights
from wamforge.training.checkpoint import save_weights
from wamforge.training.export import export

diffusers = pytest.importorskip("diffusers")

# Wan at explicit dims over patchify latents (48 channels); Cosmos at its tiny Video2World size (a
# condition-mask channel) over a real Wan2.1 VAE's 16 channels
MODELS = {
    "wan": {"recipe": "uwm", "trunk": {"kind": "wan", "dim": 32, "layers": 2, "heads": 2, "ffn_dim": 64}},
    "cosmos": {"recipe": "mimic_video", "trunk": {"kind": "cosmos", "size": "tiny"},
               "vae": {"kind": "wan2.1", "base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2], "num_res_blocks": 1},
               "coupling": {"kind": "post_prediction_head",
                            "head": {"kind": "cross_attention", "dim": 32, "layers": 1, "heads": 2}}},
}


def trained_run(kind: str, built, root):
    """A run whose last stage has final weights no fresh build has."""
    built_cfg, _ = built
    raw = tiny_config(root, model={**MODELS[kind], "text": {"dim": 32, "max_tokens": 16},
                                   "regime": {"kind": "chunked", "horizon": 4}})
    raw["data"]["out_dir"] = str(RunPaths.of(built_cfg).data)  # the real stats.json of a built dataset
    cfg = validate(raw)
    torch.manual_seed(0)
    model = build_model(cfg, num_embodiments=len(EmbodimentRegistry.from_yaml(cfg.embodiments)))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    save_weights(model.state_dict(), RunPaths.of(cfg).final_weights(cfg.stages[-1].name))
    return cfg, model.eval()


def trunk_inputs(model):
    channels = model.vae.latent_channels
    frame_t = torch.tensor([[0.0, 0.3, 0.3], [0.0, 0.8, 0.8]])
    return torch.randn(2, channels, 3, 4, 4), frame_t, torch.randn(2, 6, 32)


@pytest.mark.parametrize("kind", ["wan", "cosmos"])
@pytest.mark.usefixtures("nearest_resize_without_torchvision")
def test_the_diffusers_export_loads_in_diffusers_with_identical_outputs(kind, built, tmp_path):
    cfg, model = trained_run(kind, built, tmp_path)
    out = export(cfg, out=tmp_path / "export", format="diffusers")
    cls = diffusers.WanTransformer3DModel if kind == "wan" else diffusers.CosmosTransformer3DModel
    reference = cls.from_pretrained(out / "transformer").eval()
    theirs, ours = reference.state_dict(), model.trunk.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)

    latents, frame_t, text = trunk_inputs(model)
    with torch.no_grad():
        expected, _ = model.trunk.predict(latents, frame_t, text)
        if kind == "wan":  # diffusers takes the timestep on its 0..1000 scale, one per token
            tokens = frame_t.repeat_interleave(4, dim=1) * 1000
            got = reference(latents, tokens, text, return_dict=False)[0]
        else:  # Video2World: the condition mask marks the given frames, at flow time 0
            mask = (frame_t == 0).float()[:, None, :, None, None].expand(2, 1, 3, 4, 4)
            got = reference(latents, frame_t[:, None, :, None, None], text, condition_mask=mask,
                            padding_mask=torch.zeros(1, 1, 4, 4), return_dict=False)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert "from_pretrained" in (out / "README.md").read_text()


def test_the_native_export_is_the_wan_repository_layout(built, tmp_path):
    cfg, model = trained_run("wan", built, tmp_path)
    out = export(cfg, out=tmp_path / "export", format="native")
    config = json.loads((out / "transformer" / "config.json").read_text())
    assert config["_class_name"] == "WanModel" and (config["dim"], config["in_dim"], config["num_layers"]) == (32, 48, 2)
    fresh = WanDiT(config["in_dim"], config["dim"], config["num_layers"], config["num_heads"], config["ffn_dim"],
                   text_dim=config["text_dim"])
    report = load_wan_weights(fresh, out / "transformer", layout="native")  # strict: every name in Wan's layout
    assert report.complete and report.layout == "native"
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.trunk.state_dict().items())


@pytest.mark.parametrize("kind, layout", [("wan", "native"), ("cosmos", "diffusers")])
def test_load_policy_reads_a_release_export_with_the_saved_weights(kind, layout, built, tmp_path):
    cfg, model = trained_run(kind, built, tmp_path)
    out = tmp_path / "export"
    assert main(["export", str(write_config(cfg, tmp_path)), "--out", str(out), "--format", layout]) == 0
    assert not (out / "model.safetensors").exists()  # the trunk is stored once, in its release folder
    policy = load_policy(out, device="cpu")
    loaded, saved = policy.model.state_dict(), model.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    chunk = policy.act({"image": np.full((32, 32, 3), 120, np.uint8),
                        "proprio": np.zeros(len(policy.registry["sawyer"].proprio_dims), np.float32)},
                       "reach the goal")
    assert np.isfinite(chunk).all()


def write_config(cfg, root):
    import yaml

    path = root / "experiment.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_a_baseline_has_no_trunk_to_export(tmp_path):
    cfg = validate(tiny_config(tmp_path, model={"baseline": "diffusion_policy"}))
    with pytest.raises(ValueError, match="no video trunk to export in the diffusers layout"):
        export(cfg, out=tmp_path / "export", format="diffusers")


def test_cosmos_native_names_carry_net(built, tmp_path):
    cfg, _ = trained_run("cosmos", built, tmp_path)
    out = export(cfg, out=tmp_path / "export", format="native")
    from safetensors import safe_open

    with safe_open(str(out / "transformer" / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and all(n.startswith("net.") for n in names)
    assert CosmosDiT.from_diffusers_config(json.loads((out / "transformer" / "config.json").read_text()))
