"""Stage mixtures: source weights at a global step (curricula are piecewise linear or step
functions of it), and a
draw of sources for each batch slot that depends only on (seed, step, rank), so a resumed run
draws exactly what an uninterrupted one would."""
from __future__ import annotations

import numpy as np

from wamforge.config.stages import MixtureConfig


def weights_at(mixture: MixtureConfig, step: int, sizes: dict[str, int] | None = None) -> dict[str, float]:
    """Normalized source weights at `step`; with balance "size", also proportional to `sizes`."""
    points = mixture.curriculum
    if not points:
        table = dict(mixture.weights)
    elif step <= points[0].step:
        table = dict(points[0].weights)
    elif step >= points[-1].step:
        table = dict(points[-1].weights)
    else:
        right = next(i for i, p in enumerate(points) if p.step > step)
        a, b = points[right - 1], points[right]
        frac = 0.0 if mixture.interpolation == "step" else (step - a.step) / (b.step - a.step)
        names = set(a.weights) | set(b.weights)
        table = {n: (1 - frac) * a.weights.get(n, 0.0) + frac * b.weights.get(n, 0.0) for n in names}
    if mixture.balance == "size":
        if sizes is None:
            raise ValueError("a size-balanced mixture needs the built dataset's sample counts")
        table = {n: w * sizes[n] for n, w in table.items()}
    total = sum(table.values())
    return {name: w / total for name, w in sorted(table.items()) if w > 0}


def draw_sources(weights: dict[str, float], batch_size: int, seed: int, step: int, rank: int) -> list[str]:
    rng = np.random.default_rng([seed, step, rank])
    names = list(weights)
    picks = rng.choice(len(names), size=batch_size, p=np.array([weights[n] for n in names]))
    return [names[i] for i in picks]
