"""The single-step regime (survey §4.5.3): H = 1, the WAM invoked at every control step (GR-1, PAD,
VPP). The most reactive regime and the most expensive per step: one forward pass must fit in the
control period, which is why its members keep the substrate sparse or read features in one pass.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from wamforge.config.base import Strict
from wamforge.model_zoo.regimes.chunked import ChunkedControl


class SingleStepConfig(Strict):
    kind: Literal["single_step"] = "single_step"
    horizon: int = Field(1, ge=1, le=1, description="H = 1: one action per call")


class SingleStep:
    label = "Single-step"

    def __init__(self, cfg: SingleStepConfig):
        self.horizon = cfg.horizon

    def control(self, policy, execute_steps: int, action_dim: int) -> ChunkedControl:
        """The chunked loop with H = K = 1: the policy is called at every step."""
        return ChunkedControl(policy, 1, action_dim)
