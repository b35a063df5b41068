"""Local launcher: N rank processes on this machine (CPU ranks over gloo, or one per GPU)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from wamforge.training.preemption import PREEMPTED_EXIT, SIGNALS


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
               "LOCAL_WORLD_SIZE": str(world_size),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": str(threads_per_rank), "PYTHONUNBUFFERED": "1"}
        if not torch.cuda.is_available():
            env.setdefault("DS_ACCELERATOR", "cpu")
        procs.append(subprocess.Popen(command, env=env))

    def forward(signum, frame):  # a stop request reaches every rank; they checkpoint together
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in SIGNALS}
    try:
        while True:
            codes = [p.poll() for p in procs]
            if PREEMPTED_EXIT in codes:  # stopping on request: the others are finishing the same checkpoint
                return _wait_all(procs) or PREEMPTED_EXIT
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
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_all(procs: list[subprocess.Popen], timeout: float = 300.0) -> int:
    """Wait for every rank; the first exit code that is neither 0 nor PREEMPTED_EXIT, else 0."""
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            _stop(procs)
    codes = [p.returncode for p in procs]
    return next((c for c in codes if c not in (0, PREEMPTED_EXIT)), 0)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
