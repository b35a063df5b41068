from wamforge.model_zoo.vae.patchify import PatchifyVAE

__all__ = ["PatchifyVAE"]
