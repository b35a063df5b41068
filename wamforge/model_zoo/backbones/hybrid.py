"""Hybrid backbones (survey §4.4.4): a generative head and an action head on one shared trunk.

The trunk's own output head predicts the substrate; an action head (the embodiment bank's output
rows, reading the trunk's action tokens) predicts the actions; the loss is L_gen + lambda L_act
(survey eq. 19). Same rectified flow as `diffusion`, with one time per stream by default (UWM's
independent t_a and t_o'), which is what lets one model act as policy, forward and inverse dynamics.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from wamforge.config.base import Strict
from wamforge.model_zoo.backbones.diffusion import FlowMatching


class HybridConfig(Strict):
    kind: Literal["hybrid"] = "hybrid"
    flow_shift: float = Field(1.0, gt=0, description="shift of the video's training sampler and inference schedule")
    timesteps: Literal["shared", "independent"] = "independent"


class HybridFlowMatching(FlowMatching):
    label = "Hybrid"
