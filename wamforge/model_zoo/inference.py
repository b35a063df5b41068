"""The inference controller's knobs: per-stream denoising steps, render or skip the future, and
classifier-free guidance. `policy.act` takes them, `wamforge eval --set eval.<knob>=...` sets them,
and the evaluation report records them."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Inference:
    action_steps: int = 8  # Euler steps of the action stream
    video_steps: int = 8  # Euler steps of the video stream, whenever the future is denoised
    render_future: bool = False  # denoise the future to t = 0 before acting (else: skip it where the design allows)
    guidance: float = 1.0  # classifier-free guidance on the caption (1: none); needs condition dropout in training

    def as_dict(self) -> dict:
        return asdict(self)


def stream_steps(steps: dict[str, int]) -> list[dict[str, tuple[int, int]]]:
    """Joint denoising with a step count per stream: over max(steps) iterations, each stream moves
    from schedule index k to k' only on the iterations where its own grid advances, so a stream
    with fewer steps holds its time in between. Returns, per iteration, {stream: (k, k')}."""
    total = max(steps.values())
    return [{s: (i * n // total, (i + 1) * n // total) for s, n in steps.items()} for i in range(total)]


def guided(velocity, guidance: float, cond, uncond):
    """v_uncond + g (v_cond - v_uncond) for a velocity or a tuple of them (one per stream); one call
    when guidance is off."""
    if guidance == 1.0:
        return velocity(cond)
    v_cond, v_uncond = velocity(cond), velocity(uncond)
    if isinstance(v_cond, tuple):
        return tuple(u + guidance * (c - u) for c, u in zip(v_cond, v_uncond))
    return v_uncond + guidance * (v_cond - v_uncond)
