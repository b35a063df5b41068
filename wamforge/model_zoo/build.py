"""`build_model`: the one place a World Action Model is built (trainer, policy, export and plan
all come here), and the checks that refuse a design no component builds, before launch. With
`model.baseline` set it builds that baseline (model_zoo/baselines/) instead, which is not a WAM."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from torch import nn

from wamforge.model_zoo.census import BaselineDesign, Design
from wamforge.model_zoo.wam import Geometry, WorldActionModel


def geometry(cfg) -> Geometry:
    """The sample geometry an experiment's data section gives its model."""
    return Geometry(clip_frames=cfg.data.clip_frames, resolution=tuple(cfg.data.resolution),
                    context_frames=cfg.data.context_frames)


def build_model(cfg, num_embodiments: int, partitioned: AbstractContextManager = nullcontext()) -> nn.Module:
    """The model an experiment config (its model and data sections) describes: a WorldActionModel, or
    the baseline `model.baseline` names, after it refuses what of the experiment it cannot serve."""
    if cfg.model.baseline is not None:
        from wamforge.model_zoo.baselines import REGISTRY

        baseline = REGISTRY[cfg.model.baseline.kind]
        baseline.check_experiment(cfg)
        return baseline(cfg.model, geometry(cfg), num_embodiments, partitioned=partitioned)
    return WorldActionModel(cfg.model, geometry(cfg), num_embodiments, partitioned=partitioned)


def design(model_cfg) -> Design | BaselineDesign:
    """The survey's 4-tuple of a model config, in the census' spelling, without building anything; a
    baseline's `BaselineDesign` (its name: it has no 4-tuple) when `model.baseline` is set."""
    if model_cfg.baseline is not None:
        from wamforge.model_zoo.baselines import REGISTRY

        return BaselineDesign(REGISTRY[model_cfg.baseline.kind].label)
    from wamforge.model_zoo import backbones, couplings, regimes, substrates

    return (substrates.REGISTRY[model_cfg.substrate.kind].label, backbones.REGISTRY[model_cfg.backbone.kind].label,
            couplings.REGISTRY[model_cfg.coupling.kind].label, regimes.REGISTRY[model_cfg.regime.kind].label)
