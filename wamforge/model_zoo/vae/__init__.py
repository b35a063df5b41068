from wamforge.model_zoo.vae.patchify import PatchifyVAE
from wamforge.model_zoo.vae.wan_vae import WanVAE

__all__ = ["PatchifyVAE", "WanVAE"]
