from wamforge.model_zoo.vae.patchify import PatchifyVAE
from wamforge.model_zoo.vae.wan.model import WanVAE

__all__ = ["PatchifyVAE", "WanVAE", "encode_views", "make_vae"]


def make_vae(cfg) -> PatchifyVAE:
    """The video VAE a model config's `vae` section names."""
    return PatchifyVAE(cfg.spatial, cfg.temporal)


def encode_views(vae, video):
    """[B, T, V, 3, H, W] -> latents [B, C, F, h, w]; the views are tiled side by side along width."""
    b, t, v, c, h, w = video.shape
    return vae.encode(video.permute(0, 1, 3, 4, 2, 5).reshape(b, t, c, h, v * w))
