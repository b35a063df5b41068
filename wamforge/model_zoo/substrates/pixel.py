"""Pixel-grounded substrates (§4.2): the future lives in the VAE's pixel-decodable latent space.

`pixel.latent` (UWM, PAD, Cosmos-Policy, DiT4DiT): the trunk predicts the future latents. A
post-prediction head reads the predicted clean future, x0 = x_t - t * v, patch by patch (DiT4DiT:
the action DiT reads the video DiT's prediction, not its intermediate features); a joint coupling
denoises the latents beside the actions.
"""
from __future__ import annotations

from typing import Literal

import torch

from wamforge.config.base import Strict


class PixelLatentConfig(Strict):
    kind: Literal["pixel.latent"] = "pixel.latent"


class PixelLatent:
    label = "Pixel (latent)"
    reads_prediction = True  # the trunk runs to its output head, also for the action objective
    noise = 1.0  # with no render, the head reads the one-step prediction from pure noise

    def __init__(self, cfg: PixelLatentConfig, trunk_layers: int):
        pass

    def taps(self, layerwise: bool) -> tuple[int, ...]:
        if layerwise:
            raise ValueError("a layerwise head reads trunk layers; with substrate pixel.latent use head "
                             "kind cross_attention, or substrate feature.tap")
        return ()

    def context_dim(self, trunk) -> int:
        p_t, p_h, p_w = trunk.patch_size
        return trunk.out_channels * p_t * p_h * p_w

    def context(self, x_t: torch.Tensor, velocity: torch.Tensor, frame_t: torch.Tensor, clean: int,
                patch: tuple[int, int, int], **_) -> torch.Tensor:
        """The predicted clean future latents [B, C, F, H, W] as patch tokens [B, L, C * prod(patch)]."""
        t = frame_t[:, None, :, None, None].to(velocity.dtype)
        future = (x_t - t * velocity)[:, :, clean:]
        p_t, p_h, p_w = patch
        b, c, f, h, w = future.shape
        patches = future.reshape(b, c, f // p_t, p_t, h // p_h, p_h, w // p_w, p_w)
        return patches.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, c * p_t * p_h * p_w)
