"""Steps/s of `wamforge train` against a minimal hand-written PyTorch loop, 1 rank and 2 ranks.

Same model (the quickstart's), same micro-batch, same AdamW and clipping, same CPU threads. The
hand-written loop trains on batches already in memory (DDP over gloo for 2 ranks). wamforge runs
its real CLI (DeepSpeed ZeRO-2, loader workers, metrics, traces, checkpoint at the end) and its
step time is read from metrics.jsonl: as measured, and without the time it waited for data, since
the hand-written loop never waits. Warm-up steps are dropped from both; medians are compared.

To tell what wamforge adds from what DeepSpeed costs, the same hand-written loop also runs on the
DeepSpeed engine wamforge builds (in place of DDP): `ratio_to_deepspeed_loop` is wamforge's
overhead over DeepSpeed itself.

    .venv/bin/python benchmarks/bench_trainer.py [--steps 60 --warmup 10 --repeats 3 --ranks 1 2]
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


def _plain_rank(rank: int, world: int, raw: dict, steps: int, port: int, engine: str, out: dict) -> None:
    from wamforge.data_pipeline.loader import MixtureLoader
    from wamforge.data_pipeline.loader.collate import Collator, Normalizer
    from wamforge.data_pipeline.embodiments import EmbodimentRegistry
    from wamforge.model_zoo.build import build_model

    torch.set_num_threads(raw["training"].get("threads_per_rank", 1))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    if world > 1 or engine == "deepspeed":
        dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = validate(raw)
    registry = EmbodimentRegistry.from_yaml(cfg.embodiments)
    data = RunPaths.of(cfg).data
    stats = json.loads((data / "stats.json").read_text())
    collator = Collator(Normalizer(stats, registry), registry, {n: i for i, n in enumerate(cfg.data.sources)},
                        horizon=cfg.model.regime.horizon, max_action_dim=cfg.model.max_action_dim,
                        max_proprio_dim=cfg.model.max_proprio_dim)
    stage = cfg.stages[0]
    loader = MixtureLoader(data, stage, collator, rank, world, cfg.training.micro_batch_per_rank, seed=0, workers=0)
    batches = [b for b, _ in zip((b for b, _ in loader), range(16))]  # in memory before timing
    torch.manual_seed(0)
    model = build_model(cfg, len(registry))
    if engine == "deepspeed":  # the engine wamforge builds: its ZeRO stage, optimizer and clipping
        from wamforge.training.engine import build_engine

        model = build_engine(model, stage, cfg.training, world)
    else:
        if world > 1:
            model = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=stage.lr, betas=(0.9, 0.99))
    times = []
    for step in range(steps):
        start = time.perf_counter()
        loss = model(batches[step % len(batches)], stage.objective, stage.loss_weights)["loss"]
        if engine == "deepspeed":
            model.backward(loss)
            model.step()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    if rank == 0:
        out["times"] = times
    if dist.is_initialized():
        dist.destroy_process_group()


def plain_step_times(raw: dict, world: int, steps: int, warmup: int, engine: str = "ddp") -> list[float]:
    from wamforge.launchers.local import free_port

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_plain_rank, args=(world, raw, steps, free_port(), engine, out), nprocs=world, join=True)
        return list(out["times"])[warmup:]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians over them are reported")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_trainer.json")
    args = p.parse_args()
    res = {"steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "cpus": os.cpu_count(), "ranks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.ranks:
            rounds = {"plain": [], "deepspeed_loop": [], "wamforge": [], "wamforge_compute": []}
            for repeat in range(args.repeats):  # interleaved, so a noisy minute hurts every column alike
                raw = bench_config(world, args.steps, Path(tmp) / f"runs{repeat}")
                rounds["plain"].append(statistics.median(plain_step_times(raw, world, args.steps, args.warmup)))
                rounds["deepspeed_loop"].append(statistics.median(
                    plain_step_times(raw, world, args.steps, args.warmup, "deepspeed")))
                times, compute = wamforge_step_times(raw, Path(tmp) / f"w{world}.yaml", args.warmup)
                rounds["wamforge"].append(statistics.median(times))
                rounds["wamforge_compute"].append(statistics.median(compute))
            step = {name: statistics.median(values) for name, values in rounds.items()}
            res["ranks"][world] = {**{f"{name}_step_s": round(v, 4) for name, v in step.items()},
                                   "ratio": round(step["plain"] / step["wamforge"], 3),
                                   "ratio_without_data_wait": round(step["plain"] / step["wamforge_compute"], 3),
                                   "ratio_to_deepspeed_loop": round(step["deepspeed_loop"] / step["wamforge"], 3),
                                   # each round's own ratio: the machine's speed drifts between rounds
                                   "ratio_to_deepspeed_loop_by_round": [
                                       round(d / w, 3) for d, w in zip(rounds["deepspeed_loop"], rounds["wamforge"])],
                                   "rounds": {name: [round(v, 4) for v in values] for name, values in rounds.items()}}
            print(world, {k: v for k, v in res["ranks"][world].items() if k != "rounds"}, file=sys.stderr)
    print(json.dumps(res, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
