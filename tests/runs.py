"""Starting and watching real training runs from tests: the CLI in a subprocess, on the tiny experiment."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_config, write_config
from wamforge.config import validate
from wamforge.config.paths import RunPaths


def wamforge(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wamforge.cli", *map(str, args)], **kwargs)


def wait_for(path: Path, proc: subprocess.Popen, limit_s: float = 300) -> None:
    """Until a running training writes `path` (a hang guard, not a speed check)."""
    deadline = time.time() + limit_s
    while not path.exists():
        assert proc.poll() is None, f"training ended before {path} appeared"
        if time.time() > deadline:
            pytest.fail(f"{path} did not appear within {limit_s:.0f} s")
        time.sleep(0.01)


def run_config(root: Path, built_cfg) -> tuple[Path, object]:
    raw = tiny_config(root)
    raw["data"]["out_dir"] = str(RunPaths.of(built_cfg).data)  # reuse the session's built shards
    raw["data"]["sources"]["web"]["path"] = built_cfg.data.sources["web"].path
    return write_config(raw, root / "tiny.yaml"), validate(raw)


def one_stage_config(root: Path, built_cfg, stage: dict | None = None, **training):
    """The tiny experiment's first stage alone (6 steps unless `stage` says otherwise), run under `root`."""
    raw = tiny_config(root)
    raw["data"]["out_dir"] = str(RunPaths.of(built_cfg).data)
    raw["data"]["sources"]["web"]["path"] = built_cfg.data.sources["web"].path
    raw["stages"] = [{**raw["stages"][0], "steps": 6, **(stage or {})}]
    raw["training"].update(training)
    root.mkdir(parents=True, exist_ok=True)
    return write_config(raw, root / "one_stage.yaml"), validate(raw)
