"""Iterative-denoising backbones (survey §4.4.1): rectified flow in Wan's convention.

    x_t = (1 - t) * x0 + t * noise,   velocity target v = noise - x0,   t in [0, 1] (1 = noise).

The procedure is the backbone; the network it runs is the trunk. Each stream draws its training
time from its own sampler (stage `timesteps`; default: video shifted by `flow_shift`, actions
uniform); `timesteps: shared` gives every denoised stream of a sample one time (PAD, Cosmos-Policy),
`independent` one per stream (UWM, Fast-WAM, Motus). Inference integrates with Euler steps over the
shifted schedule.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from wamforge.config.base import Strict
from wamforge.model_zoo.common.timesteps import TimestepConfig, sample_timesteps, shifted_schedule


class DiffusionConfig(Strict):
    kind: Literal["diffusion"] = "diffusion"
    flow_shift: float = Field(1.0, gt=0, description="shift of the video's training sampler and inference schedule")
    timesteps: Literal["shared", "independent"] = "shared"


class FlowMatching:
    label = "Diffusion"

    def __init__(self, cfg: DiffusionConfig):
        self.flow_shift, self.shared = cfg.flow_shift, cfg.timesteps == "shared"

    def sample_time(self, stream: str, batch: int, device, timesteps: dict | None = None) -> torch.Tensor:
        """Training flow times [B] of one stream, from the stage's sampler for it or the default."""
        default = TimestepConfig(kind="shifted", shift=self.flow_shift) if stream == "video" else TimestepConfig()
        return sample_timesteps((timesteps or {}).get(stream, default), batch, device)

    @staticmethod
    def noised(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t for t broadcastable to x0."""
        return ((1 - t) * x0 + t * noise).to(x0.dtype)

    @staticmethod
    def target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def schedule(self, steps: int, end: float = 0.0, shift: float | None = None) -> list[float]:
        """steps + 1 times from 1 down to `end` (video streams use the backbone's shift)."""
        return shifted_schedule(steps, self.flow_shift if shift is None else shift, end)

    @staticmethod
    def euler(x: torch.Tensor, velocity: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
        return x - (t - t_next) * velocity.to(x.dtype)
