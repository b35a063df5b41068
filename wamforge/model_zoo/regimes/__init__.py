"""Deployment regimes (survey §4.5): how predictions meet the control loop, registered by `kind`."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from wamforge.model_zoo.regimes.chunked import Chunked, ChunkedConfig
from wamforge.model_zoo.regimes.interactive import Interactive, InteractiveConfig, InteractiveSession
from wamforge.model_zoo.regimes.open_loop import OpenLoop, OpenLoopConfig
from wamforge.model_zoo.regimes.single_step import SingleStep, SingleStepConfig

RegimeConfig = Annotated[Union[ChunkedConfig, OpenLoopConfig, SingleStepConfig, InteractiveConfig],
                         Field(discriminator="kind")]
REGISTRY = {"chunked": Chunked, "open_loop": OpenLoop, "single_step": SingleStep, "interactive": Interactive}

__all__ = ["ChunkedConfig", "InteractiveConfig", "InteractiveSession", "OpenLoopConfig", "REGISTRY", "RegimeConfig", "SingleStepConfig"]
