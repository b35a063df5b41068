"""An inverse-dynamics model over decoded frames: the action head of Render-and-Decode (survey §3.1,
§4.3.3; UniPi, VLP), which read a rendered video plan and map each pair of consecutive frames to
the action between them.

A small conv encoder reads one pair (stacked on channels, pixels in [-1, 1]) and returns one action
feature; the embodiment bank's output projection turns it into that embodiment's action, so several
embodiments share the encoder. It is a deterministic regressor, trained with MSE on real action
entries, as UniPi's IDM is. The pair is the canvas the VAE sees, V views tiled along width: the
encoder pools to a fixed grid of cells rather than to one vector, so where on the canvas a motion
happens, and so in which view, survives into the feature.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from wamforge.config.base import Strict


class InverseDynamicsConfig(Strict):
    kind: Literal["inverse_dynamics"] = "inverse_dynamics"
    dim: int = Field(64, ge=1, description="width of the action feature the embodiment bank projects")
    channels: tuple[int, ...] = Field((16, 32, 64), min_length=1,
                                      description="conv widths, each stage halving the resolution")
    grid: tuple[int, int] = Field((4, 4), description="rows x columns of the tiled canvas pooled apart")


class InverseDynamics(nn.Module):
    def __init__(self, cfg: InverseDynamicsConfig, context_dim: int, horizon: int):
        """context_dim: channels of one frame (two frames are read at once). horizon is not needed:
        the same model reads every step's pair, one action each."""
        super().__init__()
        stages, width = [], 2 * context_dim
        for out in cfg.channels:
            stages += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.GroupNorm(math.gcd(8, out), out), nn.SiLU()]
            width = out
        self.encoder = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(cfg.grid), nn.Flatten())
        self.project = nn.Sequential(nn.Linear(width * math.prod(cfg.grid), cfg.dim), nn.SiLU(),
                                     nn.Linear(cfg.dim, cfg.dim))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """Consecutive frame pairs [B, N, 2 * C, H, W] -> one action feature per pair [B, N, dim]."""
        weight = self.project[0].weight
        features = self.encoder(pairs.flatten(0, 1).to(weight.dtype))
        return self.project(features).unflatten(0, pairs.shape[:2])
