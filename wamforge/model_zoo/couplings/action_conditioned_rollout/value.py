"""The value head of the action-conditioned rollout (survey §4.3.1): it reads a predicted future as the
substrate gives it and says how much progress toward success it shows, the score best-of-N and
model-predictive planners rank candidate chunks by (Cosmos-Policy's value, DreamAvoid's progress value).

Its target is `couplings/value.py::discounted_return`, in [-1, 1], so the head ends in tanh. The input
is the future latents [B, C, F, h, w] (`pixel.latent`) or the decoded future pixels [B, 3, T, H, W]
(`pixel.decoded`): patches embedded by one strided convolution, averaged over space and time, then an MLP.
"""
from __future__ import annotations

import torch
from torch import nn


class ValueHead(nn.Module):
    def __init__(self, in_channels: int, patch: tuple[int, int, int], dim: int):
        super().__init__()
        self.patches = nn.Conv3d(in_channels, dim, kernel_size=patch, stride=patch)
        self.mlp = nn.Sequential(nn.SiLU(), nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))

    def forward(self, future: torch.Tensor) -> torch.Tensor:
        """future [B, C, F, H, W] -> value in [-1, 1] [B]."""
        tokens = self.patches(future.to(self.patches.weight.dtype)).flatten(2).mean(dim=2)
        return torch.tanh(self.mlp(tokens)[:, 0].float())
