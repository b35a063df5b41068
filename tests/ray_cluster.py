"""A real single-node Ray cluster for the tests: `ray start --head --block` on free ports in its own
temp dir, with token authentication, stopped by the pids it started (never `ray stop`, which would
stop every Ray instance on the machine, other test sessions' included)."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

VENV_BIN = Path(sys.executable).parent
RAY = VENV_BIN / "ray"


@dataclass
class RayCluster:
    address: str          # the GCS, what `ray.init(address=...)` takes
    dashboard: str        # the Jobs API, what JobSubmissionClient takes
    temp_dir: Path
    process: subprocess.Popen
    log: Path

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: the `ray start` process, its descendants, and any left in its
        session after their parent died (a killed worker's children)."""
        found = {}
        try:
            root = psutil.Process(self.process.pid)
            for p in [root, *root.children(recursive=True)]:
                found[p.pid] = p
        except psutil.NoSuchProcess:
            pass
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.process.pid:
                    found[p.pid] = p
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return list(found.values())


def auth_token() -> str:
    """Ray's token from ~/.ray/auth_token (created if missing), the same file a local `ray.init()` uses:
    the cluster, the jobs it runs and the tests' job clients then all hold the same token."""
    return subprocess.run([str(RAY), "get-auth-token", "--generate"], check=True, capture_output=True,
                          text=True).stdout.strip()


def cluster_env(temp_dir: Path, dashboard_port: int) -> dict:
    # jobs run `python`, which must be this venv's; a bin dir holding only that, rather than the venv's
    # whole bin on PATH, whose ninja (not the system's) would make DeepSpeed rebuild its cached CPU ops
    # for every process on the machine, these tests' and everyone else's
    bin_dir = temp_dir / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update({
        "RAY_AUTH_MODE": "token",
        # Ray's own state clients in the cluster (Ray Train's placement-group cleaner) find the cluster by
        # /tmp/ray or by scanning for GCS processes, which fails with two clusters on one machine
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}",
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "MUJOCO_GL": env.get("MUJOCO_GL", "egl"),
        "PYTHONUNBUFFERED": "1",
    })
    return env


class PortCollision(RuntimeError):
    """Ray refused to start: a port we chose was one it had picked for itself."""


def start_cluster(num_cpus: int = 2, timeout_s: float = 90, attempts: int = 3) -> RayCluster:
    """Ray picks ports for components we cannot pin (its metrics agent) while the ones we chose are
    free but not yet bound, and refuses to start when the two coincide: start again on fresh ports."""
    for attempt in range(attempts):
        try:
            return _start_cluster(num_cpus, timeout_s)
        except PortCollision:
            if attempt == attempts - 1:
                raise


def distinct_free_ports(count: int) -> list[int]:
    """`count` ports free at once (each socket held until all are chosen, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _start_cluster(num_cpus: int, timeout_s: float) -> RayCluster:
    # a short temp dir: Ray's unix sockets live under it and their paths are length-limited; it also
    # keeps this cluster out of /tmp/ray, where other processes' `ray.init()` would find and join it
    temp_dir = Path(tempfile.mkdtemp(prefix="wfray", dir="/tmp"))
    token = auth_token()
    names = ["--node-manager-port", "--object-manager-port", "--ray-client-server-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
             "--metrics-export-port"]
    gcs_port, dashboard_port, *chosen = distinct_free_ports(2 + len(names))
    ports = dict(zip(names, chosen))
    command = [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
               f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}",
               "--disable-usage-stats", *[f"{k}={v}" for k, v in ports.items()]]
    log = temp_dir / "ray_start.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=cluster_env(temp_dir, dashboard_port), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    cluster = RayCluster(f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", temp_dir, process, log)
    try:
        _wait_until_serving(cluster, token, timeout_s)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def _wait_until_serving(cluster: RayCluster, token: str, timeout_s: float) -> None:
    import requests

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if cluster.process.poll() is not None:
            log = cluster.log.read_text()
            if "is trying to use a port number" in log:
                raise PortCollision(log[-3000:])
            raise RuntimeError(f"ray start exited with {cluster.process.returncode}:\n{log[-3000:]}")
        try:
            if requests.get(f"{cluster.dashboard}/api/version", timeout=2,
                            headers={"Authorization": f"Bearer {token}"}).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the Ray dashboard at {cluster.dashboard} did not answer within {timeout_s:.0f} s:\n"
                       f"{cluster.log.read_text()[-3000:]}")


def stop_cluster(cluster: RayCluster, grace_s: float = 5) -> None:
    """SIGTERM to every process of the cluster, SIGKILL to those still alive after `grace_s` (`ray start`
    itself and the autoscaler monitor do not exit on SIGTERM), then its temp dir goes."""
    procs = cluster.processes()
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for _ in range(3):  # anything started while the others were going down goes too
        alive = {*alive, *cluster.processes()}
        if not alive:
            break
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(alive), timeout=5)
        alive = set()
    cluster.process.wait(timeout=5)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
