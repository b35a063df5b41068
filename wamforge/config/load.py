"""YAML loading, `--set a.b=c` overrides, and one-sentence validation errors."""
from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from wamforge.config.experiment import ExperimentConfig
from wamforge.config.recipes import lay_recipe


class ConfigError(ValueError):
    """A bad config: the message names the file, the key path and what to do."""


def load_config(path: str | Path, overrides: list[str] = (), baseline: str | None = None) -> ExperimentConfig:
    """An experiment YAML with `--set` overrides; `baseline` derives its baseline (config/baselines.py)."""
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
    if baseline:
        from wamforge.config.baselines import derive

        raw = derive(raw, baseline)
    return validate(raw, path)


def validate(raw: dict, source: str | Path = "<config>") -> ExperimentConfig:
    try:
        if isinstance(raw.get("model"), dict) and raw["model"].get("recipe"):
            raw = {**raw, "model": lay_recipe(raw["model"])}
        return ExperimentConfig.model_validate(raw)
    except ValueError as err:
        if not isinstance(err, ValidationError):  # an unknown recipe
            raise ConfigError(f"{source}: {err}.") from None
        return _explain(err, source)


def _explain(err: ValidationError, source) -> ExperimentConfig:
    """One sentence: the file, the key path, and what is wrong there."""
    first = err.errors()[0]
    loc = tuple(p for p in first["loc"] if not _is_union_tag(p))
    where = _dotted(loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        raise ConfigError(f"{source}: unknown key '{where}'{_nearest(tuple(first['loc']))}") from None
    raise ConfigError(f"{source}: invalid value at '{where}': {first['msg']}.") from None


def _is_union_tag(part) -> bool:
    """pydantic puts the chosen member's kind in the error path (model.coupling.joint_generation.x)."""
    return isinstance(part, str) and ("." in part or part in _union_tags())


def _union_tags() -> set[str]:
    from wamforge.evaluation import suites
    from wamforge.model_zoo import backbones, baselines, couplings, heads, regimes, substrates, trunks, vae

    return {k for registry in (backbones, baselines, couplings, heads, regimes, substrates, trunks, vae, suites)
            for k in registry.REGISTRY}


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
    annotation = None
    for part in loc[:-1]:
        if model is None:
            return "."
        if isinstance(part, str) and annotation is not None and _is_union_tag(part):
            model = _inner_model(annotation, kind=part)  # the union member the error is about
            continue
        if isinstance(part, int) or part not in model.model_fields:
            # list index or dict key: keep the same model for list items / dict values
            continue
        annotation = model.model_fields[part].annotation
        model = _inner_model(annotation)
    if model is None:
        return "."
    match = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys are {', '.join(model.model_fields)}."


def _inner_model(annotation, kind: str | None = None) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get("kind")
        return annotation if kind is None or (field is not None and field.default == kind) else None
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg, kind)
        if found is not None:
            return found
    return None
