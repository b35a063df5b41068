"""The Wan2.1 causal video VAE as a component: its config, and the frozen module it builds."""
from __future__ import annotations

import hashlib
from typing import Literal

import torch
from pydantic import Field, model_validator

from wamforge.config.base import Strict


class WanVAEConfig(Strict):
    kind: Literal["wan2.1"] = "wan2.1"
    # the official Wan2.1_VAE.pth converted to safetensors, or a diffusers vae/ folder; without it
    # the VAE starts random (tests, sizing)
    path: str | None = None
    base_dim: int = Field(96, ge=1)
    z_dim: int = Field(16, ge=1)
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = Field(2, ge=1)
    # one flag per downsampling level (len(dim_mult) - 1); default: the last two halve time, as Wan's
    # (False, True, True), so 1 + 4k frames make 1 + k latents
    temporal_downsample: tuple[bool, ...] | None = None

    @model_validator(mode="after")
    def _two_temporal_halvings(self):
        levels = len(self.dim_mult) - 1
        if self.temporal_downsample is None:
            if levels < 2:
                raise ValueError("vae.dim_mult needs at least 3 levels: two of them halve time (stride 4)")
            self.temporal_downsample = (False,) * (levels - 2) + (True, True)
        if len(self.temporal_downsample) != levels or sum(self.temporal_downsample) != 2:
            raise ValueError(f"vae.temporal_downsample needs {levels} flags, two of them true (temporal stride 4)")
        return self


def build_wan_vae(cfg: WanVAEConfig):
    """Frozen: a WAM trains on its latents, never the VAE itself."""
    from wamforge.model_zoo.vae.wan.model import WanVAE
    from wamforge.model_zoo.vae.wan.weights import load_wan_vae

    # without weights to load the VAE is random, and the same in every process (the build's cache
    # actors, every rank): its cache id, which names only its config, must name its latents
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = WanVAE(cfg.base_dim, cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks, cfg.temporal_downsample)
    if cfg.path:
        load_wan_vae(vae, cfg.path)
    vae.cache_id = wan_cache_id(cfg)
    return vae.requires_grad_(False)


def wan_cache_id(cfg: WanVAEConfig) -> str:
    """Latents are keyed by encoder@version: other weights or shapes are another encoder."""
    spec = f"{cfg.path}|{cfg.base_dim}|{cfg.z_dim}|{cfg.dim_mult}|{cfg.num_res_blocks}|{cfg.temporal_downsample}"
    return f"wan2.1-{hashlib.sha256(spec.encode()).hexdigest()[:8]}@1"
