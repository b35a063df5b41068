"""Training-step throughput (forward + backward, tokens/s) of wamforge's WanDiT against diffusers'
WanTransformer3DModel at the same config with the same weights, side by side in one run. The two
models alternate iteration by iteration so drift in machine load hits both alike. Prints JSON;
writes benchmarks/results/bench_trunk_<device>.json.

    python benchmarks/bench_trunk.py [--device cpu] [--dim 256] [--layers 4] [--iters 10]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel

from wamforge.model_zoo.trunks.wan.model import WanDiT


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=2)  # head dim 128, as in every released Wan
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--ffn-dim", type=int, default=1024)
    parser.add_argument("--text-dim", type=int, default=256)
    parser.add_argument("--latent", type=int, nargs=4, default=[16, 3, 16, 16], metavar=("C", "F", "H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    channels = args.latent[0]
    reference = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=args.heads, attention_head_dim=args.dim // args.heads,
        in_channels=channels, out_channels=channels, text_dim=args.text_dim, ffn_dim=args.ffn_dim,
        num_layers=args.layers).to(device)
    ours = WanDiT(channels, args.dim, args.layers, args.heads, args.ffn_dim, text_dim=args.text_dim).to(device)
    ours.load_state_dict(reference.state_dict(), strict=True)

    latents = torch.randn(args.batch, *args.latent, device=device)
    timestep = torch.rand(args.batch, device=device) * 1000
    text = torch.randn(args.batch, 32, args.text_dim, device=device)
    tokens = args.batch * args.latent[1] * (args.latent[2] // 2) * (args.latent[3] // 2)

    def step_ours():
        ours(latents, timestep, text)[0].square().mean().backward()

    def step_reference():
        reference(latents, timestep, text).sample.square().mean().backward()

    def timed(step, model) -> float:
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        timed(step_ours, ours), timed(step_reference, reference)
    seconds = {"wamforge": [], "diffusers": []}
    for _ in range(args.iters):
        seconds["wamforge"].append(timed(step_ours, ours))
        seconds["diffusers"].append(timed(step_reference, reference))

    throughput = {name: tokens / statistics.median(times) for name, times in seconds.items()}
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "config": {"dim": args.dim, "heads": args.heads, "layers": args.layers, "ffn_dim": args.ffn_dim,
                   "text_dim": args.text_dim, "latent": args.latent, "batch": args.batch, "tokens_per_step": tokens,
                   "warmup": args.warmup, "iters": args.iters},
        "wamforge_tokens_per_s": throughput["wamforge"],
        "diffusers_tokens_per_s": throughput["diffusers"],
        "ratio_wamforge_over_diffusers": throughput["wamforge"] / throughput["diffusers"],
    }
    print(json.dumps(result, indent=1))
    out = Path(__file__).parent / "results" / f"bench_trunk_{device.type}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
