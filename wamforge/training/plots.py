"""Loss curves and mixture weights of every stage, in one picture per run."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wamforge.config.paths import RunPaths  # noqa: E402
from wamforge.config.schema import ExperimentConfig  # noqa: E402
from wamforge.training.metrics import read_jsonl  # noqa: E402


def plot_training(cfg: ExperimentConfig, out: Path | None = None) -> Path | None:
    paths = RunPaths.of(cfg)
    stages = [(s, paths.stage(s.name) / "metrics.jsonl") for s in cfg.stages]
    stages = [(s, read_jsonl(m)) for s, m in stages if m.exists()]
    if not stages:
        return None
    fig, axes = plt.subplots(2, len(stages), figsize=(4.2 * len(stages), 6), squeeze=False)
    for col, (stage, rows) in enumerate(stages):
        steps = [r["step"] for r in rows]
        top, bottom = axes[0][col], axes[1][col]
        for key, colour in (("loss", "C0"), ("video_loss", "C1"), ("action_loss", "C2")):
            values = [r[key] for r in rows]
            if any(values):
                top.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
                top.plot(steps, _smooth(values), color=colour, label=key.replace("_", " "))
        top.set_title(f"{stage.name} ({stage.objective})")
        top.set_xlabel("step")
        top.legend(fontsize=8)
        sources = sorted({name for r in rows for name in r["mixture"]})
        for name in sources:
            bottom.plot(steps, [r["mixture"].get(name, 0.0) for r in rows], label=name)
        bottom.set_ylim(0, 1.05)
        bottom.set_xlabel("step")
        bottom.set_ylabel("mixture weight")
        bottom.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out or paths.root / "training.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _smooth(values: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average: readable curves from noisy per-step losses."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** i))
    return out
