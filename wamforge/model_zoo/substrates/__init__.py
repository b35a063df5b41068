"""Predictive substrates (survey §4.2): where the model's future lives and what the action reads.
Registered by `kind`; the survey's label of each is its class's `label`."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from wamforge.model_zoo.substrates.feature import (FeatureEncoderOnly, FeatureEncoderOnlyConfig, FeatureTap,
                                                  FeatureTapConfig)
from wamforge.model_zoo.substrates.pixel import PixelDecoded, PixelDecodedConfig, PixelLatent, PixelLatentConfig

SubstrateConfig = Annotated[Union[FeatureTapConfig, FeatureEncoderOnlyConfig, PixelLatentConfig, PixelDecodedConfig],
                           Field(discriminator="kind")]
REGISTRY = {"feature.tap": FeatureTap, "feature.encoder_only": FeatureEncoderOnly, "pixel.latent": PixelLatent,
            "pixel.decoded": PixelDecoded}

__all__ = ["FeatureEncoderOnlyConfig", "FeatureTapConfig", "PixelDecodedConfig", "PixelLatentConfig", "REGISTRY",
           "SubstrateConfig"]
