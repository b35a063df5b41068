"""Baselines: policies that are not World Action Models, trained by the same trainer from scratch at
the same budget, so that what a WAM gains by predicting the future is measured against a policy that
predicts none. Registered by `kind` under `model.baseline`; when that block is set, `build_model`
builds the baseline and the survey's 4-tuple axes are ignored. A baseline has no census row:
`build.design` gives its `BaselineDesign`, and `wamforge recipes` lists it as a baseline."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from wamforge.model_zoo.baselines.diffusion_policy import DiffusionPolicy, DiffusionPolicyConfig

BaselineConfig = Annotated[Union[DiffusionPolicyConfig], Field(discriminator="kind")]
REGISTRY = {"diffusion_policy": DiffusionPolicy}

__all__ = ["BaselineConfig", "DiffusionPolicy", "DiffusionPolicyConfig", "REGISTRY"]
