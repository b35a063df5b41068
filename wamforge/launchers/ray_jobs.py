"""Ray launcher, the job side: data builds and training drivers submitted as Ray Jobs, and their
status, logs and cancel, all through the Jobs API (`JobSubmissionClient`).

`address` is the cluster's dashboard, e.g. http://HEAD:8265; RAY_API_SERVER_ADDRESS / RAY_ADDRESS in
the environment take precedence, as in Ray's own `ray job` commands. (A GCS address, HEAD:6379, works
too, but Ray resolves it through the GCS, which on a token cluster also needs RAY_AUTH_MODE=token.)
Clusters with token authentication get Ray's token, sent to `address` only (see `auth_headers`).

What a job runs and where:
- the wamforge installed on the cluster, not an upload of this checkout: the nodes need torch,
  DeepSpeed, MuJoCo and the decoders installed anyway, which a working_dir upload cannot bring.
  `ship_code=True` uploads this checkout's `wamforge` package (py_modules, a few hundred KB) to run
  local changes on a cluster that has the dependencies;
- in `workdir` (default: the current directory), so a config's relative paths (run_dir, sources,
  embodiments) name the same files as they do here. The cluster must see that filesystem (a local
  cluster, or storage shared by the nodes, as SLURM needs too); a working_dir upload would run in a
  throwaway copy instead, and every run directory written there would be lost with it.
"""
from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from wamforge.launchers.ray_train import RANK_LINE

PACKAGE = Path(__file__).resolve().parents[1]  # the wamforge package, for ship_code
FINISHED = {"SUCCEEDED", "FAILED", "STOPPED"}
PREFIX = "ray:"  # how the CLI names Ray job ids beside SLURM's


@dataclass(frozen=True)
class RayJob:
    job_id: str
    state: str  # PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED
    message: str  # Ray's one-line account, e.g. why it failed
    entrypoint: str

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


# ----------------------------------------------------------------------------- submitting

def submit_build(config_path: str | Path, address: str, force: bool = False, ship_code: bool = False,
                 workdir: str | Path | None = None) -> str:
    """`wamforge data build CONFIG` as a Ray Job on the cluster at `address`, its Ray Data tasks on
    that cluster's workers; returns the job id at once."""
    config = Path(config_path).absolute()
    command = ["python", "-m", "wamforge.cli", "data", "build", str(config), "--ray-address", "auto"]
    command += ["--force"] * force
    return _submit(command, address, ship_code, workdir, kind="data build", config=config)


def submit_training(config_path: str | Path, address: str, workers: int | None = None,
                    stages: list[str] | None = None, max_failures: int = 3, ship_code: bool = False,
                    workdir: str | Path | None = None) -> str:
    """Training as a Ray Job whose driver runs Ray Train (see ray_train.py): `workers` ranks (default
    training.world_size), the stages in `stages` (default all), a dead worker restarting the group
    from the latest checkpoint up to `max_failures` times; returns the job id at once. Pass the
    resolved config (the one `wamforge train` saves as <run_dir>/<name>/config.yaml)."""
    config = Path(config_path).absolute()
    if max_failures < -1:
        raise ValueError(f"max_failures={max_failures}: give a count of restarts, or -1 for no limit.")
    command = ["python", "-m", "wamforge.launchers.ray_train", str(config), "--max-failures", str(max_failures)]
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers={workers}: a training job needs at least one worker.")
        command += ["--workers", str(workers)]
    for stage in stages or []:
        command += ["--stage", stage]
    # Ray folds log lines that differ only in numbers into one; each rank's "which pid am I" line stays
    env = {"RAY_DEDUP_LOGS_ALLOW_REGEX": RANK_LINE.pattern}
    return _submit(command, address, ship_code, workdir, kind="train", config=config, env=env)


def _submit(command: list[str], address: str, ship_code: bool, workdir: str | Path | None, kind: str,
            config: Path, env: dict[str, str] | None = None) -> str:
    if not config.is_file():
        raise FileNotFoundError(f"{config}: no such config file.")
    workdir = Path(workdir).absolute() if workdir is not None else Path.cwd()
    # one shell line, every word quoted: paths and stage names never run as commands
    entrypoint = f"cd {shlex.quote(str(workdir))} && {shlex.join(command)}"
    runtime_env = {"env_vars": {**job_env(), **(env or {})}}
    if ship_code:
        runtime_env.update(py_modules=[str(PACKAGE)], excludes=["__pycache__", "*.pyc"])
    client = _client(address)
    return _call(address, "submitting the job", lambda: client.submit_job(
        entrypoint=entrypoint, runtime_env=runtime_env,
        metadata={"wamforge": kind, "config": str(config)}))


def job_env() -> dict[str, str]:
    """What a job inherits from the submitting shell: wamforge's own switches (WAMFORGE_*), the
    renderer MuJoCo should use, and unbuffered output so `logs` shows progress as it happens."""
    env = {k: v for k, v in os.environ.items() if k.startswith("WAMFORGE_")}
    env["MUJOCO_GL"] = os.environ.get("MUJOCO_GL", "egl")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ----------------------------------------------------------------------------- jobs

def status(job_id: str, address: str) -> RayJob:
    """The job's state, and Ray's message about it (the exit code when a job failed)."""
    job_id = _job_id(job_id)
    client = _client(address)
    info = _call(address, f"reading Ray job {job_id}", lambda: client.get_job_info(job_id), job_id)
    return RayJob(job_id, info.status.value, info.message or "", info.entrypoint or "")


def logs(job_id: str, address: str) -> str:
    """Everything the job's driver printed so far, with what Ray forwarded of its workers' output
    (the last lines of a worker can miss a driver that has already exited)."""
    job_id = _job_id(job_id)
    client = _client(address)
    return _call(address, f"reading the logs of Ray job {job_id}", lambda: client.get_job_logs(job_id), job_id)


def cancel(job_id: str, address: str) -> bool:
    """Stop the job: its driver gets SIGTERM (SIGKILL after a grace period) and the Ray Train
    workers go with it; a resubmitted training resumes from the latest checkpoint. False if the job
    had already finished."""
    job_id = _job_id(job_id)
    client = _client(address)
    return bool(_call(address, f"cancelling Ray job {job_id}", lambda: client.stop_job(job_id), job_id))


def wait(job_id: str, address: str, timeout_s: float | None = None, poll_s: float = 1.0) -> RayJob:
    """Poll until the job has finished; returns its final state, or raises TimeoutError."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        job = status(job_id, address)
        if job.finished:
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"Ray job {job.job_id} is still {job.state} after {timeout_s:.0f} s.")
        time.sleep(poll_s)


def _job_id(job_id: str) -> str:
    text = str(job_id).removeprefix(PREFIX).strip()
    if not text or any(c.isspace() or c == "/" for c in text):
        raise ValueError(f"{job_id!r} is not a Ray job id (e.g. raysubmit_AbC123 or ray:raysubmit_AbC123).")
    return text


def auth_headers() -> dict[str, str]:
    """Ray's bearer token for the Jobs API, found where Ray documents it: RAY_AUTH_TOKEN, else the
    file named by RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; none with RAY_AUTH_MODE=disabled.
    Looked up on every call because Ray's own client settles its auth mode once, when `ray` is first
    imported: a process that imported Ray before RAY_AUTH_MODE was set, or one that never set it for
    a cluster `ray start` put in token mode because a token file exists, would send no token."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        named = os.environ.get("RAY_AUTH_TOKEN_PATH")
        path = Path(named) if named else Path.home() / ".ray" / "auth_token"
        if named and not path.is_file():
            raise FileNotFoundError(f"RAY_AUTH_TOKEN_PATH={named}: no such token file; point it at the "
                                    f"cluster's token, or unset it to use ~/.ray/auth_token.")
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    from ray.exceptions import AuthenticationError

    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except AuthenticationError as err:
        raise _refused(address, err) from None
    except (ConnectionError, OSError) as err:
        raise RuntimeError(f"cannot reach the Ray Jobs API at {address} ({err}); start the cluster with "
                           f"`ray start --head` or pass its dashboard address, e.g. http://HEAD:8265.") from None


def _call(address: str, doing: str, request, job_id: str | None = None):
    """A Jobs API request; a refusal becomes one sentence (an unknown job, a wrong token)."""
    from ray.exceptions import AuthenticationError

    try:
        return request()
    except AuthenticationError as err:
        raise _refused(address, err) from None
    except (ConnectionError, OSError) as err:
        raise RuntimeError(f"{doing}: the Ray Jobs API at {address} did not answer ({err}).") from None
    except RuntimeError as err:
        if job_id is not None and "404" in str(err):
            raise ValueError(f"Ray job {job_id} is not known to the cluster at {address}.") from None
        raise RuntimeError(f"{doing} at {address} failed: {err}") from None


def _refused(address: str, err: Exception) -> RuntimeError:
    reason = str(err).split("\n")[0].rstrip(".")
    return RuntimeError(f"the Ray cluster at {address} refused the request ({reason}); give its token in "
                        f"RAY_AUTH_TOKEN or ~/.ray/auth_token (`ray get-auth-token` on the head node prints it).")
