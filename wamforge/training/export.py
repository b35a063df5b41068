"""Export: the last stage's weights as safetensors plus everything `load_policy` needs, and a card.

Formats: `policy` (one model.safetensors), or `diffusers` / `native`: the video trunk as a release
folder `transformer/` in that layout (model_zoo/trunks/release.py), which diffusers' or Wan's code
loads as is, beside `wam.safetensors` with the WAM's own parts. `load_policy` reads all three."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from wamforge.config.paths import RunPaths
from wamforge.config.experiment import ExperimentConfig
from wamforge.data_pipeline.loader.collate import stats_hash
from wamforge.data_pipeline.embodiments import EmbodimentRegistry
from wamforge.training.metrics import stage_summary

EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FORMATS = ("policy", "diffusers", "native")
TRUNK_DIR, WAM_PARTS = "transformer", "wam.safetensors"


def export(cfg: ExperimentConfig, out: Path | None = None, stage: str | None = None, ema: bool = False,
           dtype: str = "fp32", format: str = "policy") -> Path:
    """`ema`: export the stage's exponential moving average instead of its last weights; `dtype`:
    fp32 as trained, or bf16 (half the size; a policy loading it computes in its own precision);
    `format`: policy, diffusers or native (see the module docstring)."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export dtype must be one of {sorted(EXPORT_DTYPES)}, not {dtype!r}")
    if format not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, not {format!r}")
    if format != "policy" and cfg.model.baseline is not None:
        raise ValueError(f"baseline {cfg.model.baseline.kind} has no video trunk to export in the {format} layout; "
                         f"export it as a policy")
    paths = RunPaths.of(cfg)
    stage = stage or cfg.stages[-1].name
    weights = paths.final_weights(stage)
    if ema:
        weights = weights.with_name("ema.safetensors")
        if not weights.exists():
            raise FileNotFoundError(f"stage '{stage}' kept no EMA ({weights} is missing); train it with "
                                    f"training.ema_decay > 0")
    if not weights.exists():
        raise FileNotFoundError(f"stage '{stage}' has no final weights at {weights}; train it first")
    out = Path(out or paths.export)
    out.mkdir(parents=True, exist_ok=True)
    if format != "policy":
        _save_trunk_release(cfg, weights, out, EXPORT_DTYPES[dtype], format)
    elif dtype == "fp32":
        shutil.copyfile(weights, out / "model.safetensors")
    else:
        _save_cast(weights, out / "model.safetensors", EXPORT_DTYPES[dtype])
    shutil.copyfile(paths.data / "stats.json", out / "stats.json")
    registry = EmbodimentRegistry.from_yaml(cfg.embodiments)
    (out / "embodiments.json").write_text(json.dumps(registry.to_dict(), indent=1))
    stats = json.loads((paths.data / "stats.json").read_text())
    (out / "config.json").write_text(json.dumps({"experiment": cfg.model_dump(mode="json"), "exported_stage": stage,
                                                 "weights": "ema" if ema else "last", "dtype": dtype, "format": format,
                                                 "stats_hash": stats_hash(stats)}, indent=1))
    (out / "README.md").write_text(model_card(cfg, paths, stage, format))
    return out


def _read_cast(source: Path, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict]:
    """Floating tensors cast one at a time as they are read, so only the cast copy is ever whole."""
    tensors = {}
    with safe_open(str(source), "pt") as f:
        metadata = f.metadata()
        for key in f.keys():
            tensor = f.get_tensor(key)
            tensors[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return tensors, metadata


def _save_cast(source: Path, target: Path, dtype: torch.dtype) -> None:
    tensors, metadata = _read_cast(source, dtype)
    save_file(tensors, str(target), metadata=metadata)


def _save_trunk_release(cfg: ExperimentConfig, source: Path, out: Path, dtype: torch.dtype, layout: str) -> None:
    from wamforge.model_zoo.trunks.release import write_release
    from wamforge.model_zoo.vae import latent_geometry

    tensors, metadata = _read_cast(source, dtype)
    trunk = {k.removeprefix("trunk."): tensors.pop(k) for k in [k for k in tensors if k.startswith("trunk.")]}
    m = cfg.model
    write_release(trunk, m.trunk, latent_geometry(m.vae)[0], m.text.dim, m.text.max_tokens, out / TRUNK_DIR, layout)
    save_file(tensors, str(out / WAM_PARTS), metadata=metadata)


def model_card(cfg: ExperimentConfig, paths: RunPaths, stage: str, format: str = "policy") -> str:
    from wamforge.model_zoo.build import design

    m = cfg.model
    manifest_path = paths.data / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"sources": {}}
    if m.baseline is not None:  # not a WAM: it predicts no future, so it has no 4-tuple
        about = [f"A `{m.baseline.kind}` baseline (not a World Action Model: it predicts no future) trained "
                 "with wamforge. Load it with `wamforge.load_policy(dir)`; `policy.act(observation, instruction)` "
                 "returns an action chunk in the embodiment's raw units.", "",
                 *([f"Recipe: `{m.recipe}`; chunk H = {m.regime.horizon}.", ""] if m.recipe else []), ""]
    else:
        substrate, backbone, coupling, regime = design(m)
        trunk = f"{m.trunk.kind} trunk" + (f" {m.trunk.size}" if m.trunk.size else
                                           f", {m.trunk.layers} blocks of dim {m.trunk.dim}")
        about = ["A World Action Model trained with wamforge. Load it with `wamforge.load_policy(dir)`; "
                 "`policy.act(observation, instruction)` returns an action chunk in the embodiment's raw units.", "",
                 "## Design: the survey's 4-tuple", "",
                 *([f"Recipe: `{m.recipe}`.", ""] if m.recipe else []),
                 f"- substrate: {substrate} (`{m.substrate.kind}`)",
                 f"- backbone: {backbone} (`{m.backbone.kind}`, {trunk})",
                 f"- coupling: {coupling} (`{m.coupling.kind}`)", f"- regime: {regime} (`{m.regime.kind}`, "
                 f"chunk H = {m.regime.horizon})", ""]
    lines = [f"# {cfg.name}", "", *about,
             "## Stages", "", "| stage | objective | steps | first loss | last loss |", "|---|---|---|---|---|"]
    for s in cfg.stages:
        metrics = paths.stage(s.name) / "metrics.jsonl"
        summ = stage_summary(metrics) if metrics.exists() else {}
        lines.append(f"| {s.name} | {s.objective} | {s.steps} | {summ.get('first_loss', float('nan')):.4f} | "
                     f"{summ.get('last_loss', float('nan')):.4f} |")
    lines += ["", "## Data", "", "| source | kind | embodiment | episodes | windows |", "|---|---|---|---|---|"]
    for name, s in manifest["sources"].items():
        lines.append(f"| {name} | {s['kind']} | {s['embodiment']} | {s['episodes']} | {s['samples']} |")
    if format != "policy":
        from wamforge.model_zoo.trunks.release import CLASS_NAMES

        native = {"wan": "the Wan repository's `WanModel`", "cosmos": "Cosmos-Predict2's `net.`"}[m.trunk.kind]
        lines += ["", "## Video trunk", "",
                  f"`{TRUNK_DIR}/` holds the video trunk as a release folder (`config.json` and safetensors), in "
                  + (f"diffusers' layout: `diffusers.{CLASS_NAMES[m.trunk.kind]}.from_pretrained(\"<this folder>/"
                     f"{TRUNK_DIR}\")` loads it." if format == "diffusers" else f"{native} layout.")
                  + f" The WAM's own parts (heads, streams, embodiment bank) are in `{WAM_PARTS}`."]
    lines += ["", f"Exported from stage `{stage}`. Evaluation, when run, is in `{paths.eval}/report.json`.", ""]
    return "\n".join(lines)
