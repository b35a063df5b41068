"""Feature substrates (§4.2): the action reads the trunk's own intermediate states, not a rendered future.

`feature.tap` (mimic-video, VPP, Genie Envisioner): the trunk runs on the observed frames and a
future held at flow time tau (1 = pure noise: VPP, GE; below 1 the future is first partially
denoised: mimic-video's tau_v) up to block `layer`; the states are cached and every action
denoising step reads them. Blocks after the tap never run at inference.
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
