"""Backbone families (survey §4.4): the procedure that produces the prediction, registered by `kind`."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from wamforge.model_zoo.backbones.diffusion import DiffusionConfig, FlowMatching
from wamforge.model_zoo.backbones.hybrid import HybridConfig, HybridFlowMatching

BackboneConfig = Annotated[Union[DiffusionConfig, HybridConfig], Field(discriminator="kind")]
REGISTRY = {"diffusion": FlowMatching, "hybrid": HybridFlowMatching}

__all__ = ["BackboneConfig", "DiffusionConfig", "HybridConfig", "REGISTRY"]
