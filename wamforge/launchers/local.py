"""Local launcher: N rank processes on this machine (CPU ranks over gloo, or one per GPU)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(config_path: Path, world_size: int, threads_per_rank: int = 1, resume: bool = False,
                 overwrite: bool = False) -> int:
    """Run the trainer on `world_size` local ranks; returns the first failing exit code, or 0."""
    if torch.cuda.is_available() and world_size > torch.cuda.device_count():
        raise ValueError(f"training.world_size={world_size} but only {torch.cuda.device_count()} GPUs are visible")
    port = free_port()
    command = [sys.executable, "-m", "wamforge.training.worker", str(config_path)]
    command += ["--resume"] * resume + ["--overwrite"] * overwrite
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": str(threads_per_rank), "PYTHONUNBUFFERED": "1"}
        if not torch.cuda.is_available():
            env.setdefault("DS_ACCELERATOR", "cpu")
        procs.append(subprocess.Popen(command, env=env))
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:  # one rank died: the others would hang in a collective
                _stop(procs)
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(procs)
        raise


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
