"""Flow-matching timestep samplers, one per modality (t = 1 is pure noise, t = 0 clean data).

uniform; logit_normal (SD3: sigmoid of a normal, weight on the middle); shifted (Wan: more steps
at high noise as `shift` grows); beta (GR00T / DreamZero: Beta(alpha, beta), favouring noisy
actions for alpha > beta). Video and action timesteps are drawn independently.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from wamforge.config.base import Strict


class TimestepConfig(Strict):
    kind: Literal["uniform", "logit_normal", "shifted", "beta"] = "uniform"
    mean: float = 0.0  # logit_normal
    std: float = Field(1.0, gt=0)  # logit_normal
    shift: float = Field(1.0, gt=0)  # shifted
    alpha: float = Field(1.5, gt=0)  # beta
    beta: float = Field(1.0, gt=0)  # beta


def sample_timesteps(cfg: TimestepConfig, batch: int, device) -> torch.Tensor:
    if cfg.kind == "uniform":
        return torch.rand(batch, device=device)
    if cfg.kind == "logit_normal":
        return torch.sigmoid(cfg.mean + cfg.std * torch.randn(batch, device=device))
    if cfg.kind == "shifted":
        u = torch.rand(batch, device=device)
        return cfg.shift * u / (1 + (cfg.shift - 1) * u)
    # beta: drawn on CPU (torch's Beta sampler has no kernel on some devices), then moved
    draw = torch.distributions.Beta(torch.tensor(cfg.alpha), torch.tensor(cfg.beta)).sample((batch,))
    return draw.clamp(1e-4, 1 - 1e-4).to(device)


def shifted_schedule(steps: int, shift: float = 1.0, end: float = 0.0) -> list[float]:
    """steps + 1 flow times from 1 down to `end` for Euler integration, spaced as the `shifted`
    sampler spaces training times (more of them at high noise as shift grows). `end` > 0 stops
    part-way: a partially denoised future, as mimic-video's tau_v."""
    u_end = end / (shift - (shift - 1) * end)  # the shift's inverse, so the last time is exactly `end`
    times = []
    for i in range(steps + 1):
        u = 1 - (1 - u_end) * i / steps
        times.append(shift * u / (1 + (shift - 1) * u))
    return times
