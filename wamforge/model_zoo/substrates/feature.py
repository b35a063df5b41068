"""Feature substrates (§4.2): the action reads the trunk's own intermediate states, not a rendered future.

`feature.tap` (mimic-video, VPP, Genie Envisioner): the trunk runs on the observed frames and a
future held at flow time tau (1 = pure noise: VPP, GE; below 1 the future is first partially
denoised: mimic-video's tau_v) up to block `layer`; the states are cached and every action
denoising step reads them. Blocks after the tap never run at inference. With `layers` (VPP's
`use_all_layer`: the up-block outputs up to an index, concatenated) several blocks are read and
concatenated along channels, as VPP stacks its upsampled feature maps per pixel: every token
carries all the depths read, and the head's context keeps the trunk's token count.

`feature.encoder_only` (Fast-WAM): the trunk encodes the observed frames alone (context + current,
clean at t = 0; no future tokens at all) and the head reads every block's self-attention keys and
values of those tokens (a `KVCache` prefill), joining them layer by layer as a mixture of
transformers. The future is still trained (the video objective) but never generated to act: that
is what makes acting cheap, one trunk pass over the observed frames per chunk.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from wamforge.config.base import Strict


class FeatureTapConfig(Strict):
    kind: Literal["feature.tap"] = "feature.tap"
    layer: int = Field(2, ge=1, description="the trunk block whose output the action head reads (with `layers`: "
                                            "the deepest of them, where the trunk stops)")
    layers: list[int] | None = Field(None, min_length=1, description="several blocks read and concatenated along "
                                                                     "channels (VPP); None: `layer` alone")
    noise: float = Field(1.0, ge=0, le=1, description="tau: the flow time of the future when it is tapped")

    @model_validator(mode="after")
    def _deepest_is_layer(self):
        if self.layers is None:
            return self
        if self.layers != sorted(set(self.layers)) or self.layers[0] < 1:
            raise ValueError(f"substrate.layers {self.layers} must be distinct 1-based blocks in increasing order")
        if "layer" in self.model_fields_set and self.layer != self.layers[-1]:
            raise ValueError(f"substrate.layer {self.layer} must be the deepest of substrate.layers "
                             f"{self.layers}: leave it out, it follows them")
        self.layer = self.layers[-1]  # the trunk stops after the deepest block read
        return self

    def check_fits(self, model_cfg) -> None:
        head = getattr(model_cfg.coupling, "head", None)
        if self.layers is not None and getattr(head, "kind", None) == "layerwise":
            raise ValueError("a layerwise head reads every block up to substrate.layer one by one: drop "
                             "substrate.layers, or use head kind cross_attention to read the concatenated blocks")


class FeatureTap:
    label = "Feature (tap)"
    reads_prediction = False  # the head's context comes before the trunk's output head

    def __init__(self, cfg: FeatureTapConfig, trunk_layers: int):
        if cfg.layer > trunk_layers:
            raise ValueError(f"substrate.layer {cfg.layer} is past the trunk's {trunk_layers} blocks")
        self.layer, self.noise = cfg.layer, cfg.noise
        self.read = tuple(cfg.layers or (cfg.layer,))  # the blocks a single-context head reads

    def taps(self, layerwise: bool) -> tuple[int, ...]:
        """Blocks to keep: the tap(s), or every block up to `layer` for a layer-by-layer head."""
        return tuple(range(1, self.layer + 1)) if layerwise else self.read

    def context_dim(self, trunk) -> int:
        return len(self.read) * trunk.dim

    def context(self, tapped: dict[int, torch.Tensor], layerwise: bool, **_) -> torch.Tensor | list[torch.Tensor]:
        """-> one [B, L, dim] per block up to `layer` (layerwise), or [B, L, len(read) * dim]."""
        if layerwise:
            return [tapped[i] for i in self.taps(True)]
        states = [tapped[i] for i in self.read]
        return states[0] if len(states) == 1 else torch.cat(states, dim=-1)


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
