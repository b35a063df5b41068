"""The SLURM launcher on a real one-node cluster (slurm-wlm + munge, started by tests/slurm_cluster.py):
rendered scripts and their quoting, a Ray-on-SLURM data build chained to a 2-rank CPU training job,
requeues that lose no step, and status, logs and cancel."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_config, write_config
from tests.slurm_cluster import ClusterStartError, SlurmCluster
from wamforge.config import ExperimentConfig, validate
from wamforge.config.paths import RunPaths
from wamforge.launchers import slurm
from wamforge.training.metrics import read_jsonl

# every shell construct that would run `touch` if a value reached bash unquoted
ODD = "odd $(touch PWNED1) `touch PWNED2`; touch PWNED3 & 'q\" #x"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not shutil.which("slurmctld") or not shutil.which("munged"):
        pytest.fail("slurm-wlm and munge are not installed: run `make system-packages`")
    try:
        running = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    except ClusterStartError as err:
        pytest.fail(f"the test SLURM cluster did not start: {err}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(running.conf))  # sbatch, scontrol, scancel of the launcher
        yield running
    running.stop()


def wait_for(ready, limit_s: float, what: str, job_id: str | None = None):
    """Poll until `ready()` returns something true (a hang guard, not a speed check)."""
    deadline = time.time() + limit_s
    while not (value := ready()):
        if time.time() > deadline:
            log = ""
            if job_id:
                try:
                    log = slurm.logs(job_id)[-3000:]
                except ValueError as err:
                    log = str(err)
            pytest.fail(f"{what} did not happen within {limit_s:.0f} s\n{log}")
        time.sleep(0.05)
    return value


def finished(job_id: str, limit_s: float = 240) -> slurm.JobStatus:
    return wait_for(lambda: (s := slurm.status(job_id)).finished and s, limit_s, f"job {job_id} finishing", job_id)


def node_idle() -> bool:
    out = subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip() == "idle"


def start_now(job_id: str) -> None:
    """A requeued job waits out a begin time of about two minutes. It exists because slurmd refuses
    to launch a job in the same second that it revoked the job's previous run; wait for the last
    run to be gone and for that second to pass, then start the job at once."""
    wait_for(lambda: slurm.status(job_id).state == "PENDING" and node_idle(), 90,
             f"job {job_id} back in the queue with its last run ended", job_id)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)


def latest_step(ckpts: Path) -> int:
    latest = ckpts / "latest"
    return int(latest.read_text().split("-")[1]) if latest.exists() else 0


def one_stage(root: Path, data_from: ExperimentConfig | None = None, steps: int = 24) -> ExperimentConfig:
    """The tiny experiment cut to its first stage, on 2 ranks with micro-batch 1 and a checkpoint
    every 2 steps; on the dataset of the experiment `data_from` if given (else its own, unbuilt)."""
    raw = tiny_config(root)
    sources = raw["data"]["sources"]
    sources["sim"]["episodes_per_task"], sources["web"]["generate"]["videos"] = 4, 4  # a quicker build
    if data_from is not None:
        raw["data"]["out_dir"] = str(RunPaths.of(data_from).data)
        sources["web"]["path"] = data_from.data.sources["web"].path
    raw["stages"] = [{**raw["stages"][0], "steps": steps}]
    raw["training"].update(micro_batch_per_rank=1, checkpoint_every=2)
    write_config(raw, root / "tiny.yaml")
    return validate(raw)


# ----------------------------------------------------------------------------- rendering


def test_rendered_train_script_has_the_sbatch_lines_and_parses(tmp_path):
    cpu = slurm.render_train_script(tmp_path / "config.yaml", tmp_path / "runs" / "tiny", "pretrain_video",
                                    job_name="tiny.pretrain_video", nodes=2, tasks_per_node=2, cpus_per_task=3,
                                    partition="cpu", account="robots", time="1-02:00:00", qos="high",
                                    signal_seconds=120)
    lines = [line for line in cpu.splitlines() if line.startswith("#SBATCH")]
    assert lines == ["#SBATCH --job-name=tiny.pretrain_video", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=2",
                     "#SBATCH --cpus-per-task=3", "#SBATCH --partition=cpu", "#SBATCH --account=robots",
                     "#SBATCH --time=1-02:00:00", "#SBATCH --qos=high", "#SBATCH --requeue",
                     "#SBATCH --signal=USR1@120", "#SBATCH --open-mode=append",
                     f"#SBATCH --output={tmp_path}/runs/tiny/slurm/%x-%j.out"]
    assert "export DS_ACCELERATOR=cpu" in cpu and "NCCL" not in cpu
    assert f"CONFIG={tmp_path}/config.yaml" in cpu and "--resume --stage \"$STAGE\"" in cpu
    gpu = slurm.render_train_script(tmp_path / "config.yaml", tmp_path / "runs" / "tiny", "pretrain_video",
                                    job_name="tiny.pretrain_video", gpus_per_node=8, cpus_per_task=12)
    assert "#SBATCH --ntasks-per-node=8" in gpu and "#SBATCH --gpus-per-node=8" in gpu
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in gpu and "DS_ACCELERATOR" not in gpu
    assert not any(word in gpu for word in ("--partition", "--account", "--time", "--qos"))
    build = slurm.render_build_script(tmp_path / "config.yaml", tmp_path / "runs" / "tiny", job_name="tiny.data",
                                      nodes=3, cpus_per_node=16, gpus_per_node=2)
    assert "--ray-address \"$RAY_HEAD\"" in build and "ray-head --head" in build and "--num-gpus=2" in build
    for text in (cpu, gpu, build):
        script = tmp_path / "check.sbatch"
        script.write_text(text)
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


def test_the_templates_ship_in_the_wheel(tmp_path):
    """`pip install wamforge` (not a checkout) can render scripts: the templates are package data."""
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info beside the sources
    shutil.copytree(REPO / "wamforge", source / "wamforge", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("wamforge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"wamforge/slurm/train.sbatch", "wamforge/slurm/build.sbatch", "wamforge/slurm/slurm.conf"} <= names


def test_a_dry_run_renders_one_job_per_stage_and_writes_nothing(tmp_path):
    cfg = validate(tiny_config(tmp_path))
    jobs = slurm.submit(cfg, nodes=2, cpus_per_task=1, time="30", dry_run=True)
    assert [(j.name, j.stage, j.job_id) for j in jobs] == [
        ("tiny.data", None, None),  # no dataset yet: the build comes first
        ("tiny.pretrain_video", "pretrain_video", None), ("tiny.align_embodiment", "align_embodiment", None),
        ("tiny.finetune_action", "finetune_action", None)]
    assert "#SBATCH --ntasks-per-node=1" in jobs[1].text  # world_size 2 over 2 nodes
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ValueError, match="cannot be split evenly over 3 nodes"):
        slurm.submit(cfg, nodes=3, dry_run=True)
    with pytest.raises(ValueError, match="not longer than the 300 s"):
        slurm.submit(cfg, time="00:05:00", dry_run=True)


@pytest.mark.parametrize("field, value", [
    ("job_name", "x$(touch PWNED)"), ("job_name", "a`touch PWNED`"), ("job_name", "a;touch PWNED"),
    ("job_name", "two words"), ("job_name", ""), ("partition", "gpu;touch PWNED"), ("account", "$(id)"),
    ("qos", "high\n#SBATCH --uid=0"), ("time", "1:00;touch PWNED"), ("time", "10:75:00"), ("nodes", 0),
    ("cpus_per_task", True), ("signal_seconds", 70000), ("run_dir", "/tmp/a\ntouch PWNED"),
    ("config_path", "/tmp/a\rb"), ("run_dir", "/tmp/back\\slash"), ("run_dir", "/tmp/100%j"),
])
def test_unsafe_values_are_refused_with_one_sentence(tmp_path, field, value):
    args = {"config_path": tmp_path / "c.yaml", "run_dir": tmp_path / "runs", "stage": "pretrain_video",
            "job_name": "tiny.pretrain_video", field: value}
    with pytest.raises(ValueError) as err:
        slurm.render_train_script(**args)
    message = str(err.value)
    assert message.endswith(".") and "\n" not in message.replace(repr(value), "")


# ----------------------------------------------------------------------------- on the cluster


def test_odd_paths_reach_the_job_verbatim_and_run_nothing(cluster, tmp_path, monkeypatch):
    """A run directory and config path full of shell syntax: the job runs the worker with exactly
    that path (which does not exist, so it stops at once), writes its log there, and runs nothing."""
    monkeypatch.chdir(tmp_path)  # the job's working directory: where a stray `touch` would land
    odd = tmp_path / ODD
    run_dir, config = odd / "runs", odd / f"config {ODD}.yaml"
    (run_dir / "slurm").mkdir(parents=True)
    script = run_dir / "slurm" / "odd.sbatch"
    script.write_text(slurm.render_train_script(config, run_dir, "pretrain_video", job_name="odd",
                                                tasks_per_node=1))
    job_id = slurm.submit_script(script)
    job = finished(job_id)
    stray = [p for where in (tmp_path, cluster.root) for p in where.rglob("PWNED*")]
    stray += [p for where in (Path.cwd(), Path.home(), Path("/"), REPO, Path("/tmp")) for p in where.glob("PWNED*")]
    assert not stray
    assert job.state == "FAILED" and job.exit_code == "1:0"
    expected_log = run_dir / "slurm" / f"odd-{job_id}.out"
    assert job.stdout == expected_log and expected_log.exists()
    assert f"error: {config}: no such config file." in slurm.logs(job_id)


STEPS = 24  # room for two stops and resumes at a checkpoint every 2 steps


def cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "wamforge.cli", *args], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def submitted(cluster, tmp_path_factory):
    """The experiment submitted with `wamforge submit slurm` and no dataset yet: a Ray-on-SLURM
    build job, then a 2-rank CPU job that trains the stage start to finish once the build succeeded."""
    root = tmp_path_factory.mktemp("submitted")
    cfg = one_stage(root, steps=STEPS)
    printed = cli("submit", "slurm", str(root / "tiny.yaml"), "--nodes", "1", "--cpus-per-task", "1")
    jobs = re.findall(r"submitted slurm:(\d+) (\S+)(?: after slurm:(\d+))?", printed)
    return cfg, jobs, [finished(job_id, 300) for job_id, _, _ in jobs]


def test_the_data_build_job_runs_on_ray_over_the_allocation(submitted):
    cfg, jobs, (build, _) = submitted
    assert [(name, after) for _, name, after in jobs] == [("tiny.data", ""), ("tiny.pretrain_video", jobs[0][0])]
    log = slurm.logs(build.job_id)
    assert build.state == "COMPLETED", log[-3000:]
    assert "Ray head 127.0.0.1:" in log and "data build finished with exit code 0" in log
    manifest = json.loads((RunPaths.of(cfg).data / "manifest.json").read_text())
    assert manifest["sources"]["sim"]["samples"] > 0 and manifest["sources"]["web"]["samples"] > 0
    # its Ray nodes went with the job (the job's own temp dir names them)
    leftover = subprocess.run(["pgrep", "-f", f"/tmp/ray-{build.job_id}/"], capture_output=True, text=True)
    assert not leftover.stdout.split()


def test_two_rank_training_job_trains_the_stage_after_the_build(submitted):
    cfg, jobs, (build, job) = submitted
    paths = RunPaths.of(cfg)
    assert "--stage \"$STAGE\"" in (paths.root / "slurm" / "tiny.pretrain_video.sbatch").read_text()
    assert f"slurm:{job.job_id}: COMPLETED" in cli("jobs", "status", f"slurm:{job.job_id}")
    log = slurm.logs(job.job_id)
    assert cli("jobs", "logs", f"slurm:{job.job_id}") == log
    assert job.state == "COMPLETED", log[-3000:]
    assert "2 ranks" in log and job.restarts == 0
    assert job.fields["StartTime"] >= build.fields["EndTime"]  # afterok: only once the build succeeded
    assert paths.final_weights("pretrain_video").exists()
    rows = read_jsonl(paths.stage("pretrain_video") / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    traces = [read_jsonl(paths.stage("pretrain_video") / f"samples.rank{r}.jsonl") for r in range(2)]
    for a, b in zip(*traces):  # both ranks trained every step, never on the same sample
        assert a["step"] == b["step"] and not set(a["keys"]) & set(b["keys"])


def test_a_requeued_job_resumes_from_its_checkpoint_and_loses_no_step(submitted, tmp_path):
    """Stopped twice: by `scontrol requeue` (SLURM sends every process SIGTERM and requeues the job
    itself), then by SIGUSR1 as ahead of a time limit (the script requeues it). Each run resumes
    from `latest`, and the stage draws exactly the samples of the uninterrupted job."""
    reference = submitted[0]
    cfg = one_stage(tmp_path, data_from=reference, steps=STEPS)
    paths = RunPaths.of(cfg)
    ckpts = paths.checkpoints("pretrain_video")
    (job,) = slurm.submit(cfg, nodes=1, cpus_per_task=1)
    job_id = job.job_id

    wait_for(lambda: latest_step(ckpts) >= 2, 180, "a first checkpoint", job_id)
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    start_now(job_id)
    first_stop = wait_for(lambda: slurm.status(job_id).state == "RUNNING" and latest_step(ckpts), 120,
                          "the requeued job running again", job_id)
    wait_for(lambda: latest_step(ckpts) > first_stop, 180, "a checkpoint after the first resume", job_id)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)  # the job's steps, not its script
    start_now(job_id)

    done = finished(job_id)
    log = slurm.logs(job_id)
    assert done.state == "COMPLETED" and done.restarts == 2, log[-3000:]
    assert "on SIGTERM" in log and "on SIGUSR1" in log, log[-3000:]  # each stop was a checkpoint, not a kill
    assert f"requeueing job {job_id}" in log  # the second requeue came from the script
    assert first_stop < STEPS and paths.final_weights("pretrain_video").exists()
    rows = read_jsonl(paths.stage("pretrain_video") / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    ref = RunPaths.of(reference)
    for rank in range(2):
        resumed = read_jsonl(paths.stage("pretrain_video") / f"samples.rank{rank}.jsonl")
        expected = read_jsonl(ref.stage("pretrain_video") / f"samples.rank{rank}.jsonl")
        assert [r["keys"] for r in resumed] == [r["keys"] for r in expected]  # none replayed or skipped


def test_status_logs_and_cancel(cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "wait.sbatch"
    script.write_text(f"#!/bin/bash\n#SBATCH --output={tmp_path}/wait-%j.out\necho waiting\nsleep 120\n")
    first = slurm.submit_script(script)
    second = slurm.submit_script(script, after=first)
    assert slurm.status(second).reason == "Dependency"
    wait_for(lambda: "waiting" in Path(tmp_path / f"wait-{first}.out").read_text()
             if (tmp_path / f"wait-{first}.out").exists() else False, 60, "the first job's output", first)
    assert slurm.status(f"slurm:{first}").state == "RUNNING" and slurm.logs(first) == "waiting\n"
    slurm.cancel(first)
    assert finished(first).state == "CANCELLED"
    # its dependant can never run now, so it is cancelled too rather than left pending
    assert finished(second, 60).state == "CANCELLED"
    with pytest.raises(ValueError, match="not a SLURM job id"):
        slurm.status("1; touch PWNED")
    with pytest.raises(ValueError, match="not known to slurmctld"):
        slurm.status("1")  # the test cluster numbers its jobs from 1000 up
