"""Per-embodiment, per-dimension statistics, mergeable across shards built on different workers.

Moments are exact; q01/q99 come from a bounded uniform sample of rows so that memory stays flat
however large the dataset grows.
"""
from __future__ import annotations

import numpy as np

SAMPLE_ROWS = 8192


class RunningStats:
    def __init__(self, dim: int, seed: int = 0):
        self.count = 0
        self.sum = np.zeros(dim)
        self.sumsq = np.zeros(dim)
        self.min = np.full(dim, np.inf)
        self.max = np.full(dim, -np.inf)
        self.sample = np.zeros((0, dim))
        self.rng = np.random.default_rng(seed)

    def update(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        self.count += len(rows)
        self.sum += rows.sum(0)
        self.sumsq += (rows ** 2).sum(0)
        self.min = np.minimum(self.min, rows.min(0))
        self.max = np.maximum(self.max, rows.max(0))
        self._keep(rows)

    def merge(self, other: "RunningStats") -> None:
        self.count += other.count
        self.sum += other.sum
        self.sumsq += other.sumsq
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)
        self._keep(other.sample)

    def _keep(self, rows: np.ndarray) -> None:
        pool = np.concatenate([self.sample, rows])
        if len(pool) > SAMPLE_ROWS:
            pool = pool[self.rng.choice(len(pool), SAMPLE_ROWS, replace=False)]
        self.sample = pool

    def to_json(self) -> dict:
        mean = self.sum / max(self.count, 1)
        std = np.sqrt(np.maximum(self.sumsq / max(self.count, 1) - mean ** 2, 0.0))
        q01, q99 = np.quantile(self.sample, [0.01, 0.99], axis=0) if len(self.sample) else (mean, mean)
        return {"count": int(self.count), "mean": mean.tolist(), "std": std.tolist(),
                "min": self.min.tolist(), "max": self.max.tolist(), "q01": np.asarray(q01).tolist(),
                "q99": np.asarray(q99).tolist()}

    def to_partial(self) -> dict:
        """A JSON-able partial that another worker's stats can merge."""
        return {"count": self.count, "sum": self.sum.tolist(), "sumsq": self.sumsq.tolist(),
                "min": self.min.tolist(), "max": self.max.tolist(), "sample": self.sample.tolist()}

    @classmethod
    def from_partial(cls, part: dict) -> "RunningStats":
        out = cls(len(part["sum"]))
        out.count = part["count"]
        out.sum, out.sumsq = np.array(part["sum"]), np.array(part["sumsq"])
        out.min, out.max = np.array(part["min"]), np.array(part["max"])
        out.sample = np.array(part["sample"]).reshape(-1, len(part["sum"]))
        return out


def merge_partials(partials: list[dict]) -> dict:
    """[{embodiment: {"actions": partial, "proprio": partial}}] -> stats.json content."""
    merged: dict[str, dict[str, RunningStats]] = {}
    for part in partials:
        for embodiment, fields in part.items():
            for field, p in fields.items():
                stats = RunningStats.from_partial(p)
                slot = merged.setdefault(embodiment, {})
                if field in slot:
                    slot[field].merge(stats)
                else:
                    slot[field] = stats
    return {e: {f: s.to_json() for f, s in fields.items()} for e, fields in sorted(merged.items())}
