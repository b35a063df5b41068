"""Exponential moving average of the trainable weights, kept in fp32 beside the model.

Updated after every optimizer step that was taken; saved with each checkpoint and with the stage's
final weights (`ema.safetensors`), and exported instead of the raw weights with `export --ema`.
Under ZeRO-1/2 every rank holds the full parameters, so every rank keeps the same average.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"training.ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().float().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), 1 - self.decay)

    def state_dict(self, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`full` (the model's state dict) with the averaged weights in place of the trained ones."""
        return {k: (self.shadow[k] if k in self.shadow else v).detach().to("cpu", torch.float32).contiguous()
                for k, v in full.items()}

    def save(self, path: Path) -> None:
        save_file({k: v.cpu().contiguous() for k, v in self.shadow.items()}, str(path))

    def load(self, path: Path) -> None:
        saved = load_file(str(path))
        if set(saved) != set(self.shadow):
            raise ValueError(f"{path} averages other parameters than this stage trains")
        for name, value in saved.items():
            self.shadow[name].copy_(value)
