"""Multi-head attention with the fastest backend available at run time.

flash-attn and xformers are optional GPU extras: they are imported lazily, once, and only when a
CUDA tensor asks for them, so CPU installs never touch them.

Masked self-attention (block-causal, teacher forcing, the couplings' rules of `masks.py`) goes to
torch SDPA with a dense bool mask, the reference, or to FlexAttention with a `BlockMask`
(`as_block_mask`), whose kernel skips every block of keys a block of queries may not see. Which
one serves a masked call is `masked_backend(device)`: `set_masked_attention("auto" | "sdpa" |
"flex")`, where auto takes FlexAttention on CUDA and SDPA on CPU (FlexAttention runs forward on
CPU too, unfused and without a backward, which the tests use to check it against SDPA).

Attention to padded keys (cross-attention to captions right-padded to max_tokens, `key_padding_mask`
True on real tokens) goes to torch SDPA with the mask, the reference, or to flash-attn's varlen
kernel over the real keys only (`varlen_attention`): a dense mask rules out SDPA's flash kernel and
still spends the work on the padding. `set_padded_attention("auto" | "sdpa" | "flash_varlen")`, where
auto takes varlen where it runs (flash-attn installed, CUDA, fp16/bf16). With no padding in the batch
the mask is dropped and the call runs unmasked. A trunk turns its caption mask into `PaddedKeys` once
per forward (`padded_keys`), since telling padding apart and sizing the packed keys each wait for
the device.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

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


PADDED_BACKENDS = ("auto", "sdpa", "flash_varlen")
_padded = {"backend": "auto"}


def set_padded_attention(backend: str) -> None:
    """Which kernel serves attention to padded keys from now on (see the module docstring)."""
    if backend not in PADDED_BACKENDS:
        raise ValueError(f"unknown padded attention backend {backend!r}; one of {', '.join(PADDED_BACKENDS)}")
    if backend == "flash_varlen" and _flash_attn_varlen_func() is None:
        raise RuntimeError("flash_varlen attention needs the flash-attn package, which is not installed")
    _padded["backend"] = backend


def _flash_varlen_unavailable(q: torch.Tensor) -> str | None:
    """Why flash-attn's varlen kernel cannot take these queries, or None when it can. The device
    and dtype are checked first, so CPU runs never import flash-attn."""
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return f"flash_varlen attention needs CUDA fp16/bf16 tensors, not {q.device.type} {q.dtype}"
    if _flash_attn_varlen_func() is None:
        return "flash_varlen attention needs the flash-attn package, which is not installed"
    return None


def padded_backend(q: torch.Tensor) -> str:
    """"flash_varlen" or "sdpa": the kernel an attention of `q` to padded keys runs."""
    backend = _padded["backend"]
    if backend == "auto":
        return "sdpa" if _flash_varlen_unavailable(q) else "flash_varlen"
    if backend == "flash_varlen" and (reason := _flash_varlen_unavailable(q)):
        raise RuntimeError(reason)
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
def _flash_attn_varlen_func():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


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

    key_padding_mask [B, Lk] (or its `PaddedKeys`) is True for real keys; alone it takes `padded_attention`. attn_mask
    (bool [Lq, Lk] or broadcastable to [B, heads, Lq, Lk]) is True where a query may attend, e.g.
    `blockwise_causal_mask`, and takes torch SDPA (with the key padding folded in), which has fused
    masked kernels of its own. A `BlockMask` as attn_mask takes FlexAttention. Unmasked calls on
    CUDA take flash-attn or xformers where installed.
    """
    if isinstance(attn_mask, BlockMask):
        if key_padding_mask is not None:
            raise ValueError("a BlockMask carries the whole mask: fold key padding into it")
        return _flex(q, k, v, attn_mask)
    if key_padding_mask is not None and attn_mask is None:
        return padded_attention(q, k, v, key_padding_mask)
    if isinstance(key_padding_mask, PaddedKeys):
        key_padding_mask = key_padding_mask.mask
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


@dataclass(frozen=True)
class PaddedKeys:
    """A key-padding mask with what the varlen kernel needs, found once and shared by every block."""
    mask: torch.Tensor  # bool [B, Lk], True on real keys; every sample has at least one
    cu_seqlens: torch.Tensor  # int32 [B + 1]: where each sample's real keys start, packed back to back
    max_len: int


def padded_keys(mask: torch.Tensor | PaddedKeys | None) -> PaddedKeys | None:
    """The `PaddedKeys` of a bool [B, Lk] key mask; None when every key is real, so the attention
    runs unmasked and SDPA (or flash-attn) takes a fused kernel."""
    if mask is None or isinstance(mask, PaddedKeys):
        return mask
    mask = mask.to(torch.bool)
    return None if mask.all() else _packing(mask)


def _packing(mask: torch.Tensor) -> PaddedKeys:
    lengths = mask.sum(1, dtype=torch.int32)
    return PaddedKeys(mask, F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0)), int(lengths.max()))


def padded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     key_padding_mask: torch.Tensor | PaddedKeys) -> torch.Tensor:
    """Attention over [B, heads, L, d] to keys of which key_padding_mask [B, Lk] marks the real ones;
    the backend is `padded_backend(q)`."""
    backend = padded_backend(q)  # first, so that an unrunnable choice fails on every batch
    keys = padded_keys(key_padding_mask)
    if keys is None:
        return attention(q, k, v)
    if backend == "flash_varlen":
        return varlen_attention(q, k, v, keys)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keys.mask[:, None, None, :])


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: torch.Tensor | PaddedKeys,
                     kernel=None) -> torch.Tensor:
    """Attention over [B, heads, L, d] as one varlen call that sees only the real keys.

    Every sample keeps all its queries; its keys and values are the real positions of `keys` (a
    bool [B, Lk] mask or its `PaddedKeys`), packed back to back, so no work goes to the padding.
    `kernel` takes flash_attn_varlen_func's arguments (q, k, v [total, heads, d], cu_seqlens_q,
    cu_seqlens_k int32 [B + 1], max_seqlen_q, max_seqlen_k) and returns [total_q, heads, d];
    flash-attn's by default.
    """
    kernel = kernel or _flash_attn_varlen_func()
    if not isinstance(keys, PaddedKeys):
        keys = _packing(keys.to(torch.bool))
    batch, heads, len_q, head_dim = q.shape
    cu_seqlens_q = torch.arange(0, (batch + 1) * len_q, len_q, dtype=torch.int32, device=q.device)
    packed_q = q.transpose(1, 2).reshape(batch * len_q, heads, head_dim)
    packed_k, packed_v = (t.transpose(1, 2)[keys.mask] for t in (k, v))  # [total_k, heads, d]
    out = kernel(packed_q, packed_k, packed_v, cu_seqlens_q, keys.cu_seqlens, len_q, keys.max_len)
    return out.reshape(batch, len_q, heads, head_dim).transpose(1, 2)


def blockwise_causal_mask(block_sizes: list[int], device=None) -> torch.Tensor:
    """bool [L, L]: a token sees every token of its own block and of the blocks before it.

    Blocks are frames for a causal video backbone ([tokens_per_frame] * frames); placing an
    action block right after the current frame's block ([frame0, actions, frame1, ...]) gives
    action tokens that cannot see future video while future frames can see the actions.
    """
    block_of = torch.repeat_interleave(torch.arange(len(block_sizes), device=device),
                                       torch.tensor(block_sizes, device=device))
    return block_of[:, None] >= block_of[None, :]
