"""Cutting long videos into clips and rejecting clips a video model should not see.

Cut detection compares colour histograms of consecutive frames (the content detector of shot
boundary tools, here on frames already decoded, so a video is decoded once). Filters name why a
clip is rejected: too short for a window, blank (almost no contrast), or static (almost no motion).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Rejected:
    """A clip an adapter turned down; the build quarantines it with its reason."""
    episode: str
    reason: str


def histogram_cuts(frames: np.ndarray, threshold: float = 0.5, bins: int = 16) -> list[int]:
    """Indices where a new shot starts: the L1 distance between consecutive frames' normalized
    per-channel histograms (0 identical .. 2 disjoint, averaged over channels) exceeds `threshold`."""
    if len(frames) < 2:
        return []
    small = frames[:, ::4, ::4].reshape(len(frames), -1, 3)
    hist = np.stack([np.stack([np.bincount(f[:, c] // (256 // bins), minlength=bins) for c in range(3)])
                     for f in small]).astype(np.float32)
    hist /= hist.sum(-1, keepdims=True)
    distance = np.abs(np.diff(hist, axis=0)).sum(-1).mean(-1)
    return [int(i) + 1 for i in np.flatnonzero(distance > threshold)]


def split_points(length: int, fps: float, clip_seconds: float | None, cuts: list[int]) -> list[tuple[int, int]]:
    """[start, end) frame ranges: split at every cut, then every clip_seconds within each shot."""
    bounds = [0, *sorted(c for c in cuts if 0 < c < length), length]
    step = max(1, round(clip_seconds * fps)) if clip_seconds else length
    return [(s, min(s + step, end)) for start, end in zip(bounds, bounds[1:]) for s in range(start, end, step)]


def reject_reason(frames: np.ndarray, min_frames: int, blank_std: float = 4.0, static_diff: float = 0.5) -> str | None:
    """Why a clip of uint8 [T, H, W, 3] frames is unusable, or None."""
    if len(frames) < min_frames:
        return f"too short: {len(frames)} frames, a window needs {min_frames}"
    grey = frames[:, ::2, ::2].astype(np.float32).mean(-1)
    if grey.std(axis=(1, 2)).mean() < blank_std:
        return f"blank: pixel std {grey.std(axis=(1, 2)).mean():.1f} < {blank_std}"
    motion = np.abs(np.diff(grey, axis=0)).mean()
    if motion < static_diff:
        return f"static: mean frame difference {motion:.2f} < {static_diff}"
    return None
