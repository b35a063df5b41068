"""The Cosmos-Predict2 video DiT as a trunk component: its config (a named size or explicit dims, and the
released checkpoint it may start from) and builder."""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from wamforge.config.base import Strict
from wamforge.model_zoo.trunks.pretrained import PretrainedTrunk, check_format, check_widths


class CosmosTrunkConfig(Strict):
    kind: Literal["cosmos"] = "cosmos"
    size: str | None = None  # trunks/cosmos/sizes.py: cosmos-predict2-2b, cosmos-predict2-14b, tiny, ...
    heads: int = 4
    head_dim: int = 24
    layers: int = 4
    mlp_ratio: float = 4.0
    adaln_lora_dim: int = 16
    patch: tuple[int, int, int] = (1, 2, 2)
    rope_scale: tuple[float, float, float] = (1.0, 3.0, 3.0)
    # Video2World's input channel marking the frames given as condition (flow time 0 here); set by
    # the Video2World sizes, whose checkpoints have it
    condition_mask: bool = False
    init_from: PretrainedTrunk | None = None  # a released checkpoint (format cosmos or diffusers): trunks/pretrained.py

    @model_validator(mode="after")
    def _named_size(self):
        check_format(self.kind, self.init_from)
        if self.size is None:
            return self
        from wamforge.model_zoo.trunks.cosmos.sizes import COSMOS_SIZES

        if self.size not in COSMOS_SIZES:
            raise ValueError(f"unknown Cosmos size '{self.size}'; known: {', '.join(COSMOS_SIZES)}")
        shape = COSMOS_SIZES[self.size]
        fixed = {"heads": shape.num_attention_heads, "head_dim": shape.attention_head_dim, "layers": shape.num_layers,
                 "mlp_ratio": shape.mlp_ratio, "adaln_lora_dim": shape.adaln_lora_dim}
        given = [f for f in self.model_fields_set & fixed.keys() if getattr(self, f) != fixed[f]]  # a saved config repeats them
        if given:
            raise ValueError(f"trunk.size '{self.size}' fixes {sorted(given)}; give either the size or the dims")
        self.heads, self.head_dim, self.layers = shape.num_attention_heads, shape.attention_head_dim, shape.num_layers
        self.mlp_ratio, self.adaln_lora_dim = shape.mlp_ratio, shape.adaln_lora_dim
        self.patch, self.rope_scale = shape.patch_size, shape.rope_scale
        self.condition_mask = shape.in_channels == shape.out_channels + 1
        return self

    def check_fits(self, model_cfg) -> None:
        if self.size is not None:
            from wamforge.model_zoo.trunks.cosmos.sizes import COSMOS_SIZES

            shape = COSMOS_SIZES[self.size]
            check_widths(self, model_cfg, shape.out_channels, shape.text_embed_dim,
                         "T5-11B" if shape.text_embed_dim == 1024 else "its text encoder")

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim


def build_cosmos_trunk(cfg: CosmosTrunkConfig, in_channels: int, text_dim: int):
    from wamforge.model_zoo.trunks.cosmos.model import CosmosDiT

    # no learnable absolute positions (no Predict2 release has them); the clean frames are marked by
    # their flow time 0, as in the other couplings, and by the condition mask where the size has one
    return CosmosDiT(in_channels=in_channels + int(cfg.condition_mask), out_channels=in_channels, num_attention_heads=cfg.heads,
                     attention_head_dim=cfg.head_dim, num_layers=cfg.layers, mlp_ratio=cfg.mlp_ratio,
                     text_embed_dim=text_dim, adaln_lora_dim=cfg.adaln_lora_dim, patch_size=cfg.patch,
                     rope_scale=cfg.rope_scale)
