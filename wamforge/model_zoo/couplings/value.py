"""The value a WAM learns beside its future (Cosmos-Policy's value frame, the planners' learned value):
the discounted return after the chunk, from what every window records of its episode.

A successful episode earns reward 1 at its last frame, a failed one 0, so the return from the state
after executing an H-step chunk is success * gamma ** max(steps_to_go - H, 0): the progress toward
success that best-of-N planning ranks candidates by. Scaled to [-1, 1], as Cosmos-Policy normalizes
every non-image modality. Windows whose episode outcome is unknown (internet video) have no target.
"""
from __future__ import annotations

import torch


def discounted_return(batch, horizon: int, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (target in [-1, 1] [B], mask [B]: the windows whose episode outcome is known)."""
    if batch.steps_to_go is None or batch.success is None:
        zeros = torch.zeros(len(batch), device=batch.actions.device)
        return zeros, zeros.bool()
    known = torch.isfinite(batch.success)
    steps = (batch.steps_to_go - horizon).clamp(min=0).float()
    target = torch.where(known, batch.success, 0.0).float() * gamma ** steps
    return 2 * target - 1, known
