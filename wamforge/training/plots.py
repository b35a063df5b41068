"""Pictures of a run: loss curves and realized mixture weights per stage, and a config's curricula."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wamforge.config.paths import RunPaths  # noqa: E402
from wamforge.config.experiment import ExperimentConfig  # noqa: E402
from wamforge.training.metrics import read_jsonl  # noqa: E402


def plot_training(cfg: ExperimentConfig, out: Path | None = None) -> Path | None:
    paths = RunPaths.of(cfg)
    stages = [(s, paths.stage(s.name) / "metrics.jsonl") for s in cfg.stages]
    stages = [(s, read_jsonl(m)) for s, m in stages if m.exists()]
    if not stages:
        return None
    fig, axes = plt.subplots(3, len(stages), figsize=(4.2 * len(stages), 9), squeeze=False)
    for col, (stage, rows) in enumerate(stages):
        steps = [r["step"] for r in rows]
        top, middle, bottom = axes[0][col], axes[1][col], axes[2][col]
        for key, colour in (("loss", "C0"), ("video_loss", "C1"), ("action_loss", "C2")):
            values = [r[key] for r in rows]
            if any(values):
                top.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
                top.plot(steps, _smooth(values), color=colour, label=key.replace("_", " "))
        top.set_title(f"{stage.name} ({stage.objective})")
        top.set_xlabel("step")
        top.legend(fontsize=8)
        _plot_sources(middle, rows)
        sources = sorted({name for r in rows for name in r["mixture"]})
        for i, name in enumerate(sources):
            bottom.plot(steps, [r["mixture"].get(name, 0.0) for r in rows], color=f"C{i}", label=f"{name} target")
            if "realized" in rows[0]:
                bottom.plot(steps, [r["realized"].get(name, 0.0) for r in rows], color=f"C{i}", linestyle="--",
                            label=f"{name} realized (cumulative)")
        bottom.set_ylim(0, 1.05)
        bottom.set_xlabel("step")
        bottom.set_ylabel("mixture share")
        bottom.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out or paths.root / "training.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _plot_sources(ax, rows: list[dict]) -> None:
    """Each source's video (solid) and action (dashed) loss, smoothed; a source is drawn where it was sampled."""
    sources = sorted({name for r in rows for name in r.get("source_loss", {})})
    for i, name in enumerate(sources):
        for key, style in (("video_loss", "-"), ("action_loss", "--")):
            points = [(r["step"], r["source_loss"][name][key]) for r in rows if name in r.get("source_loss", {})]
            if any(v for _, v in points):
                ax.plot([s for s, _ in points], _smooth([v for _, v in points]), color=f"C{i}", linestyle=style,
                        label=f"{name} {key.split('_')[0]}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per source")
    if sources:
        ax.legend(fontsize=8)


def plot_curriculum(cfg: ExperimentConfig, out: Path) -> Path:
    """Every stage's source weights over its steps, as the loader will draw them."""
    from wamforge.data_pipeline.loader.mixture import weights_at

    fig, axes = plt.subplots(1, len(cfg.stages), figsize=(4.2 * len(cfg.stages), 3.2), squeeze=False)
    sources = list(cfg.data.sources)
    manifest = RunPaths.of(cfg).data / "manifest.json"
    sizes = ({n: s["samples"] for n, s in json.loads(manifest.read_text())["sources"].items()}
             if manifest.exists() else None)  # size-balanced mixtures need the built counts
    for ax, stage in zip(axes[0], cfg.stages):
        steps = list(range(stage.steps + 1))
        tables = [weights_at(stage.mixture, s, sizes) for s in steps]
        ax.stackplot(steps, [[t.get(name, 0.0) for t in tables] for name in sources], labels=sources,
                     colors=[f"C{i}" for i in range(len(sources))], alpha=0.85)
        ax.set_title(f"{stage.name} ({stage.objective})")
        ax.set_xlim(0, stage.steps)
        ax.set_ylim(0, 1)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("share of each batch")
    axes[0][-1].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
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
