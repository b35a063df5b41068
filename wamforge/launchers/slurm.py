"""SLURM launcher: one sbatch job per training stage (chained with afterok), after an optional
Ray-on-SLURM data build; status, logs and cancel through scontrol and scancel.

The scripts are rendered from wamforge/slurm/*.sbatch (package data). Every value is checked
before it is written, and every path goes into the script shell-quoted, so no name or path can run
a command: a job name or partition must be a plain word, a path may hold any printable character.
"""
from __future__ import annotations

import re
import shlex
import string
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from wamforge.config.paths import RunPaths
from wamforge.config.experiment import ExperimentConfig
from wamforge.training.preemption import PREEMPTED_EXIT

TEMPLATES = Path(__file__).resolve().parents[1] / "slurm"
NAME = re.compile(r"[A-Za-z0-9_.-]+")
PARTITION = re.compile(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*")  # sbatch takes a list of partitions
TIME = re.compile(r"(?:(\d+)-)?(\d{1,2}):(\d{2}):(\d{2})|(\d+)")  # D-HH:MM:SS, HH:MM:SS or minutes
JOB_ID = re.compile(r"\d+(_\d+)?")
MAX_SIGNAL_SECONDS = 65535  # the largest lead sbatch --signal accepts
# states after which a job runs no more (a requeued job is PENDING again, not finished)
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT"}


class SbatchTemplate(string.Template):
    """`{{name}}` placeholders, so that the scripts' own `$VARIABLES` stay plain bash."""
    delimiter = "{{"
    pattern = r"""\{\{(?:
        (?P<escaped>\{\{) |
        (?P<named>[a-z_][a-z0-9_]*)\}\} |
        (?P<braced>(?!)) |
        (?P<invalid>)
    )"""


@dataclass(frozen=True)
class SlurmJob:
    """One submitted (or, on a dry run, rendered) job."""
    name: str
    stage: str | None  # None for the data build
    script: Path  # where the rendered script is saved
    text: str  # the rendered script
    job_id: str | None = None  # None on a dry run
    after: str | None = None  # the job id this one waits for (afterok)


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    name: str
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...
    reason: str  # why it is pending or how it ended, e.g. BeginTime, Dependency, NonZeroExitCode
    exit_code: str  # "code:signal", e.g. "0:0"
    restarts: int  # how many times it was requeued
    stdout: Path | None
    fields: dict[str, str] = field(default_factory=dict, repr=False)  # all of `scontrol show job`

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


# ----------------------------------------------------------------------------- validation

def _word(value: str, what: str, pattern: re.Pattern = NAME) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{what} {value!r} may only contain letters, digits, '_', '.' and '-'.")
    return value


def _positive(value: int, what: str, limit: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (limit and value > limit):
        bound = f" up to {limit}" if limit else ""
        raise ValueError(f"{what} must be a whole number from 1{bound}, not {value!r}.")
    return value


def _time_seconds(value: str) -> int:
    """A SLURM time limit in seconds; D-HH:MM:SS, HH:MM:SS or whole minutes."""
    match = TIME.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"time limit {value!r} must be D-HH:MM:SS, HH:MM:SS or whole minutes, e.g. 1-00:00:00.")
    days, hours, minutes, seconds, only_minutes = match.groups()
    if only_minutes is not None:
        return int(only_minutes) * 60
    if int(minutes) > 59 or int(seconds) > 59:
        raise ValueError(f"time limit {value!r} has more than 59 minutes or seconds.")
    return ((int(days or 0) * 24 + int(hours)) * 60 + int(minutes)) * 60 + int(seconds)


def _path(value: str | Path, what: str) -> str:
    """Any printable path; control characters (a newline would end an #SBATCH line) are refused."""
    text = str(value)
    if not text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f"{what} {text!r} is empty or contains control characters such as a newline.")
    return text


def _output_pattern(run_dir: Path) -> str:
    """The #SBATCH --output value: <run_dir>/slurm/%x-%j.out, quoted as sbatch reads it."""
    directory = _path(Path(run_dir) / "slurm", "run directory")
    # sbatch reads a backslash as an escape even inside quotes, and % as a file name pattern
    # (which `scontrol show job` then shows wrongly even when escaped as %%)
    if "\\" in directory or "%" in directory:
        raise ValueError(f"run directory {directory!r} contains a backslash or '%', which SLURM cannot take "
                         f"in an output file name; choose another run_dir.")
    return shlex.quote(directory + "/%x-%j.out")


def _resource_lines(gpus_per_node: int, partition, account, time, qos) -> str:
    lines = []
    if gpus_per_node:
        lines.append(f"--gpus-per-node={_positive(gpus_per_node, 'gpus_per_node')}")
    if partition is not None:
        lines.append(f"--partition={_word(partition, 'partition', PARTITION)}")
    if account is not None:
        lines.append(f"--account={_word(account, 'account')}")
    if time is not None:
        _time_seconds(time)
        lines.append(f"--time={time}")
    if qos is not None:
        lines.append(f"--qos={_word(qos, 'qos')}")
    return "\n".join(f"#SBATCH {line}" for line in lines)


def _render(template: str, values: dict) -> str:
    return SbatchTemplate((TEMPLATES / template).read_text()).substitute(values)


# ----------------------------------------------------------------------------- rendering

def render_train_script(config_path: str | Path, run_dir: str | Path, stage: str, *, job_name: str,
                        nodes: int = 1, gpus_per_node: int = 0, tasks_per_node: int | None = None,
                        cpus_per_task: int = 1, partition: str | None = None, account: str | None = None,
                        time: str | None = None, qos: str | None = None, signal_seconds: int = 300,
                        python: str = sys.executable) -> str:
    """The sbatch script that trains one stage: `nodes` x `tasks_per_node` ranks under srun (one
    per GPU when `gpus_per_node` > 0, which is also the default for `tasks_per_node`; 1 on CPU),
    SIGUSR1 `signal_seconds` before the time limit, requeued after a checkpointed stop. `run_dir`
    is the experiment's own directory (runs/<name>); the output goes to
    <run_dir>/slurm/<job name>-<job id>.out, every run of the job appended."""
    _word(job_name, "job name")
    _word(stage, "stage name")
    gpus = 0 if gpus_per_node == 0 else _positive(gpus_per_node, "gpus_per_node")
    tasks = _positive(tasks_per_node if tasks_per_node is not None else max(gpus, 1), "tasks_per_node")
    _positive(signal_seconds, "signal_seconds", MAX_SIGNAL_SECONDS)
    if time is not None and _time_seconds(time) <= signal_seconds:
        raise ValueError(f"time limit {time} is not longer than the {signal_seconds} s of warning before it; "
                         f"give a longer --time or a shorter signal_seconds.")
    if gpus:  # NCCL: a failed collective raises instead of hanging the job until the time limit
        accelerator = "export NCCL_ASYNC_ERROR_HANDLING=1 TORCH_NCCL_ASYNC_ERROR_HANDLING=1"
    else:  # DeepSpeed on CPU ranks, over gloo
        accelerator = "export DS_ACCELERATOR=cpu"
    return _render("train.sbatch", {
        "job_name": job_name,
        "nodes": _positive(nodes, "nodes"),
        "tasks_per_node": tasks,
        "cpus_per_task": _positive(cpus_per_task, "cpus_per_task"),
        "resource_lines": _resource_lines(gpus, partition, account, time, qos),
        "signal_seconds": signal_seconds,
        "output": _output_pattern(Path(run_dir)),
        "python": shlex.quote(_path(python, "python interpreter")),
        "config": shlex.quote(_path(config_path, "config path")),
        "stage": shlex.quote(stage),
        "preempted_exit": PREEMPTED_EXIT,
        "accelerator_env": accelerator,
    })


def render_build_script(config_path: str | Path, run_dir: str | Path, *, job_name: str, nodes: int = 1,
                        cpus_per_node: int = 1, gpus_per_node: int = 0, partition: str | None = None,
                        account: str | None = None, time: str | None = None, qos: str | None = None,
                        python: str = sys.executable) -> str:
    """The sbatch script that builds the experiment's dataset on a Ray cluster over `nodes` nodes
    (`cpus_per_node` CPUs and `gpus_per_node` GPUs of each for Ray)."""
    _word(job_name, "job name")
    gpus = 0 if gpus_per_node == 0 else _positive(gpus_per_node, "gpus_per_node")
    return _render("build.sbatch", {
        "job_name": job_name,
        "nodes": _positive(nodes, "nodes"),
        "cpus_per_task": _positive(cpus_per_node, "cpus_per_node"),
        "resource_lines": _resource_lines(gpus, partition, account, time, qos),
        "output": _output_pattern(Path(run_dir)),
        "python": shlex.quote(_path(python, "python interpreter")),
        "config": shlex.quote(_path(config_path, "config path")),
        "ray_gpus": f"--num-gpus={gpus}" if gpus else "",
    })


# ----------------------------------------------------------------------------- submitting

def submit(config: ExperimentConfig, nodes: int = 1, gpus_per_node: int = 0, cpus_per_task: int = 1,
           partition: str | None = None, account: str | None = None, time: str | None = None,
           qos: str | None = None, dry_run: bool = False, build_data: bool | None = None,
           stages: list[str] | None = None, signal_seconds: int = 300) -> list[SlurmJob]:
    """Submit the experiment: a data-build job (`build_data`; None: only when the dataset has no
    manifest.json yet), then one job per stage (`stages`: None for all, [] for none), each
    waiting for the one before it to succeed. GPU jobs run one rank per GPU; CPU jobs run
    training.world_size ranks split evenly over the nodes, with `cpus_per_task` CPUs each. Every
    script is saved in <run_dir>/<name>/slurm/, the resolved config beside that folder; a dry run
    writes nothing, submits nothing, and returns the scripts with job_id None."""
    paths = RunPaths.of(config)
    root = paths.root.resolve()
    gpus = 0 if gpus_per_node == 0 else _positive(gpus_per_node, "gpus_per_node")
    _positive(nodes, "nodes")
    if gpus:
        tasks_per_node = gpus
    else:
        world = config.training.world_size
        if world % nodes:
            raise ValueError(f"training.world_size={world} CPU ranks cannot be split evenly over {nodes} nodes; "
                             f"give a world size that is a multiple of --nodes.")
        tasks_per_node = world // nodes
    names = [s.name for s in config.stages]
    unknown = [s for s in stages or [] if s not in names]
    if unknown:
        raise ValueError(f"no stage named {unknown} in {config.name}; its stages are {names}.")
    resources = dict(partition=partition, account=account, time=time, qos=qos)

    config_path = root / "config.yaml"
    scripts = root / "slurm"
    jobs = []
    if build_data or (build_data is None and not (paths.data / "manifest.json").exists()):
        name = f"{config.name}.data"
        text = render_build_script(config_path, root, job_name=name, nodes=nodes,
                                   cpus_per_node=cpus_per_task * tasks_per_node, gpus_per_node=gpus, **resources)
        jobs.append(SlurmJob(name, None, scripts / f"{name}.sbatch", text))
    for stage in [n for n in names if stages is None or n in stages]:
        name = f"{config.name}.{stage}"
        text = render_train_script(config_path, root, stage, job_name=name, nodes=nodes, gpus_per_node=gpus,
                                   tasks_per_node=tasks_per_node, cpus_per_task=cpus_per_task,
                                   signal_seconds=signal_seconds, **resources)
        jobs.append(SlurmJob(name, stage, scripts / f"{name}.sbatch", text))
    if dry_run:
        return jobs

    _save_resolved(config, config_path, world_size=nodes * tasks_per_node, threads_per_rank=cpus_per_task)
    scripts.mkdir(parents=True, exist_ok=True)
    submitted, previous = [], None
    for job in jobs:
        job.script.write_text(job.text)
        try:
            job_id = submit_script(job.script, after=previous)
        except RuntimeError as err:
            if not submitted:
                raise
            queued = ", ".join(f"{j.name} (slurm:{j.job_id})" for j in submitted)
            raise RuntimeError(f"{err}; already in the queue: {queued}, which you may want to cancel.") from None
        submitted.append(SlurmJob(job.name, job.stage, job.script, job.text, job_id, previous))
        previous = job_id
    return submitted


def _save_resolved(config: ExperimentConfig, path: Path, world_size: int, threads_per_rank: int) -> None:
    """The resolved config the ranks read, with the world size and threads this allocation gives."""
    raw = config.model_dump(mode="json")
    raw["training"].update(world_size=world_size, threads_per_rank=threads_per_rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def submit_script(script: str | Path, after: str | None = None) -> str:
    """`sbatch --parsable SCRIPT`, after job `after` succeeds if given; returns the job id. A job
    whose dependency fails is cancelled rather than left pending forever."""
    argv = ["sbatch", "--parsable"]
    if after is not None:
        argv += [f"--dependency=afterok:{_job_id(after)}", "--kill-on-invalid-dep=yes"]
    out = _slurm(argv + [str(script)], f"submitting {script}")
    return out.strip().split(";")[0]  # "<id>" or "<id>;<cluster>"


# ----------------------------------------------------------------------------- jobs

def status(job_id: str) -> JobStatus:
    """The job's state from `scontrol show job` (no accounting database is needed). slurmctld
    forgets a finished job after MinJobAge (5 minutes by default)."""
    job_id = _job_id(job_id)
    try:
        out = _slurm(["scontrol", "show", "job", "-o", job_id], f"reading SLURM job {job_id}")
    except RuntimeError as err:
        if "Invalid job id" not in str(err):
            raise
        out = ""
    fields = _parse_fields(out.splitlines()[0] if out.strip() else "")
    if "JobState" not in fields:
        raise ValueError(f"SLURM job {job_id} is not known to slurmctld: it never existed, or it ended longer "
                         f"ago than MinJobAge; its output is in <run_dir>/<name>/slurm/.")
    stdout = fields.get("StdOut")
    return JobStatus(job_id=fields.get("JobId", job_id), name=fields.get("JobName", ""),
                     state=fields["JobState"], reason=fields.get("Reason", ""),
                     exit_code=fields.get("ExitCode", ""), restarts=int(fields.get("Restarts", 0) or 0),
                     stdout=Path(stdout) if stdout and stdout != "(null)" else None, fields=fields)


def logs(job_id: str) -> str:
    """The job's output file (every run of it: requeued runs append)."""
    job = status(job_id)
    if job.stdout is None or not job.stdout.exists():
        raise ValueError(f"SLURM job {job.job_id} has no output file yet ({job.stdout or 'none set'}); "
                         f"it is {job.state}.")
    return job.stdout.read_text(errors="replace")


def cancel(job_id: str) -> None:
    """`scancel`: the ranks get SIGTERM and checkpoint; a cancelled job is not requeued."""
    job_id = _job_id(job_id)
    _slurm(["scancel", job_id], f"cancelling SLURM job {job_id}")


def _job_id(job_id: str | int) -> str:
    text = str(job_id).removeprefix("slurm:")
    if not JOB_ID.fullmatch(text):
        raise ValueError(f"{job_id!r} is not a SLURM job id (digits, e.g. 1234 or slurm:1234).")
    return text


def _parse_fields(line: str) -> dict[str, str]:
    """`Key=value Key2=value two ...` from `scontrol show job -o`; values may contain spaces."""
    keys = list(re.finditer(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=", line))
    return {m.group(1): line[m.end():keys[i + 1].start() if i + 1 < len(keys) else len(line)].strip()
            for i, m in enumerate(keys)}


def _slurm(argv: list[str], doing: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise RuntimeError(f"{doing}: {argv[0]} is not installed here; run this where SLURM's commands are.") \
            from None
    if out.returncode:
        message = " ".join(out.stderr.split()) or f"exit code {out.returncode}"
        raise RuntimeError(f"{doing}: {argv[0]} failed: {message}")
    return out.stdout
