"""The dataset card as a picture: episode lengths per source, action ranges per embodiment."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_data_card(out: Path, name: str, lengths: dict[str, list[int]], stats: dict) -> Path:
    embodiments = [e for e in sorted(stats) if "actions" in stats[e]]
    fig, axes = plt.subplots(1, 1 + len(embodiments), figsize=(4.5 * (1 + len(embodiments)), 3.6), squeeze=False)
    ax = axes[0][0]
    every = [v for values in lengths.values() for v in values]
    bins = np.histogram_bin_edges(every, bins=20) if every else 10  # shared, so every source shows
    for source, values in sorted(lengths.items()):
        if values:
            ax.hist(values, bins=bins, alpha=0.6, label=f"{source} ({len(values)})")
    ax.set_title(f"{name}: episode lengths")
    ax.set_xlabel("frames")
    ax.set_ylabel("episodes")
    ax.legend(fontsize=8)
    for ax, embodiment in zip(axes[0][1:], embodiments):
        s = stats[embodiment]["actions"]
        dims = np.arange(len(s["mean"]))
        ax.vlines(dims, s["min"], s["max"], color="0.75", linewidth=6, label="min..max")
        ax.vlines(dims, s["q01"], s["q99"], color="C0", linewidth=6, label="q01..q99")
        ax.errorbar(dims, s["mean"], yerr=s["std"], fmt="o", color="C3", capsize=3, label="mean ± std")
        ax.set_title(f"{embodiment}: actions ({s['count']} rows)")
        ax.set_xlabel("action dim")
        ax.set_xticks(dims)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
