"""DeepSpeed engine from the experiment config: ZeRO stage, offload, precision, accumulation,
clipping, parameter groups, and a user's own DeepSpeed JSON laid over what the experiment implies."""
from __future__ import annotations

import copy
import fnmatch
import json
import math
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from wamforge.config.stages import StageConfig
from wamforge.config.training import TrainingConfig


def resolve_precision(training: TrainingConfig) -> str:
    if training.precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return training.precision


def deepspeed_config(training: TrainingConfig, world_size: int) -> dict:
    precision = resolve_precision(training)
    zero = {"stage": training.zero_stage}
    if training.offload_optimizer:
        if training.zero_stage == 0:
            raise ValueError("training.offload_optimizer needs zero_stage 1, 2 or 3")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    # DeepSpeed counts every rank as data parallel; under sequence parallelism a group of ranks
    # shares each sample, so this is the number of micro-batches per step, not of samples
    generated = {
        "train_micro_batch_size_per_gpu": training.micro_batch_per_rank,
        "gradient_accumulation_steps": training.grad_accumulation,
        "train_batch_size": training.micro_batch_per_rank * training.grad_accumulation * world_size,
        "gradient_clipping": training.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "zero_allow_untested_optimizer": True,  # torch AdamW: no compiled DeepSpeed ops needed
        "zero_force_ds_cpu_optimizer": False,  # ... also when offloading its states to the CPU
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if training.deepspeed_config is None:
        return generated
    return merge_user_config(generated, load_user_config(training.deepspeed_config))


def load_user_config(path: str) -> dict:
    try:
        user = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"training.deepspeed_config names {path}, which does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"training.deepspeed_config {path} is not valid JSON: {err}") from None
    if not isinstance(user, dict):
        raise ValueError(f"training.deepspeed_config {path} must hold a JSON object")
    return user


# keys the experiment decides, and where it says so
_EXPERIMENT_KEYS = {
    ("train_micro_batch_size_per_gpu",): "training.micro_batch_per_rank",
    ("gradient_accumulation_steps",): "training.grad_accumulation",
    ("train_batch_size",): "training.micro_batch_per_rank x grad_accumulation x world_size",
    ("zero_optimization", "stage"): "training.zero_stage",
    ("bf16", "enabled"): "training.precision",
    ("fp16", "enabled"): "training.precision",
    ("gradient_clipping",): "training.grad_clip",
}
# DeepSpeed would build its own optimizer or scheduler from these, bypassing the stage's
_FORBIDDEN = {"optimizer": "the stage's lr, weight_decay and param_groups",
              "scheduler": "the stage's warmup_steps and schedule"}


def merge_user_config(generated: dict, user: dict) -> dict:
    """The user's DeepSpeed JSON over the generated one; a value that contradicts the experiment
    (e.g. another train_batch_size) is one error naming both, since DeepSpeed would obey the JSON
    while the loader, checkpoints and plan follow the experiment."""
    for key, owner in _FORBIDDEN.items():
        if key in user:
            raise ValueError(f"the DeepSpeed config sets '{key}'; wamforge builds it from {owner}, so remove it")
    for path, owner in _EXPERIMENT_KEYS.items():
        theirs, ours = _lookup(user, path), _lookup(generated, path, default=False)
        if theirs is not None and theirs != ours:
            raise ValueError(f"the DeepSpeed config sets {'.'.join(path)} = {theirs!r} but the experiment implies "
                             f"{ours!r} ({owner}); change one so that they agree")
    merged = copy.deepcopy(generated)
    _deep_update(merged, user)
    return merged


def _lookup(table: dict, path: tuple[str, ...], default=None):
    for key in path:
        if not isinstance(table, dict) or key not in table:
            return default
        table = table[key]
    return table


def _deep_update(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def mark_trainable(model: torch.nn.Module, patterns: list[str]) -> dict[str, torch.nn.Parameter]:
    """requires_grad only for parameters whose name matches a stage pattern, and LoRA adapters;
    the weights LoRA adapts stay frozen."""
    from wamforge.training.parallel.lora import LORA_PARAMS, adapted_weights

    frozen = adapted_weights(model)
    trainable = {}
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        param.requires_grad = leaf in LORA_PARAMS or (
            name not in frozen and any(fnmatch.fnmatch(name, p) for p in patterns))
        if param.requires_grad:
            trainable[name] = param
    if not trainable:
        raise ValueError(f"trainable patterns {patterns} match no model parameter")
    return trainable


def param_groups(trainable: dict[str, torch.nn.Parameter], stage: StageConfig) -> list[dict]:
    """AdamW groups: each of the stage's param_groups, then the rest at the stage's lr."""
    groups = [{"params": [], "lr": g.lr or stage.lr, "weight_decay": stage.weight_decay if g.weight_decay is None
               else g.weight_decay, "patterns": g.params} for g in stage.param_groups]
    rest = {"params": [], "lr": stage.lr, "weight_decay": stage.weight_decay, "patterns": ["*"]}
    for name, param in trainable.items():
        group = next((g for g in groups if any(fnmatch.fnmatch(name, p) for p in g["patterns"])), rest)
        group["params"].append(param)
    for group in groups:
        if not group["params"]:
            raise ValueError(f"stage '{stage.name}': param_groups pattern {group['patterns']} matches no "
                             f"trainable parameter")
    return [{k: v for k, v in g.items() if k != "patterns"} for g in [*groups, rest] if g["params"]]


def lr_lambda(stage: StageConfig):
    def factor(step: int) -> float:
        if step < stage.warmup_steps:
            return (step + 1) / stage.warmup_steps
        if stage.schedule == "constant":
            return 1.0
        progress = (step - stage.warmup_steps) / max(1, stage.steps - stage.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def partitioned_init(training: TrainingConfig, world_size: int) -> AbstractContextManager:
    """The context to build the large modules in. Under ZeRO-3 it is `zero.Init`: each rank keeps
    only its partition of every weight from the moment the weight is made, so a trunk larger than
    one rank's memory can be built at all."""
    if training.zero_stage != 3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.Init(config_dict_or_path=deepspeed_config(training, world_size))


def build_engine(model: torch.nn.Module, stage: StageConfig, training: TrainingConfig, world_size: int):
    import deepspeed

    groups = param_groups(mark_trainable(model, stage.trainable), stage)
    optimizer = torch.optim.AdamW(groups, lr=stage.lr, weight_decay=stage.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(stage))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(training, world_size))
    return engine
