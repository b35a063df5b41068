"""A flow-matching action expert that cross-attends one context: a post-prediction head (§4.3.3).

The context is whatever the substrate hands it: tapped trunk features (mimic-video's decoder reading
a mid-layer at noise tau, VPP) or the predicted future latents (DiT4DiT). The trunk runs once; this
small transformer then denoises the action chunk over the cached context, step after step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from wamforge.config.base import Strict
from wamforge.model_zoo.common.layers import (FREQ_DIM, FP32LayerNorm, FP32Linear, TimestepEmbedding,
                                             TransformerBlock, init_as_wan)


class ActionExpertConfig(Strict):
    kind: Literal["cross_attention"] = "cross_attention"
    dim: int = 64
    layers: int = 2
    heads: int = 4


@dataclass(frozen=True)
class ProjectedContext:
    """A head's cross-attention keys and values, one (k, v) per block. The context is the same at
    every action denoising step, so inference projects it once per chunk (`prepare`)."""
    per_block: tuple[tuple[torch.Tensor, torch.Tensor], ...]


class ActionExpert(nn.Module):
    """Tokens: H action tokens + 1 proprio token, each block AdaLN'd by the action timestep."""

    def __init__(self, cfg: ActionExpertConfig, context_dim: int, horizon: int, eps: float = 1e-6):
        super().__init__()
        dim = cfg.dim
        self.position_embedding = nn.Parameter(torch.randn(1, horizon + 1, dim) * 0.02)  # last row: proprio
        self.time_embedder = TimestepEmbedding(FREQ_DIM, dim)
        self.act_fn = nn.SiLU()
        self.time_proj = FP32Linear(dim, 6 * dim)
        self.context_norm = FP32LayerNorm(context_dim, eps)  # tapped DiT states are not normalized
        self.context_proj = nn.Linear(context_dim, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, 4 * dim, cfg.heads) for _ in range(cfg.layers))
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        init_as_wan(self, (self.time_embedder.linear_1, self.time_embedder.linear_2, self.time_proj))

    def prepare(self, features: torch.Tensor) -> ProjectedContext:
        """Trunk features [B, L, context_dim] -> every block's cross-attention keys and values."""
        context = self.context_proj(self.context_norm(features).type_as(self.position_embedding))
        return ProjectedContext(tuple(block.attn2.project_context(context) for block in self.blocks))

    def forward(self, action_tokens: torch.Tensor, proprio_token: torch.Tensor, timestep: torch.Tensor,
                features: torch.Tensor | ProjectedContext) -> torch.Tensor:
        """action_tokens [B, H, dim], proprio_token [B, 1, dim], timestep [B] in [0, 1000], trunk
        features [B, L, context_dim] (or `prepare`d) -> hidden states of the action tokens [B, H, dim]."""
        horizon = action_tokens.shape[1]
        x = torch.cat([action_tokens, proprio_token], dim=1) + self.position_embedding
        temb = self.time_embedder(timestep)[:, None]  # [B, 1, dim]: one timestep for all tokens
        timestep_proj = self.time_proj(self.act_fn(temb)).unflatten(-1, (6, -1))
        context = features if isinstance(features, ProjectedContext) else self.prepare(features)
        for block, kv in zip(self.blocks, context.per_block):
            x = block(x, kv, timestep_proj)
        shift, scale = (self.scale_shift_table.float() + temb[:, :, None]).unbind(dim=2)
        return (self.norm_out(x[:, :horizon]) * (1 + scale) + shift).type_as(x)
