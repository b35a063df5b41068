"""Stage handoff: which weights a stage starts from, with a report of what was loaded."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from wamforge.config.paths import RunPaths
from wamforge.config.schema import ExperimentConfig, StageConfig


def init_path(stage: StageConfig, cfg: ExperimentConfig, paths: RunPaths) -> Path | None:
    if stage.init_from is None:
        return None
    if stage.init_from == "previous":
        index = [s.name for s in cfg.stages].index(stage.name)
        return paths.final_weights(cfg.stages[index - 1].name)
    return Path(stage.init_from)


def load_initial_weights(model: torch.nn.Module, stage: StageConfig, cfg: ExperimentConfig,
                         paths: RunPaths) -> str:
    path = init_path(stage, cfg, paths)
    if path is None:
        return "initialised from scratch"
    if not path.exists():
        raise FileNotFoundError(f"stage '{stage.name}' starts from {path}, which does not exist; "
                                f"train the previous stage first or fix init_from")
    state = load_file(str(path))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        raise ValueError(f"weights in {path} do not fit stage '{stage.name}': missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape-mismatched {mismatched[:5]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return f"loaded {len(state)} tensors from {path}"


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
