"""Low-rank adapters (LoRA) on a model's linear layers, and merging them back for export.

An adapted layer keeps its `weight` and `bias` names, so stage handoff, checkpoints and official
weight maps see the same keys; it adds `lora_A` [rank, in] and `lora_B` [out, rank] beside them.
B starts at zero, so an adapted model computes exactly what the original did until it trains.
"""
from __future__ import annotations

import fnmatch
import math

import torch
import torch.nn.functional as F
from torch import nn

from wamforge.config.stages import LoRAConfig

LORA_PARAMS = ("lora_A", "lora_B")


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None,
                         device=base.weight.device, dtype=base.weight.dtype)
        self.weight, self.bias = base.weight, base.bias
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device,
                                               dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device,
                                               dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and peft initialise A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Replace every nn.Linear whose name matches a target pattern; returns their names."""
    targets = [name for name, module in model.named_modules()
               if type(module) is nn.Linear and any(fnmatch.fnmatch(name, p) for p in cfg.targets)]
    if not targets:
        raise ValueError(f"lora.targets {cfg.targets} match no linear layer of the model")
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), cfg.rank, cfg.alpha))
    return targets


def adapted_weights(model: nn.Module) -> set[str]:
    """Names of the weights that LoRA adapts (they stay frozen while the adapters train)."""
    return {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def merge_lora(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A state dict with adapters folded into their weights (W + scale * B @ A) and removed:
    the plain model's keys, loadable without LoRA."""
    merged = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in LORA_PARAMS}
    for key in state:
        if key.endswith(".lora_A"):
            prefix = key[: -len("lora_A")]
            a, b = state[key].float(), state[prefix + "lora_B"].float()
            weight = state[prefix + "weight"]
            merged[prefix + "weight"] = (weight.float() + scale * b @ a).to(weight.dtype)
    return merged


def adapters_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] in LORA_PARAMS}
