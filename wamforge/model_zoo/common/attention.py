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
              key_padding_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention over [B, heads, L, d] tensors.

    key_padding_mask [B, Lk] is True for real keys; attn_mask (bool [Lq, Lk] or broadcastable to
    [B, heads, Lq, Lk]) is True where a query may attend, e.g. `blockwise_causal_mask`. Any mask
    takes torch SDPA, which has fused masked kernels of its own; flash-attn and xformers would
    need varlen packing or aligned bias tensors for the same result, so they serve unmasked calls.
    """
    if key_padding_mask is None and attn_mask is None and q.is_cuda:
        flash = _flash_attn_func() if q.dtype in (torch.float16, torch.bfloat16) else None
        fused = flash or _xformers_attention()
        if fused is not None:  # both take [B, L, heads, d]
            out = fused(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return out.transpose(1, 2)
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    if attn_mask is not None:
        mask = attn_mask if mask is None else mask & attn_mask
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def blockwise_causal_mask(block_sizes: list[int], device=None) -> torch.Tensor:
    """bool [L, L]: a token sees every token of its own block and of the blocks before it.

    Blocks are frames for a causal video backbone ([tokens_per_frame] * frames); placing an
    action block right after the current frame's block ([frame0, actions, frame1, ...]) gives
    action tokens that cannot see future video while future frames can see the actions.
    """
    block_of = torch.repeat_interleave(torch.arange(len(block_sizes), device=device),
                                       torch.tensor(block_sizes, device=device))
    return block_of[:, None] >= block_of[None, :]
