"""Steps/s of `wamforge train` against a minimal hand-written PyTorch loop, 1 rank and 2 ranks.

Same model (the quickstart's), same micro-batch, same AdamW and clipping, same CPU threads. The
hand-written loop trains on batches already in memory (DDP over gloo for 2 ranks). wamforge runs
its real CLI (DeepSpeed ZeRO-2, loader workers, metrics, traces, checkpoint at the end) and its
step time is read from metrics.jsonl: as measured, and without the time it waited for data, since
the hand-written loop never waits. Warm-up steps are dropped from both; medians are compared.

    .venv/bin/python benchmarks/bench_trainer.py [--steps 60 --warmup 10]
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

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from wamforge.config import load_config, validate  # noqa: E402
from wamforge.config.paths import RunPaths  # noqa: E402


def bench_config(world: int, steps: int, run_dir: Path) -> dict:
    raw = yaml.safe_load((ROOT / "configs/experiments/quickstart.yaml").read_text())
    data = RunPaths.of(load_config(ROOT / "configs/experiments/quickstart.yaml")).data
    raw.update(name=f"bench_trainer_w{world}", run_dir=str(run_dir))
    raw["data"]["out_dir"] = str(data)  # the quickstart's built shards
    raw["training"].update(world_size=world, checkpoint_every=10**6)
    raw["stages"] = [{**raw["stages"][1], "steps": steps, "init_from": None}]  # joint: trunk and expert
    return raw


def wamforge_step_times(raw: dict, path: Path, warmup: int) -> tuple[list[float], list[float]]:
    path.write_text(yaml.safe_dump(raw))
    subprocess.run([sys.executable, "-m", "wamforge.cli", "train", str(path)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = validate(raw)
    rows = [json.loads(line) for line in (RunPaths.of(cfg).stage(cfg.stages[0].name) / "metrics.jsonl").open()]
    per_step = cfg.training.micro_batch_per_rank * cfg.training.world_size
    times = [per_step / r["samples_per_s"] for r in rows[warmup:]]
    compute = [t * (1 - r["data_wait_pct"] / 100) for t, r in zip(times, rows[warmup:])]
    return times, compute


def _plain_rank(rank: int, world: int, raw: dict, steps: int, port: int, out: dict) -> None:
    from wamforge.data_pipeline.loader import MixtureLoader
    from wamforge.data_pipeline.loader.collate import Collator, Normalizer
    from wamforge.model_zoo.embodiments import EmbodimentRegistry
    from wamforge.model_zoo.wam import WorldActionModel

    torch.set_num_threads(raw["training"].get("threads_per_rank", 1))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = validate(raw)
    registry = EmbodimentRegistry.from_yaml(cfg.embodiments)
    data = RunPaths.of(cfg).data
    stats = json.loads((data / "stats.json").read_text())
    collator = Collator(Normalizer(stats, registry), registry, {n: i for i, n in enumerate(cfg.data.sources)},
                        horizon=cfg.model.action_expert.horizon, max_action_dim=cfg.model.max_action_dim,
                        max_proprio_dim=cfg.model.max_proprio_dim)
    stage = cfg.stages[0]
    loader = MixtureLoader(data, stage, collator, rank, world, cfg.training.micro_batch_per_rank, seed=0, workers=0)
    batches = [b for b, _ in zip((b for b, _ in loader), range(16))]  # in memory before timing
    torch.manual_seed(0)
    model = WorldActionModel.for_experiment(cfg, len(registry))
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=stage.lr, betas=(0.9, 0.99))
    times = []
    for step in range(steps):
        start = time.perf_counter()
        loss = model(batches[step % len(batches)], stage.objective, stage.loss_weights)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    if rank == 0:
        out["times"] = times
    if world > 1:
        dist.destroy_process_group()


def plain_step_times(raw: dict, world: int, steps: int, warmup: int) -> list[float]:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_plain_rank, args=(world, raw, steps, 29500 + world, out), nprocs=world, join=True)
        return list(out["times"])[warmup:]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_trainer.json")
    args = p.parse_args()
    res = {"steps": args.steps, "warmup": args.warmup, "cpus": os.cpu_count(), "ranks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            raw = bench_config(world, args.steps, Path(tmp) / "runs")
            plain = statistics.median(plain_step_times(raw, world, args.steps, args.warmup))
            times, compute = wamforge_step_times(raw, Path(tmp) / f"w{world}.yaml", args.warmup)
            wam, wam_compute = statistics.median(times), statistics.median(compute)
            res["ranks"][world] = {"plain_step_s": round(plain, 4), "wamforge_step_s": round(wam, 4),
                                   "wamforge_compute_step_s": round(wam_compute, 4),
                                   "ratio": round(plain / wam, 3), "ratio_without_data_wait": round(plain / wam_compute, 3)}
            print(world, res["ranks"][world], file=sys.stderr)
    print(json.dumps(res, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
