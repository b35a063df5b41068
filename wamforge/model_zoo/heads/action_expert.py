"""A flow-matching action expert that cross-attends one context: a post-prediction head (§4.3.3).

The context is whatever the substrate hands it: tapped trunk features (mimic-video's decoder reading
a mid-layer at noise tau, VPP) or the predicted future latents (DiT4DiT). The trunk runs once; this
small transformer then denoises the action chunk over the cached context, step after step.

With `queries` (VPP's Video-Former) a resampler first compresses the context: learned latent queries
attend to every context token, of every frame, through a few cross-attention blocks, and the expert
then cross-attends those few tokens instead, so its cost no longer grows with the video's length.
It runs once per call, in `prepare`, with no action timestep: every denoising step reuses it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from wamforge.config.base import Strict
from wamforge.model_zoo.common.layers import (FREQ_DIM, FP32LayerNorm, FP32Linear, TimestepEmbedding,
                                             TransformerBlock, init_as_wan)


class ActionExpertConfig(Strict):
    kind: Literal["cross_attention"] = "cross_attention"
    dim: int = 64
    layers: int = 2
    heads: int = 4
    queries: int | None = Field(None, ge=1, description="learned queries a resampler compresses the context into "
                                                        "(VPP's Video-Former); None: cross-attend the context itself")
    resampler_layers: int = Field(2, ge=1, description="the resampler's blocks, when `queries` is set")


@dataclass(frozen=True)
class ProjectedContext:
    """A head's cross-attention keys and values, one (k, v) per block. The context is the same at
    every action denoising step, so inference projects it once per chunk (`prepare`)."""
    per_block: tuple[tuple[torch.Tensor, torch.Tensor], ...]


class Resampler(nn.Module):
    """Context tokens [B, L, dim] -> [B, queries, dim] whatever L: learned queries that self-attend and
    cross-attend the context, block after block (a Perceiver-style resampler, as VPP's Video-Former)."""

    def __init__(self, dim: int, queries: int, layers: int, heads: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, queries, dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, 4 * dim, heads) for _ in range(layers))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        x = self.queries.expand(len(context), -1, -1)
        # no timestep to modulate by: each block's AdaLN is its learned table alone
        constant = self.queries.new_zeros(1, 1, 6, x.shape[-1])
        for block in self.blocks:
            x = block(x, context, constant)
        return x


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
        self.resampler = None if cfg.queries is None else Resampler(dim, cfg.queries, cfg.resampler_layers, cfg.heads)
        self.blocks = nn.ModuleList(TransformerBlock(dim, 4 * dim, cfg.heads) for _ in range(cfg.layers))
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        init_as_wan(self, (self.time_embedder.linear_1, self.time_embedder.linear_2, self.time_proj))

    def prepare(self, features: torch.Tensor) -> ProjectedContext:
        """Trunk features [B, L, context_dim] -> every block's cross-attention keys and values (over
        the resampler's `queries` tokens when it has one)."""
        context = self.context_proj(self.context_norm(features).type_as(self.position_embedding))
        if self.resampler is not None:
            context = self.resampler(context)
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
