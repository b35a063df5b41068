"""Action heads (§4.3.4): the networks that turn a substrate into an action chunk, registered by
`kind`, and the per-embodiment weight bank every action passes through."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from wamforge.model_zoo.heads.action_expert import ActionExpert, ActionExpertConfig
from wamforge.model_zoo.heads.embodiment_bank import EmbodimentBank
from wamforge.model_zoo.heads.inverse_dynamics import InverseDynamics, InverseDynamicsConfig
from wamforge.model_zoo.heads.layerwise_expert import LayerwiseActionExpert, LayerwiseExpertConfig
from wamforge.model_zoo.heads.mixture_expert import MixtureActionExpert, MixtureExpertConfig

HeadConfig = Annotated[Union[ActionExpertConfig, LayerwiseExpertConfig, MixtureExpertConfig, InverseDynamicsConfig],
                       Field(discriminator="kind")]
REGISTRY = {"cross_attention": ActionExpert, "layerwise": LayerwiseActionExpert, "mixture": MixtureActionExpert,
            "inverse_dynamics": InverseDynamics}

__all__ = ["ActionExpert", "ActionExpertConfig", "EmbodimentBank", "HeadConfig", "InverseDynamics",
           "InverseDynamicsConfig", "LayerwiseActionExpert", "LayerwiseExpertConfig", "MixtureActionExpert",
           "MixtureExpertConfig", "REGISTRY"]
