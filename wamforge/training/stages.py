"""Stage handoff: which weights a stage starts from (the previous stage's, a file, or for a first
stage the released trunk `model.trunk.init_from` names), renamed by the stage's key map, with a
report of what was loaded, what is new (kept at its fresh initialisation) and what was dropped."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from wamforge.config.paths import RunPaths
from wamforge.config.experiment import ExperimentConfig
from wamforge.config.stages import StageConfig
from wamforge.model_zoo.common.partitions import full_shape, whole


def init_path(stage: StageConfig, cfg: ExperimentConfig, paths: RunPaths) -> Path | None:
    if stage.init_from is None:
        return None
    if stage.init_from == "previous":
        index = [s.name for s in cfg.stages].index(stage.name)
        return paths.final_weights(cfg.stages[index - 1].name)
    return Path(stage.init_from)


@dataclass
class InitReport:
    source: Path | None = None
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    dropped: list[str] = field(default_factory=list)  # in the checkpoint, not in the model
    renamed: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"source": str(self.source) if self.source else None, "loaded": len(self.loaded),
                "new": self.new, "dropped": self.dropped, "renamed": self.renamed}

    def __str__(self) -> str:
        if self.source is None:
            return "initialised from scratch"
        text = f"loaded {len(self.loaded)} tensors from {self.source}"
        if self.renamed:
            text += f", {len(self.renamed)} renamed"
        if self.new:
            text += f"; {len(self.new)} new (fresh init): {_by_part(self.new)}"
        if self.dropped:
            text += f"; {len(self.dropped)} dropped: {_preview(self.dropped)}"
        return text


def rename_keys(keys, mapping: dict[str, str]) -> dict[str, str]:
    """{checkpoint key: model key} after applying each regex substitution in order."""
    out = {}
    for key in keys:
        new = key
        for pattern, replacement in mapping.items():
            new = re.sub(pattern, replacement, new)
        out[key] = new
    return out


def load_initial_weights(model: torch.nn.Module, stage: StageConfig, cfg: ExperimentConfig,
                         paths: RunPaths) -> InitReport:
    path = init_path(stage, cfg, paths)
    if path is None:
        return load_pretrained(model, cfg.model.trunk)
    if not path.exists():
        raise FileNotFoundError(f"stage '{stage.name}' starts from {path}, which does not exist; "
                                f"train the previous stage first or fix init_from")
    with safe_open(str(path), "pt") as file:  # read one tensor at a time: a 14B checkpoint is 56 GB
        names = rename_keys(file.keys(), stage.init_keys)
        shapes = {names[k]: tuple(file.get_slice(k).get_shape()) for k in file.keys()}
        targets = model.state_dict(keep_vars=True)  # the parameters themselves, partitioned or not
        report = InitReport(source=path, new=sorted(set(targets) - set(shapes)),
                            dropped=sorted(set(shapes) - set(targets)),
                            renamed={k: v for k, v in names.items() if k != v})
        mismatched = sorted(k for k in set(targets) & set(shapes) if full_shape(targets[k]) != shapes[k])
        if mismatched:
            k = mismatched[0]
            raise ValueError(f"weights in {path} do not fit stage '{stage.name}': {len(mismatched)} tensors have "
                             f"another shape, e.g. {k} is {shapes[k]} there and {full_shape(targets[k])} here")
        if stage.init_strict and (report.new or report.dropped):
            raise ValueError(f"weights in {path} do not fit stage '{stage.name}': model tensors missing from "
                             f"them {_preview(report.new)}, tensors the model lacks {_preview(report.dropped)}; "
                             f"map names with init_keys, or set init_strict: false to start the missing ones fresh")
        report.loaded = sorted(set(targets) & set(shapes))
        if not report.loaded:
            raise ValueError(f"no tensor in {path} matches a model tensor of stage '{stage.name}'; check init_keys")
        key_of = {model_key: key for key, model_key in names.items()}
        with torch.no_grad():
            for k in report.loaded:
                with whole([targets[k]]):
                    targets[k].copy_(file.get_tensor(key_of[k]))
    return report


def load_pretrained(model: torch.nn.Module, trunk_cfg) -> InitReport:
    """The released trunk a first stage starts from, if the config names one; everything outside the
    trunk is new."""
    from wamforge.model_zoo.trunks.pretrained import load_pretrained_trunk

    if getattr(trunk_cfg, "init_from", None) is None:
        return InitReport()
    loaded = load_pretrained_trunk(model.trunk, trunk_cfg.kind, trunk_cfg.init_from)
    names = model.state_dict(keep_vars=True)
    return InitReport(source=Path(trunk_cfg.init_from.path), loaded=[f"trunk.{n}" for n in loaded.loaded],
                      new=sorted(n for n in names if not n.startswith("trunk.")), dropped=loaded.dropped)


def _by_part(keys: list[str]) -> str:
    """Tensor names counted by the module they belong to: `action_expert (12), embodiments (4)`."""
    parts: dict[str, int] = {}
    for key in keys:
        part = key.split(".")[0]
        parts[part] = parts.get(part, 0) + 1
    return ", ".join(f"{part} ({count})" for part, count in parts.items())


def _preview(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "") if keys else "none"


def loss_weights_at(stage, step: int) -> dict[str, float]:
    """The stage's loss weights at `step`: fixed ones, overridden by any piecewise-linear schedule."""
    weights = dict(stage.loss_weights)
    for modality, points in stage.loss_weight_schedule.items():
        if step <= points[0].step:
            weights[modality] = points[0].weight
        elif step >= points[-1].step:
            weights[modality] = points[-1].weight
        else:
            right = next(i for i, p in enumerate(points) if p.step > step)
            a, b = points[right - 1], points[right]
            weights[modality] = a.weight + (b.weight - a.weight) * (step - a.step) / (b.step - a.step)
    return weights
