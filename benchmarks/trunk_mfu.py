"""Model FLOPs utilisation at Wan2.1-1.3B on one GPU, bf16, forward + backward:

  (a) the bare Wan trunk with each attention option: unmasked (flash-attn where installed, else SDPA),
      a block-causal mask by latent frame through torch SDPA with a dense bool mask and through
      FlexAttention (`set_masked_attention`), each eager and, where it matters, with every block
      under torch.compile;
  (b) a joint-generation WAM (the `uwm` recipe on the 1.3B trunk: 16-channel latents of a random
      Wan2.1 VAE, fed as `Batch.latents` so the VAE does not run; a byte text encoder 4096 wide, as
      umT5-XXL), `model.loss` on the joint objective with its batch masks, eager and compiled.

FLOPs are `wamforge plan`'s model FLOPs (`plan` for the trunk, `experiment_plan` for the WAM: dense
attention, multiply-adds as 2, a training step = 3 forwards; activation recompute is not counted);
MFU divides achieved FLOP/s by the GPU's dense bf16 peak (H100 and H200 SXM: 989 TFLOP/s,
--peak-tflops overrides). Warm-up steps (and compilation) are excluded; timing is CUDA-synchronised.
Prints a table and JSON; writes benchmarks/results/trunk_mfu.json (or --out).

    python benchmarks/trunk_mfu.py [--frames 81 --resolution 480x832 --steps 5 --peak-tflops 989]
    python benchmarks/trunk_mfu.py --smoke [--out PATH]   # the same code path on CPU, tiny, fp32
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from wamforge.config import validate  # noqa: E402
from wamforge.data_pipeline.schema import Batch  # noqa: E402
from wamforge.model_zoo.build import build_model  # noqa: E402
from wamforge.model_zoo.common.attention import blockwise_causal_mask, set_masked_attention  # noqa: E402
from wamforge.model_zoo.trunks.wan.sizes import WAN_SIZES  # noqa: E402
from wamforge.model_zoo.vae import latent_geometry  # noqa: E402
from wamforge.training.plan import experiment_plan, plan  # noqa: E402

DENSE_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # SXM, without sparsity
SMOKE = {"size": "tiny", "frames": 9, "resolution": "32x32", "text_tokens": 16, "steps": 2, "warmup": 1,
         "vae": {"kind": "wan2.1", "base_dim": 8, "dim_mult": [1, 2, 2], "num_res_blocks": 1}}
CAPTION = "pick up the red cube and place it in the bowl on the left. "
console = Console(width=160)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny trunk, fp32: checks the script, not a GPU")
    parser.add_argument("--size", default="wan2.1-1.3b")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--resolution", default="480x832")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--text-tokens", type=int, default=512, help="caption tokens (Wan: 512)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per row (compilation included)")
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                        help="keep every block's activations (81 frames at 480x832 need ~75 GiB for them)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--budget-s", type=float, default=420.0, help="rows not started by then are skipped")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak; default from the GPU name")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/trunk_mfu.json "
                                                                "(a smoke run writes only where --out says)")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():  # what the command line leaves at its default
            if getattr(args, key, None) == parser.get_default(key):
                setattr(args, key, value)
    else:
        args.vae = {"kind": "wan2.1"}
    return args


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    """The dense bf16 peak MFU divides by: --peak-tflops, else the GPU's by name; None on CPU."""
    if override is not None or device.type != "cuda":
        return override
    name = torch.cuda.get_device_name(device)
    for model, peak in DENSE_BF16_TFLOPS.items():
        if model in name:
            return peak
    raise SystemExit(f"no dense bf16 peak is known for {name}; give it with --peak-tflops")


def seconds_per_step(step, warmup: int, steps: int, device: torch.device) -> tuple[float, float]:
    """(warm-up seconds, mean seconds of the timed steps), synchronised around both on CUDA."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    timed = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return timed - start, (time.perf_counter() - timed) / steps


def unmasked_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """What serves unmasked self-attention here, as `common.attention.attention` picks it."""
    from wamforge.model_zoo.common import attention

    if device.type == "cuda":
        if dtype in (torch.float16, torch.bfloat16) and attention._flash_attn_func() is not None:
            return "flash-attn"
        if attention._xformers_attention() is not None:
            return "xformers"
    return "SDPA"


def compile_blocks(trunk) -> None:
    """Regional compilation: each block in place (one graph for all of them), the rest eager."""
    for block in trunk.blocks:
        block.compile()


def trunk_rows(args, device, dtype) -> tuple[dict, list[tuple]]:
    """(a) The bare trunk: its plan and one (name, attention, masked backend, compiled, step) per row."""
    size = WAN_SIZES[args.size]
    height, width = args.height_width
    figures = plan(size, args.frames, (height, width), world_size=1, text_tokens=args.text_tokens,
                   micro_batch=args.batch)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 1.3B init on the host takes longer than its timing
        trunk = size.build().to(dtype)
    trunk.gradient_checkpointing = args.checkpointing
    t, h, w = size.vae_stride
    latents = torch.randn(args.batch, size.in_channels, 1 + (args.frames - 1) // t, height // h, width // w,
                          device=device, dtype=dtype)
    text = torch.randn(args.batch, args.text_tokens, size.text_dim, device=device, dtype=dtype)
    timestep = torch.full((args.batch,), 500.0, device=device)
    grid = trunk.grid(latents)
    causal = blockwise_causal_mask([grid[1] * grid[2]] * grid[0], device=device)  # a frame sees itself and the past

    def step(mask=None):
        def run():
            trunk.zero_grad(set_to_none=True)
            out, _ = trunk(latents, timestep, text, self_attn_mask=mask)
            out.float().square().mean().backward()
        return run

    unmasked = f"unmasked ({unmasked_kernel(device, dtype)})"
    rows = [("trunk", unmasked, "auto", False, step()),
            ("trunk", "block-causal, SDPA dense mask", "sdpa", False, step(causal)),
            ("trunk", "block-causal, FlexAttention", "flex", False, step(causal))]
    if args.compile:
        rows += [("trunk", unmasked, "auto", True, step()),
                 ("trunk", "block-causal, FlexAttention", "flex", True, step(causal))]
    return {"plan": figures, "module": trunk}, rows


def uwm_config(args):
    """The uwm recipe on the named trunk size, with its widths: 16-channel latents, 4096-wide text."""
    size = WAN_SIZES[args.size]
    height, width = args.height_width
    return validate({
        "name": "trunk_mfu_uwm", "data": {
            "clip_frames": args.frames, "resolution": [height, width],
            "sources": {"sim": {"format": "metaworld", "kind": "sim", "embodiment": "sawyer", "tasks": ["reach-v3"]}}},
        "model": {"recipe": "uwm", "vae": args.vae,
                  "trunk": {"kind": "wan", "size": args.size, "activation_checkpointing": args.checkpointing},
                  "text": {"encoder": "byte", "dim": size.text_dim, "max_tokens": args.text_tokens}},
        "training": {"world_size": 1, "micro_batch_per_rank": args.batch},
        "stages": [{"name": "joint", "objective": "joint", "steps": 1, "mixture": {"weights": {"sim": 1.0}}}]})


def latent_batch(cfg, batch: int, device, dtype) -> Batch:
    """A training batch with cached latents (the VAE does not run), Sawyer's 4 action dims and a caption
    of exactly max_tokens byte tokens, so the text the trunk attends to is what the plan counts."""
    m = cfg.model
    channels, temporal, spatial = latent_geometry(m.vae)
    height, width = cfg.data.resolution
    frames, horizon, dims = cfg.data.clip_frames, m.regime.horizon, 4
    action_mask = torch.zeros(batch, horizon, m.max_action_dim, dtype=torch.bool)
    action_mask[..., :dims] = True
    proprio_mask = torch.zeros(batch, m.max_proprio_dim, dtype=torch.bool)
    proprio_mask[:, :dims] = True
    caption = (CAPTION * (1 + m.text.max_tokens // len(CAPTION)))[: m.text.max_tokens - 1]
    return Batch(
        video=None,
        latents=torch.randn(batch, channels, 1 + (frames - 1) // temporal, height // spatial, width // spatial),
        video_pad=torch.zeros(batch, frames, dtype=torch.bool),
        actions=torch.randn(batch, horizon, m.max_action_dim) * action_mask, action_mask=action_mask,
        has_actions=torch.ones(batch, dtype=torch.bool), proprio=torch.randn(batch, m.max_proprio_dim) * proprio_mask,
        proprio_mask=proprio_mask, embodiment_id=torch.zeros(batch, dtype=torch.long),
        source_id=torch.zeros(batch, dtype=torch.long), text=[caption] * batch, keys=[f"mfu/{i}" for i in range(batch)],
        steps_to_go=torch.zeros(batch, dtype=torch.long), success=torch.ones(batch),
    ).to(device, dtype)


def uwm_rows(args, device, dtype) -> tuple[dict, list[tuple]]:
    """(b) The joint-generation WAM: its experiment plan and rows as for the trunk."""
    cfg = uwm_config(args)
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(cfg, num_embodiments=1).to(dtype).train()
    batch = latent_batch(cfg, args.batch, device, dtype)

    def step():
        model.zero_grad(set_to_none=True)
        model.loss(batch, "joint", {})["loss"].float().backward()

    attention = "recipe's mask" if cfg.model.coupling.attention else f"unmasked ({unmasked_kernel(device, dtype)})"
    rows = [("uwm", attention, "auto", False, step)]
    if args.compile:
        rows.append(("uwm", attention, "auto", True, step))
    return {"plan": experiment_plan(cfg, world_size=1), "module": model.trunk}, rows


def measure(workloads, args, device, peak: float | None, started: float) -> list[dict]:
    results = []
    for build in workloads:
        workload, rows = build(args, device, args.dtype)
        figures, compiled_yet = workload["plan"], False
        counted = {k: getattr(figures, k) for k in ("params", "tokens", "flops_forward", "flops_train_step")}
        for name, attention, backend, compiled, step in rows:
            row = {"workload": name, "attention": attention, "masked_backend": backend, "compiled": compiled,
                   "plan": counted}
            results.append(row)
            if backend == "flex" and device.type != "cuda":
                row["skipped"] = "FlexAttention has no backward on CPU"
                continue
            if time.perf_counter() - started > args.budget_s:
                row["skipped"] = f"past the {args.budget_s:.0f} s budget"
                continue
            if compiled and not compiled_yet:  # in place, so the eager rows come first
                compile_blocks(workload["module"])
                compiled_yet = True
            set_masked_attention(backend)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                warmup_s, seconds = seconds_per_step(step, args.warmup, args.steps, device)
            except Exception as err:  # one failing option (memory, a kernel) must not lose the others
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                traceback.print_exc(limit=3)
                continue
            finally:
                set_masked_attention("auto")
            achieved = figures.flops_train_step / seconds
            row.update(step_ms=1000 * seconds, warmup_s=warmup_s, tokens_per_s=figures.tokens * args.batch / seconds,
                       achieved_tflops=achieved / 1e12, mfu=None if peak is None else achieved / (peak * 1e12))
            if device.type == "cuda":
                row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            console.print(f"[dim]{name} | {attention} | compile {compiled}: {row['step_ms']:.1f} ms/step[/]")
        del workload, rows, step  # the next workload's model gets the memory
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def summary(results: list[dict]) -> Table:
    table = Table(title="Wan trunk and UWM at one GPU: forward + backward per step")
    for column in ("workload", "attention", "compile", "step ms", "tokens/s", "TFLOP/s", "MFU", "peak GiB"):
        table.add_column(column, justify="left" if column in ("workload", "attention") else "right")
    for r in results:
        if "step_ms" not in r:
            table.add_row(r["workload"], r["attention"], str(r["compiled"]), r.get("skipped") or r.get("error", ""),
                          "", "", "", "")
            continue
        table.add_row(r["workload"], r["attention"], str(r["compiled"]), f"{r['step_ms']:.1f}",
                      f"{r['tokens_per_s']:,.0f}", f"{r['achieved_tflops']:.3g}",
                      "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
                      f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "-")
    return table


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("trunk_mfu.py reports the MFU of a GPU and no CUDA device is visible; "
                         "run it on an H100/H200, or pass --smoke to check the script on CPU")
    device = torch.device("cpu" if args.smoke else "cuda")
    args.dtype = torch.float32 if args.smoke else torch.bfloat16
    args.height_width = tuple(int(v) for v in args.resolution.split("x"))
    peak = peak_tflops(device, args.peak_tflops)
    started = time.perf_counter()
    results = measure([trunk_rows, uwm_rows], args, device, peak, started)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)",
              "torch": torch.__version__, "peak_tflops": peak, "dtype": str(args.dtype).removeprefix("torch."),
              "size": args.size, "frames": args.frames, "resolution": args.resolution, "batch": args.batch,
              "text_tokens": args.text_tokens, "checkpointing": args.checkpointing, "steps": args.steps,
              "warmup": args.warmup, "seconds": time.perf_counter() - started, "rows": results}
    console.print(summary(results))
    print(json.dumps(report, indent=1))
    out = args.out or (None if args.smoke else ROOT / "benchmarks" / "results" / "trunk_mfu.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
