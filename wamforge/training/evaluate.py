"""Closed-loop evaluation in Meta-World, chunked regime, with expert and random reference points.

The trained policy, the scripted expert (upper bound) and a uniform random policy (lower bound)
run on the same tasks and the same seeded layouts, so their success rates compare directly.
"""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from matplotlib.figure import Figure
from rich.progress import Progress

from wamforge.config.evaluation import EvalConfig
from wamforge.data_pipeline.sources import metaworld_env as mw
from wamforge.model_zoo.regimes.chunked import ChunkedControl


class ChunkPolicy(Protocol):
    def act(self, observation: dict, instruction: str) -> np.ndarray:
        """observation = {"image": uint8 [V, H, W, 3], "proprio": float32 [P]} -> actions [H, A], raw units.

        A policy with past context also has reset() (episode start), observe(observation) (a step
        it does not act on) and needs_history."""


class _Expert:
    def start(self, env, task: str, seed: int) -> None:
        self.policy = mw.expert(task)

    def action(self, env, obs: np.ndarray) -> np.ndarray:
        return self.policy.get_action(obs)


class _Random:
    def start(self, env, task: str, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def action(self, env, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(env.action_space.low, env.action_space.high)


class _Chunked:
    """The chunked regime's control loop, fed Meta-World observations."""

    def __init__(self, policy: ChunkPolicy, execute_steps: int):
        self.policy, self.execute_steps = policy, execute_steps
        self.control = None

    @property
    def latencies_ms(self) -> list[float]:
        return self.control.latencies_ms if self.control else []

    def start(self, env, task: str, seed: int) -> None:
        if self.control is None:
            self.control = ChunkedControl(self.policy, self.execute_steps, env.action_space.shape[0])
        self.control.reset(mw.instruction(task))

    def action(self, env, obs: np.ndarray) -> np.ndarray:
        return self.control.step(lambda: {"image": mw.render(env)[None], "proprio": mw.proprio(obs)})


def evaluate(policy: ChunkPolicy | None, cfg: EvalConfig, resolution: tuple[int, int] = (64, 64),
             camera: str = "corner", out_dir: str | Path = ".") -> dict:
    """Run policy (skipped when None), expert and random on cfg.tasks x cfg.episodes seeded layouts.

    Writes out_dir/report.json and out_dir/report.png and returns the report.
    """
    if not cfg.tasks:
        raise ValueError("eval.tasks is empty; name at least one Meta-World task to evaluate on")
    seeds = {task: [mw.episode_seed(cfg.seed, task, i) for i in range(cfg.episodes)] for task in cfg.tasks}
    controllers = {"expert": _Expert(), "random": _Random()}
    if policy is not None:
        controllers = {"policy": _Chunked(policy, cfg.execute_steps), **controllers}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    episodes: dict[str, list[dict]] = {name: [] for name in controllers}
    with Progress() as progress:
        bar = progress.add_task("evaluating", total=len(controllers) * cfg.episodes * len(cfg.tasks))
        for task in cfg.tasks:
            env = mw.make_env(task, seeds[task][0], camera, resolution, cfg.max_steps)
            try:
                for name, controller in controllers.items():
                    progress.update(bar, description=f"{name} · {task}")
                    for seed in seeds[task]:
                        episodes[name].append(_run_episode(env, controller, task, seed))
                        progress.advance(bar)
            finally:
                env.close()

    report = {
        "tasks": cfg.tasks,
        "seeds": seeds,
        "execute_steps": cfg.execute_steps,
        "inference": cfg.inference().as_dict(),  # the controller's knobs the policy ran with
        "camera": camera,
        "resolution": list(resolution),
        "config": cfg.model_dump(mode="json"),
        "controllers": {name: _summary(runs, cfg.tasks) for name, runs in episodes.items()},
    }
    if policy is not None:
        report["controllers"]["policy"].update(latency_ms=_latency(controllers["policy"].latencies_ms),
                                               peak_memory_mb=_peak_memory_mb())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    _plot(report, out_dir / "report.png")
    return report


def _run_episode(env, controller, task: str, seed: int) -> dict:
    """Until the first success or the step limit; success at any step counts."""
    obs, _ = env.reset(seed=seed)
    controller.start(env, task, seed)
    steps, solved = 0, False
    while not solved:
        obs, _, terminated, truncated, info = env.step(mw.clip_action(env, controller.action(env, obs)))
        steps += 1
        solved = mw.success(info)
        if terminated or truncated:
            break
    return {"task": task, "seed": seed, "success": solved, "length": steps}


def _summary(runs: list[dict], tasks: list[str]) -> dict:
    return {
        "success_rate": float(np.mean([r["success"] for r in runs])),
        "per_task": {t: float(np.mean([r["success"] for r in runs if r["task"] == t])) for t in tasks},
        "mean_episode_length": float(np.mean([r["length"] for r in runs])),
        "episodes": runs,
    }


def _latency(latencies_ms: list[float]) -> dict:
    return {"p50": float(np.percentile(latencies_ms, 50)), "p95": float(np.percentile(latencies_ms, 95)),
            "mean": float(np.mean(latencies_ms)), "calls": len(latencies_ms)}


def _peak_memory_mb() -> dict:
    """Process-wide RSS high-water mark (simulator included), and CUDA peak since evaluate began."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"rss": rss_bytes / 2**20, "cuda": cuda}


def _plot(report: dict, path: Path) -> None:
    tasks, controllers = report["tasks"], report["controllers"]
    x = np.arange(len(tasks))
    width = 0.8 / len(controllers)
    fig = Figure(figsize=(max(5.0, 1.6 * len(tasks) + 2), 3.6))
    ax = fig.add_subplot()
    for i, (name, summary) in enumerate(controllers.items()):
        rates = [summary["per_task"][t] for t in tasks]
        bars = ax.bar(x + (i - (len(controllers) - 1) / 2) * width, rates, width,
                      label=f"{name} ({summary['success_rate']:.0%} overall)")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, tasks)
    ax.set_ylim(0, 1.3)  # headroom for the legend
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("success rate")
    ax.legend(loc="upper center", ncols=len(controllers), fontsize=8, frameon=False)
    title = f"Meta-World, {report['config']['episodes']} episodes/task, K={report['execute_steps']}"
    if "latency_ms" in controllers.get("policy", {}):
        lat = controllers["policy"]["latency_ms"]
        title += f"; policy latency p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
