"""Pixel-grounded substrates (§4.2.1): the future lives in the VAE's pixel-decodable latent space,
or is decoded all the way to pixels.

`pixel.latent` (UWM, PAD, Cosmos-Policy, DiT4DiT): the trunk predicts the future latents. A
post-prediction head reads the predicted clean future, x0 = x_t - t * v, patch by patch (DiT4DiT:
the action DiT reads the video DiT's prediction, not its intermediate features); a joint coupling
denoises the latents beside the actions.

`pixel.decoded` (Render-and-Decode, §3.1: UniPi, VLP, AVDC, DreamGen): the future is denoised fully
and the VAE decodes it to frames; the actor reads decoded pixels, here consecutive frames in pairs,
as UniPi's inverse-dynamics model does.
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


class PixelDecodedConfig(Strict):
    kind: Literal["pixel.decoded"] = "pixel.decoded"

    def check_experiment(self, cfg) -> None:
        data, horizon = cfg.data, cfg.model.regime.horizon
        if data.frame_stride != 1:
            raise ValueError("substrate pixel.decoded reads the action between consecutive decoded frames, one "
                             "control step apart: set data.frame_stride to 1")
        future = data.clip_frames - 1 - data.context_frames
        if horizon > future:
            raise ValueError(f"substrate pixel.decoded reads one pair of decoded frames per action, and a clip of "
                             f"{data.clip_frames} frames has {future} after the current one: lower "
                             f"model.regime.horizon {horizon} to {future} or less, or lengthen data.clip_frames")


class PixelDecoded:
    label = "Pixel (decoded)"
    reads_prediction = True  # the trunk runs to its output head: the future is rendered, never tapped
    # capability other procedures branch on: the actor reads frames the VAE decoded, not latents or features
    decodes_pixels = True
    noise = 0.0  # it always renders: the future is denoised to t = 0 before it is decoded

    def __init__(self, cfg: PixelDecodedConfig, trunk_layers: int):
        pass

    def taps(self, layerwise: bool) -> tuple[int, ...]:
        if layerwise:
            raise ValueError("a layerwise head reads trunk layers; with substrate pixel.decoded use head kind "
                             "inverse_dynamics, or substrate feature.tap")
        return ()

    def context_dim(self, trunk) -> int:
        return 3  # RGB channels of one decoded frame

    def context(self, frames: torch.Tensor, **_) -> torch.Tensor:
        """Frames [B, T, 3, H, W] in [-1, 1] -> consecutive pairs stacked on channels [B, T - 1, 6, H, W]:
        pair k is (frame k, frame k + 1), the transition action k makes."""
        return torch.cat([frames[:, :-1], frames[:, 1:]], dim=2)
