"""Masked self-attention at 2-4k tokens, each backend beside torch SDPA with a dense bool mask (the
reference), on whatever device runs it.

Patterns, from the mask builder's rules (model_zoo/common/masks.py), on Wan2.1-1.3B's heads (12 x 128):
  block_causal     - frames of 256 tokens, each seeing itself and the frames before (a causal trunk);
  teacher_forcing  - DreamZero's clean copy + noisy blocks, twice the frames' tokens;
  hide             - video never sees 64 action tokens (PAD, Fast-WAM).
Backends: `sdpa` (dense mask), `flex` (FlexAttention with a BlockMask: compiled to a fused kernel on
CUDA, eager and unfused on CPU), `flex_compiled` (torch.compile on CPU as well, where inductor can
build it). The BlockMask is built once per pattern, outside the timing, as the trunk builds it once
per forward for all its blocks.

Padded-text cross-attention: the video tokens attend to captions padded to 512 slots (umT5's
max_tokens in Wan) of which only 20-100 per sample are real. `sdpa masked` (the dense key-padding
mask, the reference) beside `sdpa real tokens` (one SDPA per sample over its real tokens only: the
work varlen packing leaves) and, on CUDA with flash-attn, `flash varlen` (`varlen_attention`).

Writes benchmarks/results/bench_attention_<device>.json, or --out.

    .venv/bin/python benchmarks/bench_attention.py [--tokens 2048 4096 --repeats 3 --device cpu --out PATH]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch.nn.attention.flex_attention import flex_attention

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from wamforge.model_zoo.common.attention import as_block_mask, attention, padded_backend, varlen_attention  # noqa: E402
from wamforge.model_zoo.common.masks import BlockCausal, Hide, Layout, Span, TeacherForcing, build_mask  # noqa: E402
from bench_inference import timed  # noqa: E402

FRAME = 256
TEXT_SLOTS, REAL_TEXT_TOKENS = 512, (20, 45, 70, 100)  # one caption length per sample


def patterns(tokens: int) -> dict[str, torch.Tensor]:
    frames = tokens // FRAME
    video = [Span("video", FRAME, frame=f) for f in range(frames)]
    half = [Span("video", FRAME, frame=f) for f in range(frames // 2)]
    clean = [Span("video", FRAME, frame=f, clean=True) for f in range(frames // 2)]
    actions = Span("action", 64, frame=0)
    return {"block_causal": build_mask(Layout(video), [BlockCausal()]),
            "teacher_forcing": build_mask(Layout(clean + half), [TeacherForcing()]),
            "hide": build_mask(Layout(video[:-1] + [Span("video", FRAME - 64, frame=frames - 1), actions]),
                               [Hide(query=["video"], key=["action"])])}


def median_ms(fn, repeats: int, device) -> float:
    return statistics.median(timed(fn, 1, repeats, device))  # one warm-up call: it also compiles


def padded_text_row(tokens: int, heads: int, head_dim: int, repeats: int, device, dtype) -> dict:
    """Cross-attention of `tokens` video queries per sample to captions padded to TEXT_SLOTS."""
    real = torch.tensor(REAL_TEXT_TOKENS, device=device)
    padding = torch.arange(TEXT_SLOTS, device=device) < real[:, None]
    q = torch.randn(len(real), heads, tokens, head_dim, device=device, dtype=dtype)
    k, v = (torch.randn(len(real), heads, TEXT_SLOTS, head_dim, device=device, dtype=dtype) for _ in range(2))
    kernels = {"sdpa_masked": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=padding[:, None, None, :]),
               "sdpa_real_tokens": lambda: torch.cat([F.scaled_dot_product_attention(q[i:i + 1], k[i:i + 1, :, :n],
                                                                                    v[i:i + 1, :, :n])
                                                      for i, n in enumerate(REAL_TEXT_TOKENS)])}
    if padded_backend(q) == "flash_varlen":  # auto picks it where flash-attn runs
        kernels["flash_varlen"] = lambda: varlen_attention(q, k, v, padding)
    reference = kernels["sdpa_masked"]().float()
    return {"real_tokens": list(REAL_TEXT_TOKENS), "text_slots": TEXT_SLOTS,
            "ms": {name: median_ms(fn, repeats, device) for name, fn in kernels.items()},
            "max_abs_diff_vs_sdpa": {name: (fn().float() - reference).abs().max().item()
                                     for name, fn in kernels.items() if name != "sdpa_masked"}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="where the results go; benchmarks/results/bench_attention_<device>.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    console = Console(width=140)
    compiled = torch.compile(flex_attention, dynamic=False)
    rows, res = [], {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "dtype": str(dtype), "heads": args.heads, "head_dim": args.head_dim, "patterns": {},
                     "padded_text_cross_attention": {}}
    with torch.no_grad():
        for tokens in args.tokens:
            for name, dense in patterns(tokens).items():
                dense = dense.to(device)
                q, k, v = (torch.randn(1, args.heads, len(dense), args.head_dim, device=device, dtype=dtype)
                           for _ in range(3))
                block = as_block_mask(dense)
                ms = {"sdpa": median_ms(lambda: attention(q, k, v, attn_mask=dense), args.repeats, device),
                      "flex": median_ms(lambda: attention(q, k, v, attn_mask=block), args.repeats, device)}
                try:
                    ms["flex_compiled"] = median_ms(lambda: compiled(q, k, v, block_mask=block), args.repeats, device)
                except Exception as err:  # noqa: BLE001 - inductor may not build it on this machine: say why
                    ms["flex_compiled"] = None
                    res.setdefault("not_built", f"{type(err).__name__}: {str(err).splitlines()[0][:160]}")
                error = (attention(q, k, v, attn_mask=block).float() - attention(q, k, v, attn_mask=dense).float())
                sparsity = 1 - dense.float().mean().item()
                res["patterns"][f"{name}@{len(dense)}"] = {"ms": ms, "masked_share": round(sparsity, 3),
                                                           "max_abs_diff_vs_sdpa": error.abs().max().item()}
                rows.append((name, len(dense), sparsity, ms))
            res["padded_text_cross_attention"][f"text{TEXT_SLOTS}@{tokens}"] = padded_text_row(
                tokens, args.heads, args.head_dim, args.repeats, device, dtype)
    table = Table(title=f"masked self-attention, {res['device']}, {dtype}, {args.heads} heads x {args.head_dim}, "
                        f"median of {args.repeats}")
    for col in ("pattern", "tokens", "masked", "sdpa dense ms", "flex ms", "flex compiled ms", "sdpa / best flex"):
        table.add_column(col)
    for name, tokens, sparsity, ms in rows:
        best = min(v for k, v in ms.items() if k != "sdpa" and v is not None)
        table.add_row(name, str(tokens), f"{100 * sparsity:.0f}%", f"{ms['sdpa']:.1f}", f"{ms['flex']:.1f}",
                      "-" if ms["flex_compiled"] is None else f"{ms['flex_compiled']:.1f}", f"{ms['sdpa'] / best:.2f}x")
    console.print(table)
    if "not_built" in res:
        console.print(f"flex compiled not built here: {res['not_built']}")
    table = Table(title=f"padded-text cross-attention, {len(REAL_TEXT_TOKENS)} samples with "
                        f"{', '.join(map(str, REAL_TEXT_TOKENS))} of {TEXT_SLOTS} text tokens real")
    for col in ("video tokens", "sdpa masked ms", "sdpa real tokens ms", "flash varlen ms", "masked / best"):
        table.add_column(col)
    for key, row in res["padded_text_cross_attention"].items():
        ms = row["ms"]
        best = min(v for k, v in ms.items() if k != "sdpa_masked")
        table.add_row(key.split("@")[1], f"{ms['sdpa_masked']:.1f}", f"{ms['sdpa_real_tokens']:.1f}",
                      f"{ms['flash_varlen']:.1f}" if "flash_varlen" in ms else "-", f"{ms['sdpa_masked'] / best:.2f}x")
    console.print(table)
    out = args.out or ROOT / "benchmarks/results" / f"bench_attention_{device.type}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    console.print(f"written to {out}")


if __name__ == "__main__":
    main()
