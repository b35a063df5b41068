"""`build_model`: the one place a World Action Model is built (trainer, policy, export and plan
all come here), and the checks that refuse a design no component builds, before launch."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from wamforge.model_zoo.wam import Geometry, WorldActionModel


def geometry(cfg) -> Geometry:
    """The sample geometry an experiment's data section gives its model."""
    return Geometry(clip_frames=cfg.data.clip_frames, resolution=tuple(cfg.data.resolution),
                    context_frames=cfg.data.context_frames)


def build_model(cfg, num_embodiments: int, partitioned: AbstractContextManager = nullcontext()) -> WorldActionModel:
    """The model an experiment config (its model and data sections) describes."""
    return WorldActionModel(cfg.model, geometry(cfg), num_embodiments, partitioned=partitioned)


def design(model_cfg) -> tuple[str, str, str, str]:
    """The survey's 4-tuple of a model config, in the census' spelling, without building anything."""
    from wamforge.model_zoo import backbones, couplings, regimes, substrates

    return (substrates.REGISTRY[model_cfg.substrate.kind].label, backbones.REGISTRY[model_cfg.backbone.kind].label,
            couplings.REGISTRY[model_cfg.coupling.kind].label, regimes.REGISTRY[model_cfg.regime.kind].label)
