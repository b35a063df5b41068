"""The episode, shard-sample and batch contracts that every room agrees on."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

import numpy as np
import torch

SCHEMA_VERSION = 2  # 2: windows have a current frame; action rows start there
KINDS = ("internet", "egocentric", "teleop", "sim", "synthetic")


@dataclass
class Episode:
    """One recorded episode as a source adapter yields it, before windowing."""
    source: str
    episode: str
    kind: str
    embodiment: str
    frames: np.ndarray  # uint8 [N, V, H, W, 3]
    fps: float
    views: list[str]
    language: str = ""
    actions: np.ndarray | None = None  # float32 [N, A], raw units, one per frame
    proprio: np.ndarray | None = None  # float32 [N, P]
    action_space: str = ""
    extra: dict = field(default_factory=dict)  # e.g. {"success": True, "task": "reach-v3"}

    def validate(self) -> None:
        """Raise ValueError with one sentence naming what is wrong."""
        f = self.frames
        if len(f) == 0:
            raise ValueError("the episode is empty (0 frames)")
        if f.ndim != 5 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [N, V, H, W, 3], got {f.dtype} {tuple(f.shape)}")
        if f.shape[1] != len(self.views):
            raise ValueError(f"frames have {f.shape[1]} views but the episode names {len(self.views)}")
        for name in ("actions", "proprio"):
            arr = getattr(self, name)
            if arr is None:
                continue
            if arr.ndim != 2 or len(arr) != len(f):
                raise ValueError(f"{name} must be [N, D] with N = {len(f)} frames, got {tuple(arr.shape)}")
            if not np.isfinite(arr).all():
                raise ValueError(f"{name} contain NaN or infinite values")


def sample_key(source: str, episode: str, start: int) -> str:
    """`<source>/<episode>/<start>`, sanitized: no traversal, no absolute paths, no dots in names."""
    def clean(part: str) -> str:
        part = re.sub(r"[^A-Za-z0-9_\-]+", "_", part).strip("_")
        if not part:
            raise ValueError("an empty name cannot form a sample key")
        return part
    return f"{clean(source)}/{clean(episode)}/{start:06d}"


@dataclass
class Batch:
    """What the model sees: padded to fixed maxima, with masks saying what is real."""
    video: torch.Tensor | None  # uint8 [B, T, V, 3, H, W] (or float in [-1, 1]); None when latents are served
    latents: torch.Tensor | None  # float [B, C, F, h, w] from the shard's latent cache, else None
    video_pad: torch.Tensor  # bool [B, T]: context frames before the episode's start (copies of its first)
    actions: torch.Tensor  # float [B, H, A_max], normalized, from the current frame on
    action_mask: torch.Tensor  # bool [B, H, A_max]; all-false rows are padding past the episode's end
    has_actions: torch.Tensor  # bool [B]
    proprio: torch.Tensor  # float [B, P_max], normalized, at the current frame
    proprio_mask: torch.Tensor  # bool [B, P_max]
    embodiment_id: torch.Tensor  # long [B]
    source_id: torch.Tensor  # long [B]
    text: list[str]
    keys: list[str]
    # what a value target needs (couplings/value.py): control steps from the current frame to the episode's
    # last, and whether the episode succeeded (1, 0; NaN: unknown, e.g. internet video)
    steps_to_go: torch.Tensor | None = None  # long [B]
    success: torch.Tensor | None = None  # float [B]

    def to(self, device, dtype: torch.dtype | None = None) -> "Batch":
        return self._map(lambda t: t.to(device, dtype if dtype is not None and t.is_floating_point() else None,
                                        non_blocking=True))

    def pin_memory(self) -> "Batch":
        """In page-locked host memory, so a copy to the GPU runs asynchronously (the DataLoader's pin
        thread calls this)."""
        return self._map(torch.Tensor.pin_memory)

    def tensors(self) -> list[torch.Tensor]:
        return [v for v in (getattr(self, f.name) for f in fields(self)) if isinstance(v, torch.Tensor)]

    def _map(self, fn) -> "Batch":
        return Batch(**{f.name: fn(v) if isinstance(v, torch.Tensor) else v
                        for f in fields(self) for v in [getattr(self, f.name)]})

    def __len__(self) -> int:
        return len(self.keys)
