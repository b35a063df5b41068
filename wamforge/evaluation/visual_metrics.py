"""PSNR and SSIM of a model's predicted frames against the real ones, frame by frame.

Frames come as numpy arrays or torch tensors, either channels-last video frames [T, H, W, 3]
(what the decoders return) or channels-first image batches [N, 3, H, W] (what models return):
channels-last when the last axis has 3 entries, channels-first otherwise. uint8 pixels are
divided by 255; float pixels are taken as already in [0, 1] (convert [-1, 1] model output first).
Both metrics are scored per frame in float64 and summarised by their mean over frames.

SSIM is Wang et al. 2004 as their ssim_index.m computes it: an 11x11 Gaussian window
(sigma 1.5), K1 = 0.01, K2 = 0.03, the window kept inside the image ('valid', no downsampling),
each colour channel scored alone, the map averaged over positions and channels. It is written
here rather than taken from a package so that the project gains no dependency for ~20 lines;
the tests check it against pytorch-msssim when that is installed.
LPIPS and FVD need pretrained networks and are not implemented here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


@dataclass(frozen=True)
class FrameScores:
    per_frame: list[float]  # one score per frame, in input order
    mean: float  # the summary; inf for PSNR when any frame is reproduced exactly


def _unit_nchw(frames) -> torch.Tensor:
    """[T, H, W, 3] or [N, 3, H, W], uint8 or float in [0, 1] -> float64 [N, 3, H, W] in [0, 1]."""
    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    if x.ndim != 4:
        raise ValueError(f"expected frames [T, H, W, 3] or [N, 3, H, W], got shape {tuple(x.shape)}")
    if x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    elif x.shape[1] != 3:
        raise ValueError(f"expected 3 colour channels first or last, got shape {tuple(x.shape)}")
    return x.double() / 255.0 if x.dtype == torch.uint8 else x.double()


def _pair(predicted, real) -> tuple[torch.Tensor, torch.Tensor]:
    p, r = _unit_nchw(predicted), _unit_nchw(real)
    if p.shape != r.shape:
        raise ValueError(f"predicted {tuple(p.shape)} and real {tuple(r.shape)} frames differ in shape")
    return p, r.to(p.device)


def _scores(values: torch.Tensor) -> FrameScores:
    per_frame = values.cpu().tolist()
    return FrameScores(per_frame=per_frame, mean=float(np.mean(per_frame)))


def psnr(predicted, real) -> FrameScores:
    """10 * log10(1 / MSE) per frame, in dB; a frame reproduced exactly scores inf (no cap, so
    a perfect frame is never confused with a merely good one)."""
    p, r = _pair(predicted, real)
    mse = (p - r).pow(2).mean(dim=(1, 2, 3))
    return _scores(10.0 * torch.log10(1.0 / mse))  # mse 0 -> inf


def _gaussian_window(device) -> torch.Tensor:
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, SSIM_WINDOW, SSIM_WINDOW)  # one per channel


def ssim(predicted, real) -> FrameScores:
    """Mean structural similarity per frame (1 for identical frames); frames need at least
    11 px a side, the window's size."""
    p, r = _pair(predicted, real)
    if min(p.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW} px a side, got {tuple(p.shape[-2:])}")
    window = _gaussian_window(p.device)

    def blur(x):
        return F.conv2d(x, window, groups=3)  # 'valid': windows lie wholly inside the frame

    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2  # the data range is 1
    mu_p, mu_r = blur(p), blur(r)
    var_p = blur(p * p) - mu_p ** 2
    var_r = blur(r * r) - mu_r ** 2
    cov = blur(p * r) - mu_p * mu_r
    ssim_map = ((2 * mu_p * mu_r + c1) * (2 * cov + c2)) / ((mu_p ** 2 + mu_r ** 2 + c1) * (var_p + var_r + c2))
    return _scores(ssim_map.mean(dim=(1, 2, 3)))


def frame_metrics(predicted, real) -> dict[str, FrameScores]:
    """Both metrics at once, keyed by name: what an evaluation report records."""
    return {"psnr": psnr(predicted, real), "ssim": ssim(predicted, real)}


