"""Named WanDiT sizes: the released Wan2.1 / Wan2.2 transformers, plus a tiny one for tests.

All of them use 256 sinusoidal timestep features (common.layers.FREQ_DIM), patch (1, 2, 2), qk RMSNorm
across heads and an affine norm before cross-attention. I2V sizes add image cross-attention on
CLIP ViT-H tokens (image_dim 1280) and take the image latent and mask as extra input channels. Build big ones on the meta device
(`with torch.device("meta"): size.build()`) to inspect them without allocating.
"""
from __future__ import annotations

from dataclasses import dataclass

from wamforge.model_zoo.trunks.wan.model import WanDiT


@dataclass(frozen=True)
class WanSize:
    dim: int
    ffn_dim: int
    layers: int
    heads: int
    in_channels: int = 16  # latent channels of the VAE the size was trained with
    text_dim: int = 4096  # umT5-XXL
    patch: tuple[int, int, int] = (1, 2, 2)
    vae_stride: tuple[int, int, int] = (4, 8, 8)  # (frames, height, width) pixels per latent cell
    out_channels: int | None = None  # None: in_channels
    image_dim: int | None = None  # CLIP image token width for I2V; None: text-to-video
    pos_embed_seq_len: int | None = None  # FLF2V: image position embedding over 2 x 257 tokens

    def build(self) -> WanDiT:
        return WanDiT(self.in_channels, self.dim, self.layers, self.heads, self.ffn_dim,
                      text_dim=self.text_dim, patch=self.patch, out_channels=self.out_channels,
                      image_dim=self.image_dim, pos_embed_seq_len=self.pos_embed_seq_len)


WAN_SIZES: dict[str, WanSize] = {
    "tiny": WanSize(dim=64, ffn_dim=128, layers=2, heads=2, text_dim=32),
    "wan2.1-1.3b": WanSize(dim=1536, ffn_dim=8960, layers=30, heads=12),
    "wan2.1-14b": WanSize(dim=5120, ffn_dim=13824, layers=40, heads=40),
    # 36 input channels: 16 noisy latent + 4 first-frame mask + 16 conditioning-image latent
    "wan2.1-i2v-14b": WanSize(dim=5120, ffn_dim=13824, layers=40, heads=40, in_channels=36, out_channels=16,
                              image_dim=1280),
    "wan2.2-ti2v-5b": WanSize(dim=3072, ffn_dim=14336, layers=30, heads=24, in_channels=48,
                              vae_stride=(4, 16, 16)),  # the Wan2.2 VAE
}
