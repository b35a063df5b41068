"""The Ray build against a plain single-process loop producing the same shards from the same inputs.

Both run the same planned tasks (`write_shard`: load episodes, cut windows, encode mp4, write
tars) of one config, into two folders: (a) one after another in this process, (b) as the Ray
tasks of `wamforge data build` on a local cluster with `data.build_workers` workers, Ray's start
and shutdown included. Prints both times, the ratio, and whether every shard file
came out byte-identical.

    .venv/bin/python benchmarks/bench_build.py [--config configs/experiments/quickstart.yaml]
        [--set data.sources.sim.episodes_per_task=36 ...]

Ray's fixed cost (starting the cluster and its workers, about 10 s here) is part of (b), so the
ratio grows with the size of the build; the default run is three times the quickstart's data.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MUJOCO_GL", "egl")
from rich.console import Console  # noqa: E402

from wamforge.config import load_config  # noqa: E402
from wamforge.data_pipeline.build.pipeline import _plan, _run_on_ray  # noqa: E402
from wamforge.data_pipeline.build.shard_writer import write_shard  # noqa: E402


SCALE_3X = ["data.sources.sim.episodes_per_task=36", "data.sources.web_standin.generate.videos=96",
            "data.sources.web_standin.path=runs/bench_build/web"]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def differing_members(a: Path, b: Path) -> list[str]:
    """Names of tar members whose bytes differ between two builds (first few)."""
    import tarfile

    out = []
    for shard in sorted(a.glob("*.tar")):
        with tarfile.open(shard) as ta, tarfile.open(b / shard.name) as tb:
            for m in ta.getmembers():
                if ta.extractfile(m).read() != tb.extractfile(m.name).read():
                    out.append(f"{shard.name}:{m.name}")
    return out[:5]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=str(ROOT / "configs/experiments/quickstart.yaml"))
    p.add_argument("--set", action="append", default=None, help="config overrides (replace the defaults)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_build.json")
    args = p.parse_args()
    args.set = args.set or SCALE_3X
    cfg = load_config(args.config, args.set)
    with tempfile.TemporaryDirectory() as tmp:
        single_dir, ray_dir = Path(tmp) / "single", Path(tmp) / "ray"
        single_dir.mkdir(), ray_dir.mkdir()
        jobs, _ = _plan(cfg, single_dir, "bench")  # also writes generated inputs once, before any timing

        start = time.perf_counter()
        single = [json.loads(write_shard({"job": json.dumps(job)})["summary"]) for job in jobs]
        single_s = time.perf_counter() - start

        start = time.perf_counter()
        distributed = _run_on_ray([{**job, "out_dir": str(ray_dir)} for job in jobs], cfg.data.build_workers,
                                  None, Console(quiet=True))
        ray_s = time.perf_counter() - start

        same = digests(single_dir) == digests(ray_dir)
        res = {"config": args.config, "overrides": args.set, "tasks": len(jobs), "cpus": os.cpu_count(), "workers": cfg.data.build_workers,
               "samples": sum(s["samples"] for s in single),
               "samples_ray": sum(s["samples"] for s in distributed),
               "single_process_s": round(single_s, 1), "ray_s": round(ray_s, 1),
               "speedup": round(single_s / ray_s, 2), "identical_shards": same,
               "shard_files": len(digests(single_dir)), "differing_members": differing_members(single_dir, ray_dir)}
    print(json.dumps(res, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
