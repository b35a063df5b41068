"""Evaluation suites, registered by `kind`: each file holds a suite's config and its class."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from wamforge.evaluation.suites.base import StepResult, Suite, SuiteEnv
from wamforge.evaluation.suites.aloha import AlohaSuite, AlohaSuiteConfig
from wamforge.evaluation.suites.libero import LiberoSuite, LiberoSuiteConfig
from wamforge.evaluation.suites.metaworld import MetaWorldSuite, MetaWorldSuiteConfig

SuiteConfig = Annotated[Union[MetaWorldSuiteConfig, AlohaSuiteConfig, LiberoSuiteConfig], Field(discriminator="kind")]
REGISTRY: dict[str, type[Suite]] = {"metaworld": MetaWorldSuite, "aloha": AlohaSuite, "libero": LiberoSuite}


def make_suite(cfg) -> Suite:
    return REGISTRY[cfg.kind](cfg)


__all__ = ["REGISTRY", "StepResult", "Suite", "SuiteConfig", "SuiteEnv", "make_suite"]
