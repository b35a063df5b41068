"""Accuracy at budget: one evaluation per point of a grid of eval knobs (denoising steps, K,
render the future or not), and the Pareto frontier of success against per-chunk latency."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from wamforge.config.load import apply_override, validate
from wamforge.evaluation.runner import ray_cluster


def parse_sweeps(sweeps: list[str]) -> dict[str, list[str]]:
    """["eval.flow_steps=1,2,4", ...] -> {"eval.flow_steps": ["1", "2", "4"]}; only eval knobs move."""
    grid = {}
    for item in sweeps:
        key, _, values = item.partition("=")
        if not key.startswith("eval.") or not values:
            raise ValueError(f"--sweep {item!r}: expected eval.KNOB=V1,V2,..., e.g. --sweep eval.flow_steps=1,2,4,8")
        grid[key] = values.split(",")
    return grid


def sweep(cfg, grid: dict[str, list[str]], run_point, out_dir: Path) -> dict:
    """`run_point(point_cfg, point_dir) -> report` for every combination; writes budget.json and
    budget.png. A point the design refuses (every episode failed with one reason) is kept with its
    reason and left off the frontier."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with ray_cluster(cfg.eval.workers, cfg.eval.ray_address):  # one cluster for every point
        points = [_point(cfg, dict(zip(grid, values)), run_point, out_dir)
                  for values in itertools.product(*grid.values())]
    frontier = pareto([p for p in points if not p["refused"] and p["latency_ms"]])
    for p in points:
        p["on_frontier"] = p in frontier
    budget = {"grid": grid, "points": points}
    (out_dir / "budget.json").write_text(json.dumps(budget, indent=1))
    plot_budget(budget, out_dir / "budget.png")
    return budget


def _point(cfg, settings: dict, run_point, out_dir: Path) -> dict:
    """One grid point: the experiment with its eval knobs set."""
    raw = cfg.model_dump(mode="json")
    # what does not change with the policy's budget is left out: references, videos, futures
    raw["eval"].update(references=[], videos=0, future_windows=0)
    for key, value in settings.items():
        apply_override(raw, f"{key}={value}")
    point_cfg = validate(raw, "--sweep")
    name = "_".join(f"{k.removeprefix('eval.')}-{v}" for k, v in settings.items())
    overall = run_point(point_cfg, out_dir / name)["controllers"]["policy"]["overall"]
    failures = overall["failures"]
    refused = next(iter(failures)) if len(failures) == 1 and sum(failures.values()) == overall["n_episodes"] \
        else None
    return {"settings": {k: point_cfg_value(point_cfg, k) for k in settings}, "dir": name,
            "pc_success": overall["pc_success"], "interval": overall["interval"],
            "latency_ms": overall.get("latency_ms"), "peak_memory_mb": overall["peak_memory_mb"]["rss"],
            "refused": refused}


def point_cfg_value(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def pareto(points: list[dict]) -> list[dict]:
    """The points no other beats on both axes: at least as successful and at least as fast."""
    def dominated(p):
        return any(q["pc_success"] >= p["pc_success"] and q["latency_ms"]["p50"] <= p["latency_ms"]["p50"]
                   and (q["pc_success"], -q["latency_ms"]["p50"]) != (p["pc_success"], -p["latency_ms"]["p50"])
                   for q in points)
    return sorted((p for p in points if not dominated(p)), key=lambda p: p["latency_ms"]["p50"])


def plot_budget(budget: dict, path: Path) -> Path:
    """Success against p50 latency per chunk; point size is peak memory; the frontier drawn."""
    points = [p for p in budget["points"] if not p["refused"] and p["latency_ms"]]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    if points:
        memory = np.array([p["peak_memory_mb"] for p in points])
        sizes = 30 + 270 * (memory - memory.min()) / max(np.ptp(memory), 1e-9)
        ax.scatter([p["latency_ms"]["p50"] for p in points], [p["pc_success"] for p in points], s=sizes,
                   alpha=0.6, edgecolors="k", linewidths=0.5)
        for p in points:
            label = ", ".join(f"{k.removeprefix('eval.')}={v}" for k, v in p["settings"].items())
            ax.annotate(label, (p["latency_ms"]["p50"], p["pc_success"]), fontsize=6, xytext=(4, 4),
                        textcoords="offset points")
        front = [p for p in budget["points"] if p["on_frontier"]]
        ax.step([p["latency_ms"]["p50"] for p in front], [p["pc_success"] for p in front], where="post",
                color="tab:red", linewidth=1, label="Pareto frontier")
        ax.legend(fontsize=7, frameon=False, loc="lower right")
        ax.set_xscale("log")
    ax.set_xlabel("policy latency per chunk, p50 (ms)")
    ax.set_ylabel("success (%)")
    ax.set_ylim(-5, 105)
    ax.set_title("accuracy at budget (point size: peak memory)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
