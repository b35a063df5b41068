"""Video VAEs, registered by `kind`: `patchify` (parameter-free, the Wan VAE's latent geometry) and
`wan2.1` (the real causal Wan2.1 VAE). Both map [B, T, 3, H, W] in [-1, 1] to latents [B, C, F, h, w]."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from wamforge.model_zoo.vae.patchify import PatchifyVAE, PatchifyVAEConfig
from wamforge.model_zoo.vae.wan import WanVAEConfig, build_wan_vae, wan_cache_id

VAEConfig = Annotated[Union[PatchifyVAEConfig, WanVAEConfig], Field(discriminator="kind")]
REGISTRY = {"patchify": PatchifyVAE.from_config, "wan2.1": build_wan_vae}

__all__ = ["PatchifyVAE", "PatchifyVAEConfig", "REGISTRY", "VAEConfig", "WanVAEConfig", "cache_id", "encode_views", "latent_geometry", "make_vae"]


def make_vae(cfg):
    """The video VAE a model config's `vae` block names."""
    return REGISTRY[cfg.kind](cfg)


def cache_id(cfg) -> str:
    """encoder@version: names the latents this VAE writes to a shard cache, without building it."""
    if cfg.kind == "patchify":
        return f"patchify-s{cfg.spatial}t{cfg.temporal}@1"
    return wan_cache_id(cfg)


def latent_geometry(cfg) -> tuple[int, int, int]:
    """(latent channels, temporal stride, spatial stride) of a VAE config, without building it."""
    if cfg.kind == "patchify":
        return 3 * cfg.spatial**2, cfg.temporal, cfg.spatial
    return cfg.z_dim, 2 ** sum(cfg.temporal_downsample), 2 ** (len(cfg.dim_mult) - 1)


def encode_views(vae, video):
    """[B, T, V, 3, H, W] -> latents [B, C, F, h, w]; the views are tiled side by side along width."""
    b, t, v, c, h, w = video.shape
    return vae.encode(video.permute(0, 1, 3, 4, 2, 5).reshape(b, t, c, h, v * w))
