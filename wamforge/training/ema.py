"""Exponential moving average of the trainable weights, kept in fp32 beside the model.

Updated after every optimizer step that was taken; saved with each checkpoint and with the stage's
final weights (`ema.safetensors`), and exported instead of the raw weights with `export --ema`.
Under ZeRO-1/2 every rank holds the full parameters and keeps the same average. Under ZeRO-3 each
rank averages only its own partition of every parameter (`ds_tensor`), so the EMA is sharded like
the weights; saving gathers the partitions into full tensors, so files look the same either way
and a resume on another number of ranks re-cuts them.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from wamforge.model_zoo.common.partitions import full_shape, is_partitioned


def _local(param: torch.nn.Parameter) -> torch.Tensor:
    """What this rank holds of a parameter: its ZeRO-3 partition (flat, zero-padded) or all of it."""
    return param.ds_tensor if is_partitioned(param) else param


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"training.ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.shadow = {n: _local(p).detach().float().clone() for n, p in self.params.items()}
        self.sharded = any(is_partitioned(p) for p in self.params.values())

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.params.items():
            self.shadow[name].lerp_(_local(param).detach().float(), 1 - self.decay)

    def gather(self) -> dict[str, torch.Tensor]:
        """Full fp32 tensors of the average. Under ZeRO-3 a collective: every rank must call it."""
        if not self.sharded:
            return {k: v.cpu().contiguous() for k, v in self.shadow.items()}
        full = {}
        for name, param in self.params.items():
            parts = [torch.empty_like(self.shadow[name]) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, self.shadow[name])
            full[name] = torch.cat(parts)[: param.ds_numel].view(full_shape(param)).cpu()
        return full

    def state_dict(self, full: dict[str, torch.Tensor], averaged: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`full` (the model's state dict) with the `averaged` weights (from gather) in place of the trained ones."""
        return {k: (averaged[k] if k in averaged else v).detach().to("cpu", torch.float32).contiguous()
                for k, v in full.items()}

    @staticmethod
    def save(averaged: dict[str, torch.Tensor], path: Path) -> None:
        save_file(averaged, str(path))

    def load(self, path: Path) -> None:
        saved = load_file(str(path))
        if set(saved) != set(self.shadow):
            raise ValueError(f"{path} averages other parameters than this stage trains")
        for name, value in saved.items():
            param = self.params[name]
            if is_partitioned(param):  # this rank's partition of the full tensor
                size = param.ds_tensor.numel()
                flat = torch.zeros(size * dist.get_world_size())
                flat[: value.numel()] = value.flatten()
                value = flat[dist.get_rank() * size:(dist.get_rank() + 1) * size]
            self.shadow[name].copy_(value)
