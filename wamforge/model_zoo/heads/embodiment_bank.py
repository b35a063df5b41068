"""Per-embodiment action/proprio projections stored as one weight bank indexed by embodiment id.

A new robot adds a row to each bank rather than new modules. Action and proprio vectors are
zero-padded to A_max / P_max and masks zero the padding. All projections start at zero, so the
rows of dims an embodiment never uses get no gradient and stay exactly zero: padding cannot leak
in or out even when an inference caller passes no mask.
"""
from __future__ import annotations

import torch
from torch import nn


class EmbodimentBank(nn.Module):
    def __init__(self, num_embodiments: int, max_action_dim: int, max_proprio_dim: int, dim: int):
        super().__init__()
        self.action_in = nn.Parameter(torch.zeros(num_embodiments, max_action_dim, dim))
        self.action_in_bias = nn.Parameter(torch.zeros(num_embodiments, dim))
        self.action_out = nn.Parameter(torch.randn(num_embodiments, dim, max_action_dim) / dim**0.5)
        self.action_out_bias = nn.Parameter(torch.zeros(num_embodiments, max_action_dim))
        self.proprio_in = nn.Parameter(torch.zeros(num_embodiments, max_proprio_dim, dim))
        self.proprio_in_bias = nn.Parameter(torch.zeros(num_embodiments, dim))

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
