"""Per-stage metrics.jsonl (rank 0) and per-rank sample traces; both rewind on resume so that the
files always read like one uninterrupted run."""
from __future__ import annotations

import json
from pathlib import Path


class JsonlLog:
    def __init__(self, path: Path, resume_step: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if path.exists() and resume_step > 0:
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))
        self.file = open(path, "a", buffering=1)

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self.file.close()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def stage_summary(metrics_path: Path, window: int = 10) -> dict:
    rows = read_jsonl(metrics_path)
    if not rows:
        return {}
    losses = [r["loss"] for r in rows]
    speeds = [r["samples_per_s"] for r in rows[min(3, len(rows) - 1):]]  # skip warm-up steps
    return {"steps": rows[-1]["step"], "first_loss": sum(losses[:window]) / len(losses[:window]),
            "last_loss": sum(losses[-window:]) / len(losses[-window:]),
            "samples_per_s": sum(speeds) / len(speeds)}
