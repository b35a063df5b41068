"""Embodiment registry: names, ids and action/proprio spaces from configs/embodiments.yaml."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml


@dataclass(frozen=True)
class Embodiment:
    name: str
    id: int
    action_dims: tuple[str, ...]
    action_units: tuple[str, ...]
    normalize: tuple[bool, ...]  # per action dim: False keeps raw units (e.g. a gripper)
    proprio_dims: tuple[str, ...]
    action_low: tuple[float, ...] | None
    action_high: tuple[float, ...] | None
    control_hz: float | None
    cameras: tuple[str, ...]

    @property
    def action_dim(self) -> int:
        return len(self.action_dims)

    @property
    def proprio_dim(self) -> int:
        return len(self.proprio_dims)


class EmbodimentRegistry:
    def __init__(self, embodiments: list[Embodiment]):
        self.by_name = {e.name: e for e in embodiments}
        self.by_id = [e for e in sorted(embodiments, key=lambda e: e.id)]

    @classmethod
    def from_yaml(cls, path: str | Path) -> "EmbodimentRegistry":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))

    @classmethod
    def from_dict(cls, spec: dict) -> "EmbodimentRegistry":
        out = []
        for idx, (name, body) in enumerate(spec.items()):
            action, proprio = body.get("action", {}), body.get("proprio", {})
            dims = tuple(action.get("dims", []))
            normalize = tuple(action.get("normalize", [True] * len(dims)))
            if len(normalize) != len(dims):
                raise ValueError(f"embodiment '{name}': action.normalize has {len(normalize)} entries "
                                 f"for {len(dims)} action dims")
            low, high = action.get("low"), action.get("high")
            out.append(Embodiment(
                name=name, id=idx, action_dims=dims, action_units=tuple(action.get("units", [])),
                normalize=normalize, proprio_dims=tuple(proprio.get("dims", [])),
                action_low=tuple(low) if low else None, action_high=tuple(high) if high else None,
                control_hz=body.get("control_hz"), cameras=tuple(body.get("cameras", []))))
        return cls(out)

    def to_dict(self) -> dict:
        return {e.name: {"id": e.id, "action": {"dims": list(e.action_dims), "units": list(e.action_units),
                                                "normalize": list(e.normalize),
                                                "low": list(e.action_low) if e.action_low else None,
                                                "high": list(e.action_high) if e.action_high else None},
                         "proprio": {"dims": list(e.proprio_dims)}, "control_hz": e.control_hz,
                         "cameras": list(e.cameras)} for e in self.by_id}

    def __getitem__(self, name: str) -> Embodiment:
        if name not in self.by_name:
            raise KeyError(f"unknown embodiment '{name}'; known: {sorted(self.by_name)}")
        return self.by_name[name]

    def __len__(self) -> int:
        return len(self.by_id)

    def normalize_mask(self, name: str, width: int) -> np.ndarray:
        mask = np.zeros(width, dtype=bool)
        e = self[name]
        mask[: e.action_dim] = e.normalize
        return mask
