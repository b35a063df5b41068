"""Named CosmosDiT sizes: the released Cosmos-Predict2 transformers, plus a tiny one for tests.

The published configs are those of diffusers' scripts/convert_cosmos_to_diffusers.py. All of them
use head dim 128, AdaLN-LoRA rank 256, T5-11B text features (1024), patch (1, 2, 2), a padding-mask
channel and no learnable absolute position embedding. Video2World models take one more input
channel (the condition mask) and stretch RoPE differently from Text2Image ones. Build big ones
on the meta device (`with torch.device("meta"): size.build()`) to inspect them without allocating.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from wamforge.model_zoo.trunks.cosmos.model import CosmosDiT


@dataclass(frozen=True)
class CosmosSize:
    num_attention_heads: int
    num_layers: int
    rope_scale: tuple[float, float, float]
    in_channels: int = 16  # + 1 for Video2World's condition mask
    out_channels: int = 16
    attention_head_dim: int = 128
    text_embed_dim: int = 1024  # T5-11B encoder
    adaln_lora_dim: int = 256
    mlp_ratio: float = 4.0
    patch_size: tuple[int, int, int] = (1, 2, 2)
    max_size: tuple[int, int, int] = (128, 240, 240)
    concat_padding_mask: bool = True
    extra_pos_embed_type: str | None = None

    def config(self) -> dict:
        """Keyword arguments for both CosmosDiT and diffusers' CosmosTransformer3DModel."""
        return asdict(self)

    def build(self) -> CosmosDiT:
        return CosmosDiT(**self.config())


COSMOS_SIZES: dict[str, CosmosSize] = {
    "tiny": CosmosSize(num_attention_heads=2, num_layers=2, rope_scale=(1.0, 3.0, 3.0), in_channels=17,
                       attention_head_dim=16, text_embed_dim=32, adaln_lora_dim=8, max_size=(16, 32, 32)),
    "cosmos-predict2-2b-text2image": CosmosSize(num_attention_heads=16, num_layers=28, rope_scale=(1.0, 4.0, 4.0)),
    "cosmos-predict2-2b-video2world": CosmosSize(num_attention_heads=16, num_layers=28, rope_scale=(1.0, 3.0, 3.0),
                                                 in_channels=17),
    "cosmos-predict2-14b-text2image": CosmosSize(num_attention_heads=40, num_layers=36, rope_scale=(1.0, 4.0, 4.0)),
    "cosmos-predict2-14b-video2world": CosmosSize(num_attention_heads=40, num_layers=36,
                                                  rope_scale=(20 / 24, 2.0, 2.0), in_channels=17),
}
# short names: the Video2World models, the ones that predict futures from observed frames
COSMOS_SIZES["cosmos-predict2-2b"] = COSMOS_SIZES["cosmos-predict2-2b-video2world"]
COSMOS_SIZES["cosmos-predict2-14b"] = COSMOS_SIZES["cosmos-predict2-14b-video2world"]
