"""Model FLOPs utilisation of the Wan trunk at a released size: forward+backward in bf16 on one GPU.

FLOPs come from `wamforge plan`'s count (checked against torch's FlopCounterMode in the tests);
MFU divides achieved FLOP/s by the GPU's dense bf16 peak. Prints JSON; writes benchmarks/results/.

    python benchmarks/trunk_mfu.py [--size wan2.1-1.3b] [--frames 9] [--resolution 480x832] [--peak-tflops 989]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from wamforge.model_zoo.trunks.wan.sizes import WAN_SIZES
from wamforge.training.plan import plan


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="wan2.1-1.3b")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--resolution", default="480x832")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--checkpointing", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("trunk_mfu.py measures a GPU; no CUDA device is visible")
    size = WAN_SIZES[args.size]
    height, width = (int(v) for v in args.resolution.split("x"))
    figures = plan(size, args.frames, (height, width), world_size=1, micro_batch=args.batch)

    torch.manual_seed(0)
    trunk = size.build().to("cuda", torch.bfloat16)
    trunk.gradient_checkpointing = args.checkpointing
    t, h, w = size.vae_stride
    latents = torch.randn(args.batch, size.in_channels, 1 + (args.frames - 1) // t, height // h, width // w,
                          device="cuda", dtype=torch.bfloat16)
    text = torch.randn(args.batch, 512, size.text_dim, device="cuda", dtype=torch.bfloat16)
    timestep = torch.full((args.batch,), 500.0, device="cuda")

    def step():
        out, _ = trunk(latents, timestep, text)
        out.float().square().mean().backward()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    achieved = figures.flops_train_step / seconds
    result = {"gpu": torch.cuda.get_device_name(), "size": args.size, "frames": args.frames,
              "resolution": args.resolution, "batch": args.batch, "tokens": figures.tokens,
              "checkpointing": args.checkpointing, "step_ms": 1000 * seconds,
              "tokens_per_s": figures.tokens * args.batch / seconds, "achieved_tflops": achieved / 1e12,
              "mfu": achieved / (args.peak_tflops * 1e12),
              "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}
    print(json.dumps(result, indent=1))
    out = Path(__file__).parent / "results" / f"trunk_mfu_{args.size}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
