"""Does the data path keep a GPU fed at a realistic size? A quickstart-shaped run on one GPU: the
quickstart's two sources (Meta-World demonstrations and stand-in web clips) built at 480p with the
Wan2.1 VAE's latents cached beside the shards, then `wamforge train` on a Wan2.1-1.3B trunk (joint
objective, bf16) with the default loader. The trainer's own metrics give the figures: data wait
as a share of the step (target: under 2%), samples/s, and MFU (the plan's model FLOPs over the
GPU's dense bf16 peak). Warm-up steps are dropped; medians are reported.

No checkpoint is needed: the trunk and the VAE start from their random initialisation (the VAE's
is seeded, so the build and the trainer agree on the cache), and captions go through the byte
encoder at umT5-XXL's width. Each phase is timed; the whole script is sized to finish in about
8 minutes on an H100-class GPU with 16 cores.

    python benchmarks/gpu_data_path.py [--steps 60 --resolution 480x832 --frames 17 --batch 2]
    python benchmarks/gpu_data_path.py --smoke   # the same path on CPU: tiny trunk, VAE and clips
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from wamforge.config import validate  # noqa: E402
from wamforge.config.paths import RunPaths  # noqa: E402
from wamforge.training.metrics import read_jsonl  # noqa: E402

SMOKE = {"resolution": "64x64", "frames": 9, "steps": 12, "warmup": 4, "batch": 2, "episodes": 2, "videos": 6,
         "trunk": {"kind": "wan", "dim": 64, "layers": 2, "heads": 2, "ffn_dim": 128, "patch": [1, 2, 2]},
         "vae": {"kind": "wan2.1", "base_dim": 8, "dim_mult": [1, 2, 2], "num_res_blocks": 1}, "text_dim": 64}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny: checks the script, not a GPU")
    p.add_argument("--resolution", default="480x832")
    p.add_argument("--frames", type=int, default=17, help="clip frames, 1 + 4k")
    p.add_argument("--batch", type=int, default=2, help="micro-batch on the GPU")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the medians")
    p.add_argument("--episodes", type=int, default=2, help="Meta-World demonstrations per task")
    p.add_argument("--videos", type=int, default=8, help="stand-in web clips")
    p.add_argument("--keep", type=Path, help="build and train in this folder, and keep it")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu_data_path.json")
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    return args


def experiment(args, run_dir: Path) -> dict:
    """The quickstart's sources and mixture, at this size: one joint stage on one GPU."""
    raw = yaml.safe_load((ROOT / "configs/experiments/quickstart.yaml").read_text())
    height, width = map(int, args.resolution.split("x"))
    sources = raw["data"]["sources"]
    sources["sim"]["episodes_per_task"] = args.episodes
    sources["web_standin"].update(path=str(run_dir / "raw/web_standin"),
                                  generate={"videos": args.videos, "frames": 4 * args.frames})
    smoke = getattr(args, "trunk", None)
    return {
        "name": "gpu_data_path", "seed": 0, "run_dir": str(run_dir), "embodiments": raw["embodiments"],
        "data": {**raw["data"], "clip_frames": args.frames, "resolution": [height, width], "caches": ["vae"],
                 "build_workers": max(1, len(os.sched_getaffinity(0)))},
        "model": {"recipe": "mimic_video", "substrate": raw["model"]["substrate"],
                  "trunk": smoke or {"kind": "wan", "size": "wan2.1-1.3b", "activation_checkpointing": True},
                  "vae": getattr(args, "vae", None) or {"kind": "wan2.1"},
                  "text": {"dim": getattr(args, "text_dim", 4096), "max_tokens": 32}},
        "training": {"world_size": 1, "micro_batch_per_rank": args.batch, "zero_stage": 0, "precision": "auto",
                     "checkpoint_every": 10**6, "tensorboard": False},
        "stages": [{**raw["stages"][1], "steps": args.steps, "mixture": {"weights": {"web_standin": 0.5, "sim": 0.5}}}],
        "eval": raw["eval"],
    }


def run(step: str, argv: list[str]) -> float:
    start = time.perf_counter()
    print(f"{step} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "wamforge.cli", *argv], check=True, cwd=ROOT)
    return round(time.perf_counter() - start, 1)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep or Path(tmp)
        raw = experiment(args, run_dir)
        cfg = validate(raw)
        path = run_dir / "gpu_data_path.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        seconds = {"build": run("data build (shards and VAE latents)", ["data", "build", str(path)])}
        seconds["train"] = run("train", ["train", str(path), "--overwrite"])
        rows = read_jsonl(RunPaths.of(cfg).stage(cfg.stages[0].name) / "metrics.jsonl")[args.warmup:]
        manifest = json.loads((RunPaths.of(cfg).data / "manifest.json").read_text())

    def median(key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.median(values), 4) if values else None

    res = {"resolution": args.resolution, "frames": args.frames, "micro_batch": args.batch, "steps": args.steps,
           "warmup": args.warmup, "smoke": args.smoke, "windows": sum(s["samples"] for s in manifest["sources"].values()),
           "cached_latents": sorted(manifest.get("caches", {})), "data_wait_pct": median("data_wait_pct"),
           "data_wait_pct_max": median("data_wait_pct_max"), "samples_per_s": median("samples_per_s"),
           "mfu": median("mfu"), "peak_memory_mb": median("peak_memory_mb"), "seconds": seconds,
           "data_wait_under_2pct": None if median("data_wait_pct") is None else median("data_wait_pct") < 2.0}
    print(json.dumps(res, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
