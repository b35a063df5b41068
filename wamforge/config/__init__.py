"""The experiment config: typed sections (data, model, stages, training, evaluation), YAML loading,
`--set` overrides, recipes. Loaded lazily, so that components importing `config.base` for their own
config do not pull in the whole experiment schema (which imports those components)."""
from __future__ import annotations

_EXPORTS = {
    "DataConfig": "wamforge.config.data", "SourceConfig": "wamforge.config.data",
    "ExperimentConfig": "wamforge.config.experiment", "StageConfig": "wamforge.config.stages",
    "ConfigError": "wamforge.config.load", "apply_override": "wamforge.config.load",
    "config_hash": "wamforge.config.load", "load_config": "wamforge.config.load", "validate": "wamforge.config.load",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = sorted(_EXPORTS)
