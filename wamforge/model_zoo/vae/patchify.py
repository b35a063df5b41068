"""A parameter-free stand-in for the Wan video VAE with the same latent geometry.

Wan's VAE is causal in time: frame 0 is encoded alone and every later group of `temporal`
frames becomes one latent frame, so T = 1 + 4k frames give 1 + k latents. Here the groups are
averaged and space is folded into channels with pixel_unshuffle, which keeps the shapes and the
causality of the real thing at zero cost.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from wamforge.config.base import Strict


class PatchifyVAEConfig(Strict):
    kind: Literal["patchify"] = "patchify"
    spatial: int = 4
    temporal: int = 4


class PatchifyVAE(nn.Module):
    @classmethod
    def from_config(cls, cfg: PatchifyVAEConfig) -> "PatchifyVAE":
        return cls(cfg.spatial, cfg.temporal)

    def __init__(self, spatial: int = 4, temporal: int = 4):
        super().__init__()
        self.spatial_stride = spatial
        self.temporal_stride = temporal
        self.latent_channels = 3 * spatial * spatial

    @property
    def cache_id(self) -> str:
        """encoder@version: names the latents this VAE writes to a shard cache (bump on any change)."""
        return f"patchify-s{self.spatial_stride}t{self.temporal_stride}@1"

    def latent_frames(self, frames: int) -> int:
        if (frames - 1) % self.temporal_stride:
            raise ValueError(f"the VAE needs 1 + {self.temporal_stride}k frames, got {frames}")
        return 1 + (frames - 1) // self.temporal_stride

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] in [-1, 1] -> [B, C, 1 + (T - 1) / temporal, H / spatial, W / spatial]."""
        batch, frames = video.shape[:2]
        self.latent_frames(frames)  # validates T
        groups = video[:, 1:].unflatten(1, (-1, self.temporal_stride)).mean(dim=2)
        video = torch.cat([video[:, :1], groups], dim=1)
        latents = F.pixel_unshuffle(video.flatten(0, 1), self.spatial_stride)
        return latents.unflatten(0, (batch, -1)).transpose(1, 2)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of `encode` up to the temporal averaging: each latent frame is repeated."""
        batch = latents.shape[0]
        frames = F.pixel_shuffle(latents.transpose(1, 2).flatten(0, 1), self.spatial_stride)
        frames = frames.unflatten(0, (batch, -1))
        later = frames[:, 1:].repeat_interleave(self.temporal_stride, dim=1)
        return torch.cat([frames[:, :1], later], dim=1)
