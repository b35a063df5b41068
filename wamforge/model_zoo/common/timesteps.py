"""Flow-matching timestep samplers, one per modality (t = 1 is pure noise, t = 0 clean data).

uniform; logit_normal (SD3: sigmoid of a normal, weight on the middle); shifted (Wan: more steps
at high noise as `shift` grows); beta (GR00T / DreamZero: Beta(alpha, beta), favouring noisy
actions for alpha > beta). Video and action timesteps are drawn independently.
"""
from __future__ import annotations

import torch

from wamforge.config.schema import TimestepConfig


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
