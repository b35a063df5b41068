"""Positional schemes of non-video streams, in the rotary space of a Wan-style 3D RoPE.

Wan splits each head into time / height / width bands. A stream that is not a video grid uses the
time band only (height and width at position 0): `rope1d` at integer positions 0..n-1 (DreamZero's
action registers, Fast-WAM's action tokens), `fractional` at positions between the future frames'
time indices (LingBot-VA: actions interleaved in time with the frames they lead to), and `learned`
no rotation at all, an absolute embedding added to the tokens instead (UWM).
"""
from __future__ import annotations

from typing import Literal

import torch

PositionScheme = Literal["learned", "rope1d", "fractional"]


def time_band_rotary(rope, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [n] (float) -> (cos, sin) [n, head_dim / 2] for `rope` = a WanRotaryPosEmbed."""
    band_t, band_h, band_w = rope.bands
    freqs = rope.theta ** (-torch.arange(0, band_t, 2, device=positions.device, dtype=torch.float64) / band_t)
    angles = positions.to(torch.float64)[:, None] * freqs
    still = torch.zeros(len(positions), (band_h + band_w) // 2, device=positions.device, dtype=torch.float64)
    angles = torch.cat([angles, still], dim=1)
    return angles.cos().float(), angles.sin().float()


def stream_positions(scheme: PositionScheme, count: int, first_future: int, future_frames: int,
                     device) -> torch.Tensor | None:
    """Time positions of a stream of `count` tokens; None for `learned` (no rotation)."""
    if scheme == "learned":
        return None
    if scheme == "rope1d":
        return torch.arange(count, device=device, dtype=torch.float64)
    # fractional: token i sits at first_future - 1 + (i + 1) * future_frames / count, so the last
    # action lands on the last future frame and the chunk spans the frames it leads to
    steps = torch.arange(1, count + 1, device=device, dtype=torch.float64)
    return first_future - 1 + steps * future_frames / count
