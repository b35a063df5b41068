"""Action couplings (survey §4.3): how action enters and leaves the predictive model, registered by `kind`."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from wamforge.model_zoo.couplings.joint_generation import JointGeneration, JointGenerationConfig
from wamforge.model_zoo.couplings.post_prediction_head import PostPredictionHead, PostPredictionHeadConfig
from wamforge.model_zoo.couplings.tiled_joint_generation import TiledJointGeneration, TiledJointGenerationConfig
from wamforge.model_zoo.couplings.action_conditioned_rollout import (ActionConditionedRollout,
                                                                     ActionConditionedRolloutConfig)

CouplingConfig = Annotated[Union[PostPredictionHeadConfig, JointGenerationConfig, TiledJointGenerationConfig,
                                 ActionConditionedRolloutConfig], Field(discriminator="kind")]
REGISTRY = {"post_prediction_head": PostPredictionHead, "joint_generation": JointGeneration,
            "tiled_joint_generation": TiledJointGeneration, "action_conditioned_rollout": ActionConditionedRollout}

__all__ = ["CouplingConfig", "JointGenerationConfig", "PostPredictionHeadConfig", "REGISTRY",
           "TiledJointGenerationConfig"]
