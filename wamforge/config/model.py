"""`model`: the survey's 4-tuple (substrate, backbone, coupling, regime), each a block naming its
registered component by `kind`, plus the networks they run on (trunk, VAE, text) and the action space.

`recipe: NAME` lays configs/recipes/NAME.yaml's model block under this one (load.py does it before
validation, so this block and `--set` still override the recipe). A plain string, `coupling:
joint_generation`, means `{kind: joint_generation}`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from wamforge.config.base import Strict
from wamforge.model_zoo.backbones import BackboneConfig, DiffusionConfig
from wamforge.model_zoo.baselines import BaselineConfig
from wamforge.model_zoo.couplings import CouplingConfig, PostPredictionHeadConfig
from wamforge.model_zoo.encoders import TextConfig
from wamforge.model_zoo.regimes import ChunkedConfig, RegimeConfig
from wamforge.model_zoo.substrates import FeatureTapConfig, SubstrateConfig
from wamforge.model_zoo.trunks import TrunkConfig, WanTrunkConfig
from wamforge.model_zoo.vae import PatchifyVAEConfig, VAEConfig

AXES = ("substrate", "backbone", "coupling", "regime")


class ModelConfig(Strict):
    recipe: str | None = Field(None, description="a recipe in configs/recipes/ laid under this block")
    substrate: SubstrateConfig = FeatureTapConfig()
    backbone: BackboneConfig = DiffusionConfig()
    coupling: CouplingConfig = PostPredictionHeadConfig()
    regime: RegimeConfig = ChunkedConfig()
    trunk: TrunkConfig = WanTrunkConfig()
    vae: VAEConfig = PatchifyVAEConfig()
    text: TextConfig = TextConfig()
    max_action_dim: int = 8
    max_proprio_dim: int = 8
    # mean_std: (x - mean) / std; quantile: q01..q99 mapped to -1..1 (robust to outliers)
    normalization: Literal["mean_std", "quantile"] = "mean_std"
    condition_dropout: float = Field(0.0, ge=0, lt=1, description="share of training captions dropped, for guidance")
    baseline: BaselineConfig | None = Field(None, description="a baseline (not a WAM) to build instead; the "
                                                              "4-tuple axes are then ignored")

    @field_validator(*AXES, "trunk", "vae", "baseline", mode="before")
    @classmethod
    def _name_means_kind(cls, value):
        return {"kind": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _components_fit(self):
        if self.baseline is not None:  # no substrate, backbone, coupling or trunk is built: none can misfit
            if self.trunk.init_from is not None:
                raise ValueError(f"baseline {self.baseline.kind} builds no video trunk for trunk.init_from to load")
            self.baseline.check_fits(self)
            return self
        layer = getattr(self.substrate, "layer", None)
        if layer is not None and layer > self.trunk.layers:
            raise ValueError(f"substrate.layer {layer} is past the trunk's {self.trunk.layers} blocks")
        if self.coupling.kind == "joint_generation" and self.substrate.kind != "pixel.latent":
            raise ValueError("joint_generation denoises the future latents beside the actions: its substrate is "
                             "pixel.latent")
        if self.coupling.kind == "joint_generation" and self.trunk.kind != "wan":
            raise ValueError("joint_generation puts action tokens into the trunk's own sequence, which the wan "
                             "trunk serves; the cosmos trunk modulates per latent frame, so use trunk kind wan")
        if self.substrate.kind == "pixel.latent" and getattr(self.coupling, "head", None) is not None \
                and self.coupling.head.kind == "layerwise":
            raise ValueError("a layerwise head reads trunk layers: use substrate feature.tap, or head "
                             "kind cross_attention to read the predicted latents")
        head_kind = getattr(getattr(self.coupling, "head", None), "kind", None)
        if self.substrate.kind == "feature.encoder_only" and head_kind != "mixture":
            raise ValueError("substrate feature.encoder_only hands the head every trunk block's keys and values of "
                             "the observed frames, which only a post_prediction_head with head kind mixture reads")
        if self.substrate.kind == "feature.encoder_only" and self.trunk.kind != "wan":
            raise ValueError("substrate feature.encoder_only reads a KVCache prefill of the observed frames, which the "
                             "wan trunk serves; use trunk kind wan")
        if head_kind == "mixture" and self.substrate.kind != "feature.encoder_only":
            raise ValueError("a mixture head joins every trunk block's keys and values of the observed frames: use "
                             "substrate feature.encoder_only, or head kind layerwise to read tapped states")
        for axis in (*AXES, "trunk"):  # a component's own rules about the others: one sentence each, before launch
            check = getattr(getattr(self, axis), "check_fits", None)
            if check is not None:
                check(self)
        return self
