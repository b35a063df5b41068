"""The noise predictor of Diffusion Policy (Chi et al., RSS 2023): a 1-D U-Net over the action chunk
that convolves along time, FiLM-conditioned on the observation and the diffusion step.

Why a temporal U-Net: neighbouring actions of a chunk are strongly correlated, and convolutions along
time give the prediction that smoothness for free. Why FiLM: the observation is a vector, not a
sequence, and a per-channel scale and shift from it in every residual block lets it steer every
resolution of the chunk (Chi et al.'s ConditionalUnet1D; GroupNorm and Mish throughout).
"""
from __future__ import annotations

import torch
from torch import nn

from wamforge.model_zoo.common.layers import sinusoidal_embedding


class Conv1dBlock(nn.Sequential):
    """Conv1d along time (length kept) -> GroupNorm -> Mish."""

    def __init__(self, channels_in: int, channels_out: int, kernel_size: int, groups: int):
        super().__init__(nn.Conv1d(channels_in, channels_out, kernel_size, padding=kernel_size // 2),
                         nn.GroupNorm(groups, channels_out), nn.Mish())


class FiLMResidualBlock(nn.Module):
    """Two conv blocks; between them the condition scales and shifts every channel (FiLM)."""

    def __init__(self, channels_in: int, channels_out: int, cond_dim: int, kernel_size: int, groups: int):
        super().__init__()
        self.conv_in = Conv1dBlock(channels_in, channels_out, kernel_size, groups)
        self.conv_out = Conv1dBlock(channels_out, channels_out, kernel_size, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * channels_out))
        self.skip = nn.Identity() if channels_in == channels_out else nn.Conv1d(channels_in, channels_out, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x [B, C_in, T], cond [B, cond_dim] -> [B, C_out, T]."""
        scale, shift = self.film(cond)[..., None].chunk(2, dim=1)
        return self.conv_out(scale * self.conv_in(x) + shift) + self.skip(x)


class StepEmbedding(nn.Module):
    """Diffusion step [B] -> [B, dim]: sinusoidal features through Linear -> Mish -> Linear."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))

    def forward(self, step: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(step, self.dim).to(self.mlp[0].weight.dtype))


class ConditionalUnet1D(nn.Module):
    """[B, width, T] -> [B, down_dims[0], T]. Each level: two FiLM residual blocks, then a strided conv
    that halves T (not after the last level); the middle: two more blocks; each way up: concatenate
    the skip of that level, two blocks, then a transposed conv that doubles T. As in Chi et al., the
    first level's skip is not read, and T must divide by 2 ** (levels - 1)."""

    def __init__(self, width: int, down_dims: tuple[int, ...], cond_dim: int, kernel_size: int, groups: int,
                 step_dim: int):
        super().__init__()
        self.step_embedding = StepEmbedding(step_dim)
        cond = step_dim + cond_dim

        def pair(channels_in: int, channels_out: int) -> nn.ModuleList:
            return nn.ModuleList([FiLMResidualBlock(channels_in, channels_out, cond, kernel_size, groups),
                                  FiLMResidualBlock(channels_out, channels_out, cond, kernel_size, groups)])

        levels = list(zip((width, *down_dims[:-1]), down_dims))
        self.down = nn.ModuleList(pair(c_in, c_out) for c_in, c_out in levels)
        self.downsample = nn.ModuleList(nn.Conv1d(c, c, 3, stride=2, padding=1) for c in down_dims[:-1])
        self.mid = pair(down_dims[-1], down_dims[-1])
        self.up = nn.ModuleList(pair(2 * c_out, c_in) for c_in, c_out in reversed(levels[1:]))
        self.upsample = nn.ModuleList(nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1)
                                      for c_in, _ in reversed(levels[1:]))
        self.final = Conv1dBlock(down_dims[0], down_dims[0], kernel_size, groups)

    def forward(self, x: torch.Tensor, step: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x [B, width, T], step [B] (DDPM's integer steps), cond [B, cond_dim] -> [B, down_dims[0], T]."""
        cond = torch.cat([self.step_embedding(step), cond.to(x.dtype)], dim=-1)
        skips = []
        for level, (first, second) in enumerate(self.down):
            x = second(first(x, cond), cond)
            skips.append(x)
            if level < len(self.downsample):
                x = self.downsample[level](x)
        for block in self.mid:
            x = block(x, cond)
        for (first, second), upsample, skip in zip(self.up, self.upsample, reversed(skips[1:])):
            x = upsample(second(first(torch.cat([x, skip], dim=1), cond), cond))
        return self.final(x)
