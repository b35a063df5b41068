"""YAML loading, `--set a.b=c` overrides, and one-sentence validation errors."""
from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from wamforge.config.schema import ExperimentConfig


class ConfigError(ValueError):
    """A bad config: the message names the file, the key path and what to do."""


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err.__class__.__name__}: {err}).") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys.")
    for item in overrides:
        apply_override(raw, item, path)
    return validate(raw, path)


def validate(raw: dict, source: str | Path = "<config>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(first["loc"])
        where = _dotted(loc) or "(top level)"
        if first["type"] == "extra_forbidden":
            hint = _nearest(loc)
            raise ConfigError(f"{source}: unknown key '{where}'{hint}") from None
        raise ConfigError(f"{source}: invalid value at '{where}': {first['msg']}.") from None


def apply_override(raw: dict, item: str, source: Path | str = "--set") -> None:
    """`a.b.0.c=value`: the value is parsed as YAML, so numbers, lists and nulls work."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.world_size=1.")
    key, value = item.split("=", 1)
    node: Any = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    parsed = yaml.safe_load(value)
    if isinstance(node, list):
        node[int(last)] = parsed
    else:
        node[last] = parsed


def config_hash(cfg: BaseModel) -> str:
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def _nearest(loc: tuple) -> str:
    """Suggest the closest valid field name for a misspelt key."""
    model: type[BaseModel] | None = ExperimentConfig
    for part in loc[:-1]:
        if model is None:
            return "."
        if isinstance(part, int) or part not in model.model_fields:
            # list index or dict key: keep the same model for list items / dict values
            continue
        model = _inner_model(model.model_fields[part].annotation)
    if model is None:
        return "."
    match = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys are {', '.join(model.model_fields)}."


def _inner_model(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None
