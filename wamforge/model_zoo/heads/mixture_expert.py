"""A mixture-of-transformers action expert: one narrow action block joins each video trunk block (§4.3.3).

Fast-WAM (Tsinghua / Galaxea, code yuantianyuan01/FastWAM): the video expert is the Wan trunk and a
narrow ActionDiT, with its own AdaLN, FFN and width, is joined to it layer by layer. Its attention
runs in the trunk's head space: q/k/v project from the expert's width to trunk heads x trunk
head_dim, so the action queries attend over [trunk layer i's keys/values of the observed frames |
the action tokens' own keys/values] in one softmax, and the output projects back to the expert's
width. Video never attends to actions, so the trunk's keys/values of the observed frames (clean,
t = 0) are computed once per chunk (`prepare`) and every action denoising step reuses them.
Action and proprio tokens carry 1D RoPE over their index; the video keys keep the trunk's 3D RoPE.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from wamforge.config.base import Strict
from wamforge.model_zoo.common.attention import attention
from wamforge.model_zoo.common.layers import (FREQ_DIM, FeedForward, FP32LayerNorm, FP32Linear, RMSNorm,
                                             TimestepEmbedding, apply_rotary, init_as_wan)
from wamforge.model_zoo.heads.action_expert import ProjectedContext
from wamforge.model_zoo.heads.layerwise_expert import rope_1d


class MixtureExpertConfig(Strict):
    kind: Literal["mixture"] = "mixture"
    dim: int = 64  # the expert's own width; its attention width is the trunk's (heads x head_dim)
    ffn_dim: int | None = None  # default 4 * dim


class MixtureAttention(nn.Module):
    """Action tokens' attention in the trunk's head space, over the video keys/values followed by their own."""

    def __init__(self, dim: int, heads: int, head_dim: int, eps: float = 1e-6):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])  # back to the expert's width
        self.norm_q = RMSNorm(inner, eps)  # q/k RMSNorm over all heads, as the trunk's attention does
        self.norm_k = RMSNorm(inner, eps)

    def forward(self, x: torch.Tensor, video_kv: tuple[torch.Tensor, torch.Tensor],
                rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x [B, L, dim]; video_kv: keys, values [B, heads, L_video, head_dim] -> [B, L, dim]."""
        q, k = self.norm_q(self.to_q(x)), self.norm_k(self.to_k(x))
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, self.to_v(x)))
        q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        video_k, video_v = video_kv
        if video_k.shape[1] != self.heads or video_k.shape[-1] != q.shape[-1]:
            raise ValueError(f"trunk keys of {video_k.shape[1]} heads x {video_k.shape[-1]} do not match the "
                             f"expert's head space of {self.heads} x {q.shape[-1]}")
        out = attention(q, torch.cat([video_k, k], dim=2), torch.cat([video_v, v], dim=2))
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class MixtureBlock(nn.Module):
    """AdaLN self-attention in the joint head space -> AdaLN FFN, at the expert's own width."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn = MixtureAttention(dim, heads, head_dim, eps)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = FeedForward(dim, ffn_dim)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, video_kv: tuple[torch.Tensor, torch.Tensor], timestep_proj: torch.Tensor,
                rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        shift, scale, gate, c_shift, c_scale, c_gate = (self.scale_shift_table.float()
                                                        + timestep_proj.float()).unbind(dim=2)
        h = (self.norm1(x) * (1 + scale) + shift).type_as(x)
        x = (x.float() + self.attn(h, video_kv, rotary).float() * gate).type_as(x)
        h = (self.norm2(x) * (1 + c_scale) + c_shift).type_as(x)
        return (x.float() + self.ffn(h).float() * c_gate).type_as(x)


class MixtureActionExpert(nn.Module):
    """Tokens: 1 proprio token, then H action tokens; block i attends with trunk block i's observed keys/values."""

    def __init__(self, cfg: MixtureExpertConfig, context_dim: int, horizon: int, layers: int, heads: int,
                 eps: float = 1e-6):
        """context_dim: the trunk's width, heads: its attention heads (their head_dim is the joint head space)."""
        super().__init__()
        if context_dim % heads or (context_dim // heads) % 2:
            raise ValueError(f"the trunk's width {context_dim} must split into {heads} heads of an even width "
                             "for rotary positions.")
        dim = cfg.dim
        self.layers, self.horizon, self.heads, self.head_dim = layers, horizon, heads, context_dim // heads
        self.time_embedder = TimestepEmbedding(FREQ_DIM, dim)
        self.act_fn = nn.SiLU()
        self.time_proj = FP32Linear(dim, 6 * dim)
        ffn_dim = 4 * dim if cfg.ffn_dim is None else cfg.ffn_dim
        self.blocks = nn.ModuleList(MixtureBlock(dim, ffn_dim, heads, self.head_dim, eps) for _ in range(layers))
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        # initialised fresh (Wan's recipe), not interpolated from the trunk's weights as Fast-WAM does
        init_as_wan(self, (self.time_embedder.linear_1, self.time_embedder.linear_2, self.time_proj))

    def prepare(self, per_layer_kv: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> ProjectedContext:
        """One (keys, values) [B, heads, L_video, head_dim] per trunk block -> the context every step reads.
        The trunk's keys are already normed and rotated, so packing is only a check and a cast."""
        if isinstance(per_layer_kv, ProjectedContext):
            return per_layer_kv
        if len(per_layer_kv) != self.layers:
            raise ValueError(f"MixtureActionExpert joins {self.layers} trunk blocks but got {len(per_layer_kv)} "
                             "(keys, values) pairs.")
        dtype = self.scale_shift_table.dtype
        return ProjectedContext(tuple((k.to(dtype), v.to(dtype)) for k, v in per_layer_kv))

    def forward(self, action_tokens: torch.Tensor, proprio_token: torch.Tensor, timestep: torch.Tensor,
                context: Sequence[tuple[torch.Tensor, torch.Tensor]] | ProjectedContext) -> torch.Tensor:
        """action_tokens [B, H, dim], proprio_token [B, 1, dim], timestep [B] in [0, 1000], context: the
        trunk's per-block (keys, values) of the observed frames (or `prepare`d) -> hidden states [B, H, dim]."""
        context = self.prepare(context)
        x = torch.cat([proprio_token, action_tokens], dim=1)
        rotary = rope_1d(torch.arange(x.shape[1], device=x.device), self.head_dim)  # 1D RoPE, proprio at 0
        temb = self.time_embedder(timestep)[:, None]  # [B, 1, dim]: one action flow time for all tokens
        timestep_proj = self.time_proj(self.act_fn(temb)).unflatten(-1, (6, -1))
        for block, kv in zip(self.blocks, context.per_block):
            x = block(x, kv, timestep_proj, rotary)
        shift, scale = (self.scale_shift_table.float() + temb[:, :, None]).unbind(dim=2)
        return (self.norm_out(x[:, 1:]) * (1 + scale) + shift).type_as(x)
