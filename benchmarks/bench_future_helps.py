"""Does predicting the future help action at equal budget? (survey §7.1-7.2)

The quickstart WAM and its `no_future` baseline (the same model, action head, data, stages and
steps, every future-prediction loss off) trained on Meta-World mt10 with 10 successful scripted
demos per task, then evaluated on the same seeded layouts. Prints both success rates with their
95% Beta intervals, per difficulty split, and the difference. A figure to report whichever way it
comes out. The protocol's full size is `--episodes 20 --seeds 1000,2000,3000` (600 episodes per
model); the defaults fit 2 CPU cores in about an hour. Writes benchmarks/results/bench_future_helps.json.

    .venv/bin/python benchmarks/bench_future_helps.py [--episodes 5 --seeds 1000 --max-steps 150]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/experiments/metaworld_few_demo.yaml"
console = Console()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="mt10")
    p.add_argument("--episodes", type=int, default=5, help="evaluation episodes per task and seed")
    p.add_argument("--seeds", default="1000", help="evaluation seeds, comma-separated")
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--root", type=Path, default=ROOT / "runs/bench_future_helps")
    p.add_argument("--set", action="append", default=[], help="more overrides for both runs")
    args = p.parse_args()
    common = [f"run_dir={args.root}", f"data.out_dir={args.root / 'data'}",  # one data build for both
              f"data.sources.web_standin.path={args.root / 'raw/web_standin'}",
              f"data.sources.sim.tasks=[{args.tasks}]", f"eval.suite.tasks={args.tasks}",
              f"eval.episodes={args.episodes}", f"eval.seeds=[{args.seeds}]", f"eval.max_steps={args.max_steps}",
              "eval.videos=0", *args.set]
    results = {}
    for variant, references in ((None, "[expert]"), ("no_future", "[]")):
        command = [sys.executable, "-m", "wamforge.cli", "run", str(CONFIG),
                   *(f"--set={s}" for s in [*common, f"eval.references={references}"]),
                   *(["--baseline", variant] if variant else [])]
        console.rule(f"training and evaluating {variant or 'the WAM'}")
        if subprocess.run(command, cwd=ROOT).returncode:
            sys.exit(f"{variant or 'the WAM'} run failed; rerun this benchmark to resume it")
        name = "metaworld_few_demo" + (f"-{variant}" if variant else "")
        report = json.loads((args.root / name / "eval" / "report.json").read_text())
        results[variant or "wam"] = {"report": str(args.root / name / "eval" / "report.json"),
                                     **{k: report["controllers"][k] for k in report["controllers"]}}
    wam, base = results["wam"]["policy"], results["no_future"]["policy"]
    table = Table(title=f"Meta-World v3 {args.tasks}, 10 demos per task, {args.episodes} episodes x "
                        f"{len(args.seeds.split(','))} seed(s) per task")
    table.add_column("group")
    for col in ("WAM (predicts the future)", "no_future (same budget)", "difference", "expert"):
        table.add_column(col, justify="right")

    def cell(rates):
        return f"{rates['pc_success']:.1f}% [{rates['interval'][0]:.0f}, {rates['interval'][1]:.0f}]"

    expert = results["wam"].get("expert")
    for group in [*wam["per_group"], "overall"]:
        a, b = (x["overall"] if group == "overall" else x["per_group"][group] for x in (wam, base))
        e = (expert["overall"] if group == "overall" else expert["per_group"][group]) if expert else None
        table.add_row(group, cell(a), cell(b), f"{a['pc_success'] - b['pc_success']:+.1f}", cell(e) if e else "-")
    console.print(table)
    summary = {"tasks": args.tasks, "episodes": args.episodes, "seeds": args.seeds,
               "wam": wam["overall"] | {"per_group": wam["per_group"]},
               "no_future": base["overall"] | {"per_group": base["per_group"]},
               "difference_pc": wam["overall"]["pc_success"] - base["overall"]["pc_success"],
               "expert": expert["overall"] if expert else None}
    for side in ("wam", "no_future"):
        summary[side].pop("video_paths", None)
    (ROOT / "benchmarks/results").mkdir(exist_ok=True)
    (ROOT / "benchmarks/results/bench_future_helps.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
