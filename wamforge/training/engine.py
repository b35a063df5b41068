"""DeepSpeed engine from the experiment config: ZeRO stage, precision, accumulation, clipping."""
from __future__ import annotations

import fnmatch
import math

import torch

from wamforge.config.schema import StageConfig, TrainingConfig


def resolve_precision(training: TrainingConfig) -> str:
    if training.precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return training.precision


def deepspeed_config(training: TrainingConfig, world_size: int) -> dict:
    precision = resolve_precision(training)
    return {
        "train_micro_batch_size_per_gpu": training.micro_batch_per_rank,
        "gradient_accumulation_steps": training.grad_accumulation,
        "train_batch_size": training.micro_batch_per_rank * training.grad_accumulation * world_size,
        "gradient_clipping": training.grad_clip,
        "zero_optimization": {"stage": training.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "zero_allow_untested_optimizer": True,  # torch AdamW: no compiled DeepSpeed ops needed
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def mark_trainable(model: torch.nn.Module, patterns: list[str]) -> list[torch.nn.Parameter]:
    """requires_grad only for parameters whose name matches a stage pattern."""
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad = any(fnmatch.fnmatch(name, p) for p in patterns)
        if param.requires_grad:
            trainable.append(param)
    if not trainable:
        raise ValueError(f"trainable patterns {patterns} match no model parameter")
    return trainable


def lr_lambda(stage: StageConfig):
    def factor(step: int) -> float:
        if step < stage.warmup_steps:
            return (step + 1) / stage.warmup_steps
        if stage.schedule == "constant":
            return 1.0
        progress = (step - stage.warmup_steps) / max(1, stage.steps - stage.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def build_engine(model: torch.nn.Module, stage: StageConfig, training: TrainingConfig, world_size: int):
    import deepspeed

    params = mark_trainable(model, stage.trainable)
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(stage))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(training, world_size))
    return engine
