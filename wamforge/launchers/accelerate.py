"""`accelerate launch --use_deepspeed [--zero_stage N ...] -m wamforge.training.worker CONFIG`.

accelerate starts the ranks (torchrun's RANK/WORLD_SIZE/MASTER_* environment) and passes its
DeepSpeed plugin's flags as ACCELERATE_* variables; they become the experiment's training settings
here, so the run is the same trainer writing the same checkpoints as `wamforge train`.
"""
from __future__ import annotations

import os

from wamforge.config.experiment import ExperimentConfig


def _precision(value: str):
    if value == "fp16":
        raise ValueError("accelerate's --mixed_precision fp16 is not supported; use bf16 (or no) instead")
    return "bf16" if value == "bf16" else None  # "no": the experiment's own (auto: bf16 on GPUs that have it)


def _offload(value: str):
    if value not in ("none", "cpu"):
        raise ValueError(f"accelerate's --offload_optimizer_device {value} is not supported; use cpu or none")
    return value == "cpu"


def _no_param_offload(value: str):
    if value != "none":
        raise ValueError("accelerate's --offload_param_device is not supported; wamforge offloads the optimizer only")
    return None


# accelerate's variable -> (the training setting it sets, how to read it; None leaves the setting alone)
PLUGIN_FLAGS = {
    "ACCELERATE_DEEPSPEED_ZERO_STAGE": ("zero_stage", int),
    "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": ("grad_accumulation", int),
    "ACCELERATE_GRADIENT_CLIPPING": ("grad_clip", float),
    "ACCELERATE_DEEPSPEED_CONFIG_FILE": ("deepspeed_config", lambda v: None if v == "none" else v),
    "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": ("offload_optimizer", _offload),
    "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": ("", _no_param_offload),
    "ACCELERATE_MIXED_PRECISION": ("precision", _precision),
}


def apply_accelerate_plugin(cfg: ExperimentConfig) -> tuple[ExperimentConfig, dict]:
    """The experiment with accelerate's DeepSpeed flags applied, and what they changed."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        return cfg, {}
    changes = {}
    for variable, (setting, read) in PLUGIN_FLAGS.items():
        raw = os.environ.get(variable, "auto")
        value = None if raw == "auto" else read(raw)
        if value is not None and getattr(cfg.training, setting) != value:
            changes[setting] = value
    training = cfg.training.model_validate({**cfg.training.model_dump(), **changes})
    return cfg.model_copy(update={"training": training}), changes
