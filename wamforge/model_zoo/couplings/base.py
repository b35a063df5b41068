"""What every action coupling (survey §4.3) provides: the contract the trainer and the policy rely on.

A coupling is a procedure, not a network (diffusers keeps networks apart from procedures): it adds
the networks it needs to the model at build time, and then computes the training losses and the
action chunk from the model's parts (VAE, trunk, heads, embodiment bank).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Capabilities:
    """What a built model can do, asked instead of reading one design's fields."""
    objectives: tuple[str, ...]  # stage objectives its loss understands
    horizon: int  # H, the action chunk
    kv_cache: bool  # whether its trunk can serve observed frames from a KV cache
    partition_units: tuple[str, ...]  # top-level modules that grow with the trunk (built under zero.Init)
    samples: tuple[str, ...] = ("policy",)  # what `sample` can draw besides the policy


class Coupling:
    label: str = ""
    objectives: tuple[str, ...] = ("video", "joint", "action")
    partition_units: tuple[str, ...] = ("trunk",)
    samples: tuple[str, ...] = ("policy",)

    def build(self, model, partitioned) -> int:
        """Add this coupling's networks to `model` (inside `partitioned` where they grow with the
        trunk); return the width of the action tokens the embodiment bank must produce."""
        raise NotImplementedError

    def loss(self, model, batch, x0: torch.Tensor, objective: str, timesteps: dict | None) -> dict:
        """-> {"video": scalar, "action": scalar, "per_sample": {video_loss, action_sq, action_count}}."""
        raise NotImplementedError

    def act(self, model, observed: torch.Tensor, proprio, proprio_mask, embodiment_id, text: list[str],
            inference, generator=None, action_mask=None) -> torch.Tensor:
        """Observed latents [B, C, c, h, w] -> normalized action chunk [B, H, A_max]."""
        raise NotImplementedError

    def imagine(self, model, observed: torch.Tensor, proprio, proprio_mask, embodiment_id, text: list[str],
                inference, generator=None) -> torch.Tensor | None:
        """Observed latents -> the predicted future latents [B, C, F_f, h, w], or None for a design
        that predicts no future at inference."""
        return None
