"""The Wan2.1/2.2 video DiT as a trunk component: its config (a named size or explicit dims, and the
released checkpoint it may start from) and builder."""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from wamforge.config.base import Strict
from wamforge.model_zoo.trunks.pretrained import PretrainedTrunk, check_format, check_widths


class WanTrunkConfig(Strict):
    kind: Literal["wan"] = "wan"
    # a released size (trunks/wan/sizes.py: wan2.1-1.3b, wan2.1-14b, wan2.2-ti2v-5b, tiny); it sets
    # dim, ffn_dim, layers and heads, which may then be given only as the size has them (a saved config does)
    size: str | None = None
    dim: int = 96
    layers: int = 4
    heads: int = 4
    ffn_dim: int = 256
    patch: tuple[int, int, int] = (1, 2, 2)
    qk_norm: bool = True
    activation_checkpointing: bool = False  # recompute blocks in backward to save activation memory
    init_from: PretrainedTrunk | None = None  # a released checkpoint (format wan or diffusers): trunks/pretrained.py

    @model_validator(mode="after")
    def _shapes(self):
        if self.size is not None:
            from wamforge.model_zoo.trunks.wan.sizes import WAN_SIZES

            if self.size not in WAN_SIZES:
                raise ValueError(f"unknown Wan size '{self.size}'; known: {', '.join(WAN_SIZES)}")
            shape = WAN_SIZES[self.size]
            given = [f for f in self.model_fields_set & {"dim", "layers", "heads", "ffn_dim"}
                     if getattr(self, f) != getattr(shape, f)]
            if given:
                raise ValueError(f"trunk.size '{self.size}' fixes {sorted(given)}; give either the size or the dims")
            self.dim, self.layers, self.heads, self.ffn_dim = shape.dim, shape.layers, shape.heads, shape.ffn_dim
            self.patch = shape.patch
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        check_format(self.kind, self.init_from)
        return self

    def check_fits(self, model_cfg) -> None:
        if self.size is None:
            return
        from wamforge.model_zoo.trunks.wan.sizes import WAN_SIZES

        shape = WAN_SIZES[self.size]
        if shape.image_dim is not None:
            raise ValueError(f"trunk.size {self.size} conditions on CLIP image tokens, which no coupling gives it; "
                             f"start from a text-to-video size")
        check_widths(self, model_cfg, shape.in_channels, shape.text_dim, "umT5-XXL" if shape.text_dim == 4096 else
                     "its text encoder")


def build_wan_trunk(cfg: WanTrunkConfig, in_channels: int, text_dim: int):
    from wamforge.model_zoo.trunks.wan.model import WanDiT

    trunk = WanDiT(in_channels, cfg.dim, cfg.layers, cfg.heads, cfg.ffn_dim, text_dim=text_dim, patch=cfg.patch,
                   qk_norm=cfg.qk_norm)
    trunk.gradient_checkpointing = cfg.activation_checkpointing
    return trunk
