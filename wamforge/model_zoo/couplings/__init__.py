"""Action couplings (survey §4.3): how action enters and leaves the predictive model, registered by `kind`."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from wamforge.model_zoo.couplings.joint_generation import JointGeneration, JointGenerationConfig
from wamforge.model_zoo.couplings.post_prediction_head import PostPredictionHead, PostPredictionHeadConfig

CouplingConfig = Annotated[Union[PostPredictionHeadConfig, JointGenerationConfig], Field(discriminator="kind")]
REGISTRY = {"post_prediction_head": PostPredictionHead, "joint_generation": JointGeneration}

__all__ = ["CouplingConfig", "JointGenerationConfig", "PostPredictionHeadConfig", "REGISTRY"]
