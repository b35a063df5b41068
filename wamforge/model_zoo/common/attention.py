"""Multi-head attention with the fastest backend available at run time.

flash-attn and xformers are optional GPU extras: they are imported lazily, once, and only when a
CUDA tensor asks for them, so CPU installs never touch them.

Masked self-attention (block-causal, teacher forcing, the couplings' rules of `masks.py`) goes to
torch SDPA with a dense bool mask, the reference, or to FlexAttention with a `BlockMask`
(`as_block_mask`), whose kernel skips every block of keys a block of queries may not see. Which
one serves a masked call is `masked_backend(device)`: `set_masked_attention("auto" | "sdpa" |
"flex")`, where auto takes FlexAttention on CUDA and SDPA on CPU (FlexAttention runs forward on
CPU too, unfused and without a backward, which the tests use to check it against SDPA).
"""
from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

MASKED_BACKENDS = ("auto", "sdpa", "flex")
_masked = {"backend": "auto"}


def set_masked_attention(backend: str) -> None:
    """Which kernel serves masked self-attention from now on (see the module docstring)."""
    if backend not in MASKED_BACKENDS:
        raise ValueError(f"unknown masked attention backend {backend!r}; one of {', '.join(MASKED_BACKENDS)}")
    _masked["backend"] = backend


def masked_backend(device: torch.device) -> str:
    """"flex" or "sdpa": the kernel a masked self-attention on `device` runs."""
    backend = _masked["backend"]
    if backend == "auto":
        return "flex" if torch.device(device).type == "cuda" else "sdpa"
    return backend


def as_block_mask(mask: torch.Tensor, block_size: int = 128) -> BlockMask:
    """A dense bool mask [Lq, Lk] (True = may attend) as FlexAttention's BlockMask. The mask is
    evaluated once, here; the kernel then skips the blocks it wholly masks."""
    dense = mask.to(torch.bool)

    def mask_mod(batch, head, q_index, kv_index):
        return dense[q_index, kv_index]
    return create_block_mask(mask_mod, None, None, dense.shape[0], dense.shape[1], device=dense.device,
                             BLOCK_SIZE=block_size)


@functools.cache
def _flex_kernel(device_type: str):
    """FlexAttention compiled to a fused kernel on CUDA; eager (unfused, exact) elsewhere."""
    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> torch.Tensor:
    with warnings.catch_warnings():  # eager on CPU warns that it is unfused: that is the point there
        warnings.simplefilter("ignore", UserWarning)
        return _flex_kernel(q.device.type)(q, k, v, block_mask=block_mask)


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
    A `BlockMask` as attn_mask takes FlexAttention.
    """
    if isinstance(attn_mask, BlockMask):
        if key_padding_mask is not None:
            raise ValueError("a BlockMask carries the whole mask: fold key padding into it")
        return _flex(q, k, v, attn_mask)
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
