"""Video trunks, registered by `kind`: `wan` (Wan2.1/2.2 DiT) and `cosmos` (Cosmos-Predict2 DiT).

Every trunk offers the coupling-facing service `predict(latents, frame_t, text_emb, text_mask, taps,
stop_at) -> (velocity | None, {block: hidden states})`, flow time per latent frame in [0, 1]; the
Wan trunk also offers token-level services (embed, condition, run_blocks, head) for couplings that
put other streams in its sequence.
"""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from wamforge.model_zoo.trunks.cosmos import CosmosTrunkConfig, build_cosmos_trunk
from wamforge.model_zoo.trunks.wan import WanTrunkConfig, build_wan_trunk

TrunkConfig = Annotated[Union[WanTrunkConfig, CosmosTrunkConfig], Field(discriminator="kind")]
REGISTRY = {"wan": build_wan_trunk, "cosmos": build_cosmos_trunk}


def build_trunk(cfg, in_channels: int, text_dim: int):
    return REGISTRY[cfg.kind](cfg, in_channels, text_dim)


__all__ = ["CosmosTrunkConfig", "REGISTRY", "TrunkConfig", "WanTrunkConfig", "build_trunk"]
