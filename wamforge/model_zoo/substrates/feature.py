"""Feature substrates (§4.2): the action reads the trunk's own intermediate states, not a rendered future.

`feature.tap` (mimic-video, VPP, Genie Envisioner): the trunk runs on the observed frames and a
future held at flow time tau (1 = pure noise: VPP, GE; below 1 the future is first partially
denoised: mimic-video's tau_v) up to block `layer`; the states are cached and every action
denoising step reads them. Blocks after the tap never run at inference.

`feature.encoder_only` (Fast-WAM): the trunk encodes the observed frames alone (context + current,
clean at t = 0; no future tokens at all) and the head reads every block's self-attention keys and
values of those tokens (a `KVCache` prefill), joining them layer by layer as a mixture of
transformers. The future is still trained (the video objective) but never generated to act: that
is what makes acting cheap, one trunk pass over the observed frames per chunk.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from wamforge.config.base import Strict


class FeatureTapConfig(Strict):
    kind: Literal["feature.tap"] = "feature.tap"
    layer: int = Field(2, ge=1, description="the trunk block whose output the action head reads")
    noise: float = Field(1.0, ge=0, le=1, description="tau: the flow time of the future when it is tapped")


class FeatureTap:
    label = "Feature (tap)"
    reads_prediction = False  # the head's context comes before the trunk's output head

    def __init__(self, cfg: FeatureTapConfig, trunk_layers: int):
        if cfg.layer > trunk_layers:
            raise ValueError(f"substrate.layer {cfg.layer} is past the trunk's {trunk_layers} blocks")
        self.layer, self.noise = cfg.layer, cfg.noise

    def taps(self, layerwise: bool) -> tuple[int, ...]:
        """Blocks to keep: the tap alone, or every block up to it for a layer-by-layer head."""
        return tuple(range(1, self.layer + 1)) if layerwise else (self.layer,)

    def context_dim(self, trunk) -> int:
        return trunk.dim

    def context(self, tapped: dict[int, torch.Tensor], layerwise: bool, **_) -> torch.Tensor | list[torch.Tensor]:
        return [tapped[i] for i in self.taps(True)] if layerwise else tapped[self.layer]


class FeatureEncoderOnlyConfig(Strict):
    kind: Literal["feature.encoder_only"] = "feature.encoder_only"


class FeatureEncoderOnly:
    label = "Feature (encoder-only)"
    reads_prediction = False  # the head reads keys/values inside the blocks, never the trunk's output head
    # capability the coupling branches on: the head reads the trunk's per-block keys/values of the observed
    # frames alone (a KVCache prefill at t = 0), so no future token is ever computed for an action
    reads_observed_cache = True
    noise = 0.0  # the frames it reads are observed, hence clean

    def __init__(self, cfg: FeatureEncoderOnlyConfig, trunk_layers: int):
        self.layer = trunk_layers  # every block is read

    def taps(self, layerwise: bool) -> tuple[int, ...]:
        return ()  # no hidden states are tapped: the keys/values come from the cache

    def context_dim(self, trunk) -> int:
        return trunk.dim

    def head_space(self, trunk) -> dict[str, int]:
        """What a mixture head joins: the trunk's block count and attention heads (head_dim = dim / heads)."""
        return {"layers": len(trunk.blocks), "heads": trunk.blocks[0].attn1.heads}

    def context(self, cache, **_) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A prefilled `KVCache` of the observed frames -> one (keys, values) [B, heads, L_obs, head_dim] per block."""
        return [(layer.k, layer.v) for layer in cache.layers]
