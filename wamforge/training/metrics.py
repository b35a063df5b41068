"""Per-stage metrics.jsonl (rank 0) and per-rank sample traces; both rewind on resume so that the
files always read like one uninterrupted run."""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch


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


class TensorBoardLog:
    """The same rows as scalars in <stage>/tensorboard (nested tables as `table/key`)."""

    def __init__(self, directory: Path, resume_step: int):
        from tensorboardX import SummaryWriter

        # purge_step drops events a resumed run is about to write again
        self.writer = SummaryWriter(str(directory), purge_step=resume_step + 1 if resume_step else None)

    def write(self, row: dict) -> None:
        for key, value in _scalars(row):
            self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self.writer.close()


def _scalars(row: dict, prefix: str = ""):
    for key, value in row.items():
        if key == "step":
            continue
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and value == value:  # NaN-free numbers only
            yield f"{prefix}{key}", value


def peak_memory_mb(device: torch.device) -> float:
    """The accelerator's peak allocation, or this process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


# dense bf16 tensor-core peaks (FLOP/s) of the GPUs MFU is reported for
_PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "H800": 989e12, "GH200": 989e12, "B200": 2250e12,
              "A100": 312e12, "A800": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None  # no meaningful peak for a CPU: MFU is left out
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in _PEAK_BF16.items() if key in name), None)


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
