"""Action-conditioned rollout (survey §4.3.1): the world model coupling, its value head and its planners."""
from __future__ import annotations

from wamforge.model_zoo.couplings.action_conditioned_rollout.planners import (PLANNERS, BestOfN, BestOfNConfig, CEM,
                                                                             CEMConfig, MPPI, MPPIConfig, Planner,
                                                                             PlannerConfig, build_planner)
from wamforge.model_zoo.couplings.action_conditioned_rollout.value import ValueHead
from wamforge.model_zoo.couplings.action_conditioned_rollout.world_model import (ActionConditionedRollout,
                                                                                ActionConditionedRolloutConfig)

__all__ = ["ActionConditionedRollout", "ActionConditionedRolloutConfig", "BestOfN", "BestOfNConfig", "CEM",
           "CEMConfig", "MPPI", "MPPIConfig", "PLANNERS", "Planner", "PlannerConfig", "ValueHead", "build_planner"]
