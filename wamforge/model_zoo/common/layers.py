"""Layers shared by trunks and heads: fp32 norms and linears, timestep embeddings, rotary
attention and the AdaLN transformer block.

Parameter names follow diffusers' Wan modules (attn1.to_q, ffn.net.0.proj, scale_shift_table), so
the Wan trunk built from them loads official weights one to one. Modulation, norms and the time
embedding run in fp32 even when the rest runs in bf16, as in Wan.

Self-attention optionally takes a `LayerCache` (keys and values of earlier tokens, kept by
`trunks/kv_cache.py` for interactive inference); without one the layers behave exactly as before.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wamforge.model_zoo.common.attention import attention
from wamforge.model_zoo.common.partitions import whole

FREQ_DIM = 256  # width of the sinusoidal timestep features


def sinusoidal_embedding(timestep: torch.Tensor, dim: int = FREQ_DIM) -> torch.Tensor:
    """[...] -> [..., dim] fp32, cos half first (diffusers' flip_sin_to_cos=True, shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=timestep.device) / half)
    angles = timestep.float()[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def _fp32(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.float()


class FP32Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.weight.float(), _fp32(self.bias))


class FP32LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x.float(), self.normalized_shape, _fp32(self.weight), _fp32(self.bias), self.eps)


class RMSNorm(nn.Module):
    """Normalizes in fp32 and returns the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).type_as(x)


class TimestepEmbedding(nn.Module):
    """Sinusoidal features -> MLP, in fp32."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = FP32Linear(in_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = FP32Linear(dim, dim)

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(sinusoidal_embedding(timestep, self.linear_1.in_features))))


def apply_rotary(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate channel pairs (x[2i], x[2i+1]) of x [B, heads, L, d] as complex numbers."""
    cos, sin = rotary
    real, imag = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)


class LayerCache:
    """Keys and values of one self-attention layer for the tokens cached so far.

    k, v are [B, heads, L_cached, head_dim], taken after the q/k norm and RoPE, so cached tokens keep
    the positions they were computed at. In write mode `extend` stores the new tokens' k/v; in read
    mode (write=False, e.g. the denoising steps of a chunk that is not final yet) it only reads.
    """

    def __init__(self, write: bool = True):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.write = write

    @property
    def tokens(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """New k, v [B, heads, L_new, d] -> (cached + new) k, v; stored when in write mode."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        if self.write:
            self.k, self.v = k, v
        return k, v

    def truncate(self, tokens: int) -> None:
        """Keep the first `tokens` cached tokens (drop later ones, e.g. a predicted frame)."""
        if not 0 <= tokens <= self.tokens:
            raise ValueError(f"cannot truncate a cache of {self.tokens} tokens to {tokens}")
        if tokens == 0:
            self.k = self.v = None
        else:  # clone: a view would pin the dropped tail's memory
            self.k, self.v = self.k[:, :, :tokens].clone(), self.v[:, :, :tokens].clone()


class Attention(nn.Module):
    """Self- or cross-attention; q/k RMSNorm spans all heads, as in Wan.

    With image_kv=True (I2V cross-attention) the queries also attend, separately and unmasked, to
    image tokens through add_k_proj / add_v_proj / norm_added_k (Wan's k_img, v_img, norm_k_img);
    the two attention outputs are summed before to_out.

    With kv_cache (self-attention only) the queries attend to the cached keys/values followed by
    the new ones; attn_mask, if given, must then span all of them ([L_new, L_cached + L_new]).

    A cross-attention context may come already projected, as the (keys, values) `project_context`
    returns: a head that attends to the same trunk states at every denoising step projects them once.
    """

    def __init__(self, dim: int, heads: int, qk_norm: bool = True, eps: float = 1e-6, image_kv: bool = False):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # a list only so names read to_out.0.*
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.sequence_shard = None  # set by a trunk's shard_sequence: self-attention across the group
        if image_kv:  # the image tokens are already projected to dim by the image embedder
            self.add_k_proj = nn.Linear(dim, dim)
            self.add_v_proj = nn.Linear(dim, dim)
            self.norm_added_k = RMSNorm(dim, eps)  # always present, as in Wan and diffusers

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context [B, L, dim] -> (keys, values) [B, heads, L, head_dim]."""
        k, v = self.norm_k(self.to_k(context)), self.to_v(context)
        return tuple(t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (k, v))

    def forward(self, x: torch.Tensor, context: torch.Tensor | tuple | None = None, rotary=None,
                context_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                image_context: torch.Tensor | None = None, kv_cache: LayerCache | None = None) -> torch.Tensor:
        if kv_cache is not None and (context is not None or self.sequence_shard is not None):
            raise ValueError("kv_cache serves unsharded self-attention only")
        q = self.norm_q(self.to_q(x)).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k, v = context if isinstance(context, tuple) else self.project_context(x if context is None else context)
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        if kv_cache is not None:  # rotary covers the new tokens only; cached keys are already rotated
            k, v = kv_cache.extend(k, v)
        if self.sequence_shard is not None and context is None:
            out = self.sequence_shard.self_attention(q, k, v, attn_mask=attn_mask)
        else:
            out = attention(q, k, v, key_padding_mask=context_mask, attn_mask=attn_mask)
        if image_context is not None:
            k_img = self.norm_added_k(self.add_k_proj(image_context)).unflatten(-1, (self.heads, -1)).transpose(1, 2)
            v_img = self.add_v_proj(image_context).unflatten(-1, (self.heads, -1)).transpose(1, 2)
            out = out + attention(q, k_img, v_img)
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class GELUProjection(nn.Module):
    def __init__(self, dim: int, hidden: int, approximate: str = "tanh"):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, out_dim: int | None = None, approximate: str = "tanh"):
        super().__init__()
        # slot 1 is diffusers' dropout; kept so the weights are named net.0.proj and net.2
        self.net = nn.Sequential(GELUProjection(dim, hidden, approximate), nn.Identity(),
                                 nn.Linear(hidden, dim if out_dim is None else out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """AdaLN self-attention (RoPE) -> LayerNorm cross-attention -> AdaLN FFN."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, qk_norm: bool = True, eps: float = 1e-6,
                 image_kv: bool = False):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = Attention(dim, heads, qk_norm, eps)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.attn2 = Attention(dim, heads, qk_norm, eps, image_kv=image_kv)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = FeedForward(dim, ffn_dim)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, context: torch.Tensor, timestep_proj: torch.Tensor,
                rotary=None, context_mask: torch.Tensor | None = None,
                self_attn_mask: torch.Tensor | None = None,
                image_context: torch.Tensor | None = None, kv_cache: LayerCache | None = None) -> torch.Tensor:
        """x [B, L, dim]; timestep_proj [B, L or 1, 6, dim] (per token or broadcast over tokens);
        image_context [B, L_img, dim] (embedded image tokens, I2V blocks only); kv_cache: the
        self-attention's cache of earlier tokens (then self_attn_mask spans cached + new keys)."""
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            self.scale_shift_table.float() + timestep_proj.float()).unbind(dim=2)

        h = (self.norm1(x) * (1 + scale_msa) + shift_msa).type_as(x)
        attn = self.attn1(h, rotary=rotary, attn_mask=self_attn_mask, kv_cache=kv_cache)
        x = (x.float() + attn.float() * gate_msa).type_as(x)

        x = x + self.attn2(self.norm2(x).type_as(x), context, context_mask=context_mask, image_context=image_context)

        h = (self.norm3(x) * (1 + c_scale_msa) + c_shift_msa).type_as(x)
        return (x.float() + self.ffn(h).float() * c_gate_msa).type_as(x)


def init_as_wan(module: nn.Module, time_linears) -> None:
    """Wan's initialisation for a head built from these layers: xavier linears with zero biases,
    and small normal weights on the time embedding's linears (each gathered whole under ZeRO-3)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            with whole(layer.parameters(recurse=False)):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
    for layer in time_linears:
        with whole([layer.weight]):
            nn.init.normal_(layer.weight, std=0.02)
