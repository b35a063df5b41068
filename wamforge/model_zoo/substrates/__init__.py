"""Predictive substrates (survey §4.2): where the model's future lives and what the action reads.
Registered by `kind`; the survey's label of each is its class's `label`."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from wamforge.model_zoo.substrates.feature import (FeatureEncoderOnly, FeatureEncoderOnlyConfig, FeatureTap,
                                                  FeatureTapConfig)
from wamforge.model_zoo.substrates.pixel import PixelLatent, PixelLatentConfig

SubstrateConfig = Annotated[Union[FeatureTapConfig, FeatureEncoderOnlyConfig, PixelLatentConfig],
                           Field(discriminator="kind")]
REGISTRY = {"feature.tap": FeatureTap, "feature.encoder_only": FeatureEncoderOnly, "pixel.latent": PixelLatent}

__all__ = ["FeatureEncoderOnlyConfig", "FeatureTapConfig", "PixelLatentConfig", "REGISTRY", "SubstrateConfig"]
