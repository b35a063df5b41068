"""The evaluation report: LeRobot's `eval_info.json` layout (`per_episode`, `per_task`,
`per_group`, `overall` with `pc_success`) per controller, plus what no anchor reports together:
a Beta-posterior interval on every success rate, per-chunk latency p50/p95, peak memory, the
denoising steps, K and H, and the sustained horizon; and a plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import beta

INTERVAL = 0.95  # central credible interval of Beta(successes + 1, failures + 1): a uniform prior


def success_interval(successes: int, episodes: int, level: float = INTERVAL) -> list[float]:
    """[low, high] in percent: where the true success rate lies with probability `level`."""
    tail = (1 - level) / 2
    a, b = successes + 1, episodes - successes + 1
    return [float(100 * beta.ppf(tail, a, b)), float(100 * beta.ppf(1 - tail, a, b))]


def _rates(records: list[dict]) -> dict:
    successes = [bool(r["success"]) for r in records]
    n, s = len(successes), int(sum(successes))
    return {"pc_success": 100 * s / n, "interval": success_interval(s, n), "n_episodes": n,
            "avg_sum_reward": float(np.mean([r["sum_reward"] for r in records])),
            "avg_max_reward": float(np.mean([r["max_reward"] or 0.0 for r in records]))}


def eval_info(records: list[dict], tasks: list[str]) -> dict:
    """One controller's episodes -> LeRobot's eval_info layout with wamforge's additions."""
    per_episode = [{"episode_ix": i, "task": r["task"], "seed": r["episode_seed"], "eval_seed": r["seed"],
                    "success": bool(r["success"]), "length": r["length"], "sum_reward": r["sum_reward"],
                    "max_reward": r["max_reward"], "failure": r["failure"],
                    **({"stopped": r["stopped"]} if "stopped" in r else {}),  # an open-loop plan's end
                    **({"video": r["video"]} if "video" in r else {})}
                   for i, r in enumerate(records)]
    per_task = []
    for task_id, task in enumerate(tasks):
        runs = [r for r in records if r["task"] == task]
        per_task.append({"task_group": runs[0]["group"], "task_id": task_id, "task": task, "metrics": {
            "successes": [bool(r["success"]) for r in runs], "sum_rewards": [r["sum_reward"] for r in runs],
            "max_rewards": [r["max_reward"] for r in runs], **_rates(runs),
            "video_paths": [r["video"] for r in runs if "video" in r]}})
    groups = list(dict.fromkeys(r["group"] for r in records))
    per_group = {g: _rates([r for r in records if r["group"] == g]) for g in groups}
    latencies = [ms for r in records for ms in r["latency_ms"]]
    seconds = sum(r["seconds"] for r in records)  # episode time, whichever worker ran it
    overall = {**_rates(records), "eval_s": seconds, "eval_ep_s": seconds / len(records),
               "video_paths": [r["video"] for r in records if "video" in r],
               "sustained_horizon": float(np.mean([r["length"] for r in records])),
               "failures": {r["failure"]: sum(q["failure"] == r["failure"] for q in records)
                            for r in records if r["failure"]},
               "peak_memory_mb": {"rss": max(r["peak_rss_mb"] for r in records)},
               **records[0].get("regime", {})}
    if latencies:
        overall["latency_ms"] = {"p50": float(np.percentile(latencies, 50)),
                                 "p95": float(np.percentile(latencies, 95)),
                                 "mean": float(np.mean(latencies)), "calls": len(latencies)}
    return {"per_episode": per_episode, "per_task": per_task, "per_group": per_group, "overall": overall}


def plot_report(report: dict, path: Path) -> Path:
    """Success per task and controller with its interval; the policy's latency in the title."""
    tasks, controllers = report["tasks"], report["controllers"]
    x = np.arange(len(tasks))
    width = 0.8 / len(controllers)
    fig = Figure(figsize=(max(5.0, 1.1 * len(tasks) + 2), 3.8))
    ax = fig.add_subplot()
    for i, (name, info) in enumerate(controllers.items()):
        metrics = [t["metrics"] for t in info["per_task"]]
        rates = np.array([m["pc_success"] for m in metrics]) / 100
        low, high = (np.array([m["interval"][k] for m in metrics]) / 100 for k in (0, 1))
        overall = info["overall"]
        ax.bar(x + (i - (len(controllers) - 1) / 2) * width, rates, width,
               yerr=[np.clip(rates - low, 0, None), np.clip(high - rates, 0, None)], capsize=2, error_kw={"elinewidth": 0.7},
               label=f"{name} ({overall['pc_success']:.0f}% [{overall['interval'][0]:.0f}, "
                     f"{overall['interval'][1]:.0f}])")
    ax.set_xticks(x, [t.removesuffix("-v3") for t in tasks], rotation=30 if len(tasks) > 4 else 0, ha="right"
                  if len(tasks) > 4 else "center", fontsize=7 if len(tasks) > 10 else 9)
    ax.set_ylim(0, 1.35)  # headroom for the legend
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel(f"success rate ({INTERVAL:.0%} interval)")
    ax.legend(loc="upper center", ncols=min(3, len(controllers)), fontsize=7, frameon=False)
    protocol = report["protocol"]
    title = (f"{report['suite']}: {protocol['episodes']} episodes x {len(protocol['seeds'])} seed(s) per task, "
             f"K={protocol['execute_steps']}")
    latency = controllers.get("policy", {}).get("overall", {}).get("latency_ms")
    if latency:
        title += f"\npolicy p50 {latency['p50']:.1f} ms, p95 {latency['p95']:.1f} ms per chunk"
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
