"""Per-embodiment action/proprio projections stored as one weight bank indexed by embodiment id.

A new robot adds a row to each bank rather than new modules. Action and proprio vectors are
zero-padded to A_max / P_max; masks zero the padding so it never reaches the projections.
"""
from __future__ import annotations

import torch
from torch import nn


class EmbodimentBank(nn.Module):
    def __init__(self, num_embodiments: int, max_action_dim: int, max_proprio_dim: int, dim: int):
        super().__init__()
        self.action_in = nn.Parameter(torch.randn(num_embodiments, max_action_dim, dim) / max_action_dim**0.5)
        self.action_in_bias = nn.Parameter(torch.zeros(num_embodiments, dim))
        self.action_out = nn.Parameter(torch.zeros(num_embodiments, dim, max_action_dim))  # untrained: v = 0
        self.action_out_bias = nn.Parameter(torch.zeros(num_embodiments, max_action_dim))
        self.proprio_in = nn.Parameter(torch.randn(num_embodiments, max_proprio_dim, dim) / max_proprio_dim**0.5)
        self.proprio_in_bias = nn.Parameter(torch.zeros(num_embodiments, dim))
        # the action dims each embodiment really has, recorded from training batches and saved with
        # the weights, so inference that knows only an embodiment id masks padding as training did
        self.register_buffer("action_dims", torch.zeros(num_embodiments, max_action_dim, dtype=torch.bool))

    @torch.no_grad()
    def record_action_dims(self, action_mask: torch.Tensor, embodiment_id: torch.Tensor) -> None:
        """action_mask [B, H, A_max]: a dim is real for an embodiment once any sample uses it."""
        seen = torch.zeros(self.action_dims.shape, device=action_mask.device)
        seen.index_add_(0, embodiment_id, action_mask.any(dim=1).float())
        self.action_dims |= seen > 0

    def action_mask(self, embodiment_id: torch.Tensor) -> torch.Tensor:
        """[B, A_max] bool; an embodiment never trained with actions keeps every dim."""
        dims = self.action_dims[embodiment_id]
        return dims | ~dims.any(dim=-1, keepdim=True)

    def embed_actions(self, actions: torch.Tensor, mask: torch.Tensor, embodiment_id: torch.Tensor) -> torch.Tensor:
        """actions [B, H, A_max], mask broadcastable to it -> tokens [B, H, dim]."""
        actions = (actions * mask).to(self.action_in.dtype)
        return torch.einsum("bha,bad->bhd", actions, self.action_in[embodiment_id]) + self.action_in_bias[embodiment_id, None]

    def embed_proprio(self, proprio: torch.Tensor, mask: torch.Tensor, embodiment_id: torch.Tensor) -> torch.Tensor:
        """proprio [B, P_max], mask [B, P_max] -> one token [B, 1, dim]."""
        proprio = (proprio * mask).to(self.proprio_in.dtype)
        token = torch.einsum("bp,bpd->bd", proprio, self.proprio_in[embodiment_id]) + self.proprio_in_bias[embodiment_id]
        return token[:, None]

    def project_actions(self, hidden: torch.Tensor, embodiment_id: torch.Tensor) -> torch.Tensor:
        """hidden [B, H, dim] -> [B, H, A_max]."""
        return torch.einsum("bhd,bda->bha", hidden, self.action_out[embodiment_id]) + self.action_out_bias[embodiment_id, None]
