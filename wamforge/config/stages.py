"""`stages`: each stage's objective, mixture and curriculum, trainable weights, LR and loss weights."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from wamforge.config.base import Strict
from wamforge.model_zoo.common.timesteps import TimestepConfig


# source weights; a group ({robot: {franka: 2, ur5: 1}}) counts as one entry of weight 1 (or its
# own `weight:` key) shared among its members in proportion to theirs
Weights = dict[str, float | dict[str, float]]


def flatten_weights(table: dict) -> dict[str, float]:
    flat: dict[str, float] = {}
    for name, value in table.items():
        members = value if isinstance(value, dict) else {name: value}
        share = 1.0
        if isinstance(value, dict):
            members = {k: w for k, w in value.items() if k != "weight"}
            share = float(value.get("weight", 1.0))
            total = sum(members.values())
            if not members or any(w < 0 for w in members.values()) or total <= 0:
                raise ValueError(f"group '{name}' needs members with non-negative weights, not all zero")
            members = {k: share * w / total for k, w in members.items()}
        for member, w in members.items():
            flat[member] = flat.get(member, 0.0) + float(w)
    return flat


class CurriculumPoint(Strict):
    step: int = Field(ge=0)
    weights: Weights

    _flat = field_validator("weights")(lambda cls, v: flatten_weights(v))


class MixtureConfig(Strict):
    weights: Weights
    curriculum: list[CurriculumPoint] = []  # breakpoints over the stage's steps
    # linear: weights ramp between breakpoints; step: each breakpoint's weights hold until the next
    interpolation: Literal["linear", "step"] = "linear"
    # "size": each source's weight is also multiplied by its number of built samples
    balance: Literal["weights", "size"] = "weights"

    _flat = field_validator("weights")(lambda cls, v: flatten_weights(v))

    @model_validator(mode="after")
    def _positive(self):
        for table in [self.weights, *(p.weights for p in self.curriculum)]:
            if any(w < 0 for w in table.values()) or sum(table.values()) <= 0:
                raise ValueError("mixture weights must be non-negative and not all zero")
        steps = [p.step for p in self.curriculum]
        if steps != sorted(steps):
            raise ValueError("curriculum breakpoints must be in increasing step order")
        return self


class WeightPoint(Strict):
    step: int = Field(ge=0)
    weight: float = Field(ge=0)


class ParamGroup(Strict):
    """Parameters matching `params` (fnmatch over names; the first group that matches wins) train
    with their own learning rate and weight decay; the stage's values fill what is left unset."""
    params: list[str] = Field(min_length=1)
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)


class LoRAConfig(Strict):
    """Low-rank adapters on the linear layers matching `targets`: their weights freeze and
    W + (alpha / rank) * B @ A trains instead; the stage's final weights are saved merged."""
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    targets: list[str] = Field(["trunk.blocks.*.attn1.to_*", "trunk.blocks.*.attn2.to_*"], min_length=1)


class StageConfig(Strict):
    name: str
    objective: Literal["video", "joint", "action"]
    steps: int = Field(ge=1)
    mixture: MixtureConfig
    trainable: list[str] = ["*"]  # fnmatch patterns over parameter names (LoRA adapters always train)
    param_groups: list[ParamGroup] = []
    lora: LoRAConfig | None = None
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = 0.0
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    loss_weights: dict[Literal["video", "action"], float] = {}
    # piecewise-linear loss weights over the stage's steps (e.g. the action weight ramping in); they
    # replace loss_weights for the modalities they name
    loss_weight_schedule: dict[Literal["video", "action"], list[WeightPoint]] = {}
    # per-modality timestep samplers; default: video `shifted` by model.flow_shift, action `uniform`
    timesteps: dict[Literal["video", "action"], TimestepConfig] = {}

    init_from: str | None = "previous"  # "previous", a path to model.safetensors, or null
    # rename checkpoint keys on load: {regex: replacement}, applied in order (e.g. {"^model\\.": ""})
    init_keys: dict[str, str] = {}
    # strict: every model tensor must be loaded and every checkpoint tensor used; otherwise the
    # missing ones keep their fresh initialisation and the unused are dropped (both reported)
    init_strict: bool = True

    @model_validator(mode="after")
    def _schedules_ordered(self):
        for modality, points in self.loss_weight_schedule.items():
            steps = [p.step for p in points]
            if not points or steps != sorted(set(steps)):
                raise ValueError(f"loss_weight_schedule.{modality} needs breakpoints in increasing step order")
        return self
