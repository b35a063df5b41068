"""Per-layer flow-matching action head: one action block joins each video trunk block.

Genie Envisioner, GE-Act: per-layer action blocks cross-attending the same layer's video states.
Action block i self-attends over `[state token | action chunk]` with 1D rotary positions over the
token index, cross-attends to trunk layer i's hidden states (all views flattened into one
sequence), then runs an FFN; every block is AdaLN-modulated by the action's flow-matching
timestep. The video pass runs once (at maximum noise) and its per-layer states are cached by the
caller and passed here unchanged for every action denoising step; only these blocks run per step.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from wamforge.config.base import Strict
from wamforge.model_zoo.heads.action_expert import ProjectedContext
from wamforge.model_zoo.common.layers import (FREQ_DIM, FP32LayerNorm, FP32Linear, TimestepEmbedding,
                                             TransformerBlock, init_as_wan)


class LayerwiseExpertConfig(Strict):
    kind: Literal["layerwise"] = "layerwise"
    dim: int = 64
    heads: int = 4
    ffn_dim: int | None = None  # default 4 * dim


def rope_1d(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [L] -> (cos, sin), each [L, head_dim / 2] fp32, for `apply_rotary`'s adjacent
    channel pairs; angles are built in fp64 as Wan's RoPE does, so long positions stay exact."""
    if head_dim % 2:
        raise ValueError(f"rotary positions need an even head dim, got {head_dim}.")
    freqs = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim)
    angles = positions.to(torch.float64)[:, None] * freqs
    return angles.cos().float(), angles.sin().float()


class LayerwiseActionExpert(nn.Module):
    """Tokens: 1 proprio/state token, then H action tokens; block i cross-attends trunk layer i."""

    def __init__(self, cfg: LayerwiseExpertConfig, context_dim: int, layers: int, horizon: int, eps: float = 1e-6):
        super().__init__()
        dim, heads = cfg.dim, cfg.heads
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"dim {dim} must split into {heads} heads of an even width for rotary positions.")
        self.layers = layers
        self.horizon = horizon
        self.head_dim = dim // heads
        self.time_embedder = TimestepEmbedding(FREQ_DIM, dim)
        self.act_fn = nn.SiLU()
        self.time_proj = FP32Linear(dim, 6 * dim)
        # one norm + projection per layer: each trunk layer's states live in a different basis
        self.context_norm = nn.ModuleList(FP32LayerNorm(context_dim, eps) for _ in range(layers))
        self.context_proj = nn.ModuleList(nn.Linear(context_dim, dim) for _ in range(layers))
        ffn_dim = 4 * dim if cfg.ffn_dim is None else cfg.ffn_dim
        self.blocks = nn.ModuleList(TransformerBlock(dim, ffn_dim, heads, eps=eps) for _ in range(layers))
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        init_as_wan(self, (self.time_embedder.linear_1, self.time_embedder.linear_2, self.time_proj))

    def prepare(self, features: list[torch.Tensor]) -> ProjectedContext:
        """One [B, L_i, context_dim] tensor per joined trunk layer -> each block's keys and values."""
        if len(features) != self.layers:
            raise ValueError(f"LayerwiseActionExpert joins {self.layers} trunk layers but got "
                             f"{len(features)} feature tensors.")
        dtype = self.scale_shift_table.dtype
        return ProjectedContext(tuple(
            block.attn2.project_context(proj(norm(states).to(dtype)))  # trunk states are not normalized
            for block, norm, proj, states in zip(self.blocks, self.context_norm, self.context_proj, features)))

    def forward(self, action_tokens: torch.Tensor, proprio_token: torch.Tensor, timestep: torch.Tensor,
                features: list[torch.Tensor] | ProjectedContext) -> torch.Tensor:
        """action_tokens [B, H, dim], proprio_token [B, 1, dim], timestep [B] in [0, 1000], features:
        one [B, L_i, context_dim] tensor per joined trunk layer (or `prepare`d) -> hidden states of
        the action tokens [B, H, dim]."""
        context = features if isinstance(features, ProjectedContext) else self.prepare(features)
        x = torch.cat([proprio_token, action_tokens], dim=1)  # GE's [state | actions] order
        # no learned positions: RoPE over the token index orders the chunk (state at 0)
        rotary = rope_1d(torch.arange(x.shape[1], device=x.device), self.head_dim)
        temb = self.time_embedder(timestep)[:, None]  # [B, 1, dim]: one timestep for all tokens
        timestep_proj = self.time_proj(self.act_fn(temb)).unflatten(-1, (6, -1))
        for block, kv in zip(self.blocks, context.per_block):
            x = block(x, kv, timestep_proj, rotary=rotary)
        shift, scale = (self.scale_shift_table.float() + temb[:, :, None]).unbind(dim=2)
        return (self.norm_out(x[:, 1:]) * (1 + scale) + shift).type_as(x)
