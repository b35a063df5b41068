"""A real one-node SLURM cluster for the tests: munged, slurmctld and slurmd started as child
processes from a copy of wamforge/slurm/slurm.conf whose paths and ports all point into one temporary
directory, so nothing global (/etc/slurm, /run/munge, /var/spool) is read or clobbered."""
from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "wamforge" / "slurm" / "slurm.conf"


class ClusterStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_keys(text: str, values: dict[str, str]) -> str:
    """slurm.conf with each `Key=` line given a new value; every key must already be there."""
    for key, value in values.items():
        text, found = re.subn(rf"(?m)^{key}=.*$", f"{key}={value}", text)
        if not found:
            raise KeyError(f"{TEMPLATE} has no '{key}=' line")
    return text


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    # ------------------------------------------------------------------ start

    def start(self, timeout_s: float = 90) -> "SlurmCluster":
        for sub in ("munge", "state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        try:
            socket_path = self._start_munge(timeout_s)
            self._write_conf(socket_path)
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._spawn("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)])
            self._wait_idle(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self, timeout_s: float) -> Path:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket_path = self.root / "munge" / "munge.socket"
        self.logs["munged"] = self.root / "log" / "munged.log"
        # --force: it runs as root from a temp directory, which munged would otherwise refuse
        self._spawn("munged", ["munged", "--foreground", "--force", f"--key-file={key}",
                               f"--socket={socket_path}", f"--pid-file={self.root / 'run' / 'munged.pid'}",
                               f"--log-file={self.logs['munged']}", f"--seed-file={self.root / 'munge' / 'seed'}"])
        self._wait(lambda: socket_path.exists(), timeout_s, "munged did not create its socket")
        return socket_path

    def _write_conf(self, munge_socket: Path) -> None:
        self.logs["slurmctld"] = self.root / "log" / "slurmctld.log"
        self.logs["slurmd"] = self.root / "log" / "slurmd.log"
        # a build job names Ray's temp dir after its job id: ids that differ between test sessions
        # keep two sessions on this machine apart
        first_job_id = f"FirstJobId={random.randrange(1000, 1_000_000)}\n"
        self.conf.write_text(first_job_id + set_keys(TEMPLATE.read_text(), {
            "ClusterName": "wamforge-test",
            "SlurmctldPort": str(free_port()),
            "SlurmdPort": str(free_port()),
            "AuthInfo": f"socket={munge_socket}",
            "StateSaveLocation": str(self.root / "state"),
            "SlurmdSpoolDir": str(self.root / "spool"),
            "SlurmctldPidFile": str(self.root / "run" / "slurmctld.pid"),
            "SlurmdPidFile": str(self.root / "run" / "slurmd.pid"),
            "SlurmctldLogFile": str(self.logs["slurmctld"]),
            "SlurmdLogFile": str(self.logs["slurmd"]),
        }))

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.root / "log" / f"{name}.stdout", "wb")
        self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        out.close()

    def _wait_idle(self, timeout_s: float) -> None:
        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%T"], env=self.env,
                                 capture_output=True, text=True, timeout=30)
            return out.returncode == 0 and out.stdout.strip() == "idle"

        self._wait(idle, timeout_s, "the node did not become idle in sinfo")

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.time() + timeout_s
        while not ready():
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if dead or time.time() > deadline:
                reason = f"exited: {dead}" if dead else f"after {timeout_s:.0f} s"
                raise ClusterStartError(f"{what} ({reason})\n{self.describe()}")
            time.sleep(0.2)

    def describe(self) -> str:
        """Every daemon's log, for a failure message."""
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            text = path.read_text(errors="replace") if path.is_file() else ""
            parts.append(f"--- {path.name}\n{text[-4000:]}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ use

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=60)
        if check and out.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
        return out

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Cancel every job (its processes outlive slurmd otherwise), then stop each daemon by pid."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self._cancel_jobs()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _cancel_jobs(self, timeout_s: float = 40) -> None:
        listed = self.run("squeue", "-h", "-o", "%i", check=False)
        jobs = listed.stdout.split()
        if not jobs:
            return
        self.run("scancel", *jobs, check=False)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if not self.run("squeue", "-h", "-o", "%i", check=False).stdout.split():
                return
            time.sleep(0.5)
