"""Deployment regimes (survey §4.5): how predictions meet the control loop, registered by `kind`."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from wamforge.model_zoo.regimes.chunked import Chunked, ChunkedConfig

RegimeConfig = Annotated[Union[ChunkedConfig], Field(discriminator="kind")]
REGISTRY = {"chunked": Chunked}

__all__ = ["ChunkedConfig", "REGISTRY", "RegimeConfig"]
