"""Multi-head attention with the fastest backend available at run time.

flash-attn and xformers are optional GPU extras: they are imported lazily, once, and only when a
CUDA tensor asks for them, so CPU installs never touch them.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache
def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


@functools.cache
def _xformers_attention():
    try:
        from xformers.ops import memory_efficient_attention
    except ImportError:
        return None
    return memory_efficient_attention


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention over [B, heads, L, d] tensors; key_padding_mask [B, Lk] is True for real keys.

    Padded keys always take torch SDPA, which has fused masked kernels of its own; flash-attn
    and xformers would need varlen packing or aligned bias tensors for the same result.
    """
    if key_padding_mask is None and q.is_cuda:
        flash = _flash_attn_func() if q.dtype in (torch.float16, torch.bfloat16) else None
        fused = flash or _xformers_attention()
        if fused is not None:  # both take [B, L, heads, d]
            out = fused(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return out.transpose(1, 2)
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
