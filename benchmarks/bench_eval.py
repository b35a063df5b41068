"""Closed-loop evaluation, serial vs parallel episodes on local Ray, side by side in one run.

The same exported policy, suite, seeds and episodes, first in this process, then on `--workers`
Ray actors that each own the environments and a copy of the policy. Torch runs one thread in both,
as each actor does: float reductions differ between thread counts, and the check needs the same
numbers. Checks that the parallel run equals the serial one episode for episode, and prints the
speedup twice: with the local cluster's start-up in the parallel time, and without it (a cluster
that is already up, as in a sweep or on a shared Ray cluster). Target: at least 1.7x on 2 cores.
Writes benchmarks/results/bench_eval.json.

    .venv/bin/python benchmarks/bench_eval.py [--policy runs/quickstart/export --episodes 20 --max-steps 100]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from wamforge.config.evaluation import EvalConfig  # noqa: E402
from wamforge.evaluation import evaluate  # noqa: E402

console = Console()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", type=Path, default=ROOT / "runs/quickstart/export")
    p.add_argument("--tasks", default="quickstart", help="a task set or comma-separated tasks")
    p.add_argument("--episodes", type=int, default=20, help="per task")
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    if not (args.policy / "model.safetensors").is_file():
        sys.exit(f"no exported policy in {args.policy}: run `make demo` first, or pass --policy DIR")
    import ray
    from wamforge.evaluation.policy import load_policy

    tasks = args.tasks if "," not in args.tasks else args.tasks.split(",")
    cfg = EvalConfig(suite={"kind": "metaworld", "tasks": tasks}, episodes=args.episodes, max_steps=args.max_steps,
                     references=[], videos=0, future_windows=0)
    policy = load_policy(args.policy)
    camera = policy.cfg.data.sources[cfg.source].camera
    resolution = tuple(policy.cfg.data.resolution)
    out = ROOT / "runs/bench_eval"

    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    serial = evaluate(policy, cfg, resolution, camera, out / "serial")
    serial_s = time.perf_counter() - start

    start = time.perf_counter()
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, logging_level="warning")
    startup_s = time.perf_counter() - start
    try:
        parallel = evaluate(args.policy, cfg.model_copy(update={"workers": args.workers}), resolution, camera,
                            out / "parallel")
    finally:
        ray.shutdown()
    parallel_s = time.perf_counter() - start - startup_s

    def episodes(report):
        return [(e["task"], e["seed"], e["success"], e["length"], round(e["sum_reward"], 6))
                for e in report["controllers"]["policy"]["per_episode"]]

    equal = episodes(serial) == episodes(parallel)
    result = {"episodes": len(episodes(serial)), "workers": args.workers, "serial_s": serial_s,
              "parallel_s": parallel_s, "ray_startup_s": startup_s, "speedup": serial_s / parallel_s,
              "speedup_with_startup": serial_s / (parallel_s + startup_s), "episodes_equal": equal,
              "pc_success": serial["controllers"]["policy"]["overall"]["pc_success"], "policy": str(args.policy)}
    table = Table(title=f"{result['episodes']} Meta-World episodes of the policy, {args.max_steps} steps at most")
    for col in ("run", "wall s", "speedup"):
        table.add_column(col)
    table.add_row("serial (this process)", f"{serial_s:.1f}", "1.00x")
    table.add_row(f"parallel ({args.workers} Ray actors)", f"{parallel_s:.1f}", f"{result['speedup']:.2f}x")
    table.add_row("parallel + local cluster start", f"{parallel_s + startup_s:.1f}",
                  f"{result['speedup_with_startup']:.2f}x")
    console.print(table)
    console.print(f"parallel equals serial episode for episode: {equal}")
    (ROOT / "benchmarks/results").mkdir(exist_ok=True)
    (ROOT / "benchmarks/results/bench_eval.json").write_text(json.dumps(result, indent=1))
    if not equal:
        sys.exit("the parallel episodes differ from the serial ones")


if __name__ == "__main__":
    main()
