"""Where a run's outputs live: runs/<name>/{config.yaml, data/, <stage>/, export/, eval/}."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wamforge.config.experiment import ExperimentConfig


@dataclass(frozen=True)
class RunPaths:
    root: Path
    data: Path

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> "RunPaths":
        root = Path(cfg.run_dir) / cfg.name
        return cls(root=root, data=Path(cfg.data.out_dir) if cfg.data.out_dir else root / "data")

    def stage(self, name: str) -> Path:
        return self.root / name

    def checkpoints(self, stage: str) -> Path:
        return self.root / stage / "checkpoints"

    def final_weights(self, stage: str) -> Path:
        return self.root / stage / "final" / "model.safetensors"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def eval(self) -> Path:
        return self.root / "eval"
