"""The Ray launcher against a real local Ray cluster (`ray start --head`, token authentication),
started and stopped here: a data build as a Ray Job, 2-worker Ray Train training submitted as a
Ray Job, a worker killed mid-stage that Ray Train restarts from the checkpoint, and cancel."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import tiny_config, write_config
from tests.ray_cluster import start_cluster, stop_cluster
from wamforge.config import validate
from wamforge.config.paths import RunPaths
from wamforge.launchers.local import free_port
from wamforge.launchers.ray_jobs import cancel, logs, status, submit_build, submit_training, wait
from wamforge.launchers.ray_train import RANK_LINE as RANK_PID
from wamforge.training.metrics import read_jsonl

STEPS = 12  # enough steps after the first checkpoint (3) that a kill lands mid-stage


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster(num_cpus=2)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
        assert not cluster.processes(), "a process of the test cluster outlived it"


def finished(job_id: str, cluster, timeout_s: float = 300):
    job = wait(job_id, cluster.dashboard, timeout_s=timeout_s, poll_s=0.5)
    return job, logs(job_id, cluster.dashboard)


@pytest.fixture(scope="module")
def ray_built(cluster, tmp_path_factory):
    """A data build run as a Ray Job: (job, config, manifest). Its shards also feed the training
    tests, so this file builds once, and never through an in-process `ray.init()`, which joins
    whatever cluster another `ray start` on this machine last recorded in /tmp/ray."""
    root = tmp_path_factory.mktemp("ray_built")
    raw = tiny_config(root)  # as is: a stage of STEPS steps stays within one pass of each source
    path = write_config(raw, root / "tiny.yaml")
    # this checkout's package travels with the job (py_modules), as it would to a remote cluster
    job_id = submit_build(path, cluster.dashboard, ship_code=True, workdir=root)
    job, text = finished(job_id, cluster)
    assert job.state == "SUCCEEDED", text[-3000:]
    cfg = validate(raw)
    return job, cfg, json.loads((RunPaths.of(cfg).data / "manifest.json").read_text())


def test_a_data_build_runs_as_a_ray_job(cluster, ray_built):
    job, cfg, manifest = ray_built
    assert job.entrypoint.startswith("cd ") and "data build" in job.entrypoint
    assert "--ray-address auto" in job.entrypoint  # the job's own cluster, never a new local one
    assert {"sim", "web"} <= set(manifest["sources"]) and manifest["quarantined"] == 0
    assert manifest["samples"] == sum(s["samples"] for s in manifest["shards"]) > 0
    data = RunPaths.of(cfg).data
    assert all((data / s["path"]).stat().st_size > 0 for s in manifest["shards"])
    assert (data / "stats.json").exists() and (data / "quarantine.jsonl").exists()
    assert status(f"ray:{job.job_id}", cluster.dashboard).state == "SUCCEEDED"  # the CLI's form of the id


def one_stage(root: Path, built_cfg, **stage) -> tuple[Path, object]:
    """The tiny experiment's first stage, on shards built before (no rebuild)."""
    raw = tiny_config(root)
    raw["data"] = built_cfg.model_dump(mode="json")["data"]
    raw["data"]["out_dir"] = str(RunPaths.of(built_cfg).data)
    raw["stages"] = [{**raw["stages"][0], "steps": STEPS, **stage}]
    return write_config(raw, root / "one_stage.yaml"), validate(raw)


@pytest.fixture(scope="module")
def ray_trained(cluster, ray_built, tmp_path_factory):
    """One uninterrupted 2-worker Ray Train run of a stage, submitted with `wamforge submit ray`:
    (config, job logs); the reference for the killed run."""
    root = tmp_path_factory.mktemp("ray_trained")
    path, cfg = one_stage(root, ray_built[1])
    out = subprocess.run([sys.executable, "-m", "wamforge.cli", "submit", "ray", str(path), "--address",
                          cluster.dashboard, "--workers", "2", "--max-failures", "0"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert out.returncode == 0, out.stdout + out.stderr
    job_id = re.search(r"submitted ray:(\S+) \(training\)", out.stdout).group(1)
    job, text = finished(job_id, cluster)
    assert job.state == "SUCCEEDED", text[-4000:]
    return cfg, text


def test_two_ray_train_workers_train_a_stage(ray_trained):
    cfg, text = ray_trained
    paths = RunPaths.of(cfg)
    stage = cfg.stages[0].name
    rows = read_jsonl(paths.stage(stage) / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert paths.final_weights(stage).exists()
    assert (paths.checkpoints(stage) / "latest").read_text() == f"step-{STEPS}"
    assert sorted((r, w) for r, w, _ in RANK_PID.findall(text)) == [("0", "2"), ("1", "2")]
    traces = [read_jsonl(paths.stage(stage) / f"samples.rank{r}.jsonl") for r in range(2)]
    assert [r["step"] for r in traces[0]] == [r["step"] for r in traces[1]] == list(range(1, STEPS + 1))
    for a, b in zip(*traces):  # one process group: the ranks split every batch
        assert not set(a["keys"]) & set(b["keys"])
    assert f"{stage}: {STEPS} steps" in text  # the driver's closing summary


def rank_pids(job_id: str, cluster, deadline: float) -> list[tuple[int, int]]:
    """(rank, pid) of every Ray Train worker the job has started so far, once both ranks of the first
    group have reported."""
    while time.time() < deadline:
        found = [(int(r), int(pid)) for r, _, pid in RANK_PID.findall(logs(job_id, cluster.dashboard))]
        if {r for r, _ in found} == {0, 1}:
            return found
        assert not status(job_id, cluster.dashboard).finished, logs(job_id, cluster.dashboard)[-3000:]
        time.sleep(0.2)
    pytest.fail(f"the workers of Ray job {job_id} never reported their pids")


def worker_output(cluster, pid: int) -> str:
    """What a Ray worker process wrote, from the cluster's log files: a job's logs are its driver's,
    which may exit before the last lines of its workers have reached it."""
    return "".join(p.read_text(errors="replace") for p in cluster.temp_dir.glob(f"session_*/logs/worker-*-{pid}.*"))


def test_a_killed_worker_restarts_the_group_from_the_checkpoint(cluster, ray_built, ray_trained, tmp_path):
    reference, _ = ray_trained
    path, cfg = one_stage(tmp_path, ray_built[1])
    paths = RunPaths.of(cfg)
    stage = cfg.stages[0].name
    job_id = submit_training(path, cluster.dashboard, workers=2, max_failures=2)
    deadline = time.time() + 300  # hang guards, not speed checks
    victim = dict(rank_pids(job_id, cluster, deadline))[1]
    latest = paths.checkpoints(stage) / "latest"
    while not latest.exists():  # a hang guard: fails with what the job said, never on speed alone
        if time.time() > deadline or status(job_id, cluster.dashboard).finished:
            pytest.fail(f"no checkpoint appeared before the job ended or 300 s passed:\n"
                        f"{logs(job_id, cluster.dashboard)[-3000:]}")
        time.sleep(0.05)
    os.kill(victim, signal.SIGKILL)  # rank 1's Ray Train worker, mid-stage
    killed_at = int(latest.read_text().split("-")[1])
    assert not paths.final_weights(stage).exists() and killed_at < STEPS

    job, text = finished(job_id, cluster)
    assert job.state == "SUCCEEDED", text[-4000:]
    pids = [(int(r), int(pid)) for r, _, pid in RANK_PID.findall(text)]
    assert len(pids) == 4 and victim not in dict(pids[2:]).values(), pids  # a second group, new processes
    said = "".join(worker_output(cluster, dict(pids[2:])[0]).split())  # the new rank 0, unwrapped
    resumed = re.search(rf"{stage}:resumedfrom\S*?/step-(\d+)", said)
    assert resumed, said[-3000:]
    assert killed_at <= int(resumed.group(1)) <= killed_at + 3  # the newest checkpoint at the restart

    rows = read_jsonl(paths.stage(stage) / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # no step lost, none twice
    ref = RunPaths.of(reference)
    for rank in range(2):  # the loaders resumed exactly where the checkpoint left them
        resumed_keys = [r["keys"] for r in read_jsonl(paths.stage(stage) / f"samples.rank{rank}.jsonl")]
        assert resumed_keys == [r["keys"] for r in read_jsonl(ref.stage(stage) / f"samples.rank{rank}.jsonl")]
    assert paths.final_weights(stage).exists()


def test_cancel_stops_a_training_job_and_its_workers(cluster, ray_built, tmp_path):
    path, cfg = one_stage(tmp_path, ray_built[1])
    job_id = submit_training(path, cluster.dashboard, workers=2, max_failures=0)
    workers = [pid for _, pid in rank_pids(job_id, cluster, time.time() + 300)]
    assert cancel(f"ray:{job_id}", cluster.dashboard)
    assert wait(job_id, cluster.dashboard, timeout_s=120, poll_s=0.5).state == "STOPPED"
    deadline = time.time() + 60
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.5)
    assert not any(_alive(pid) for pid in workers), "a Ray Train worker outlived its cancelled job"
    assert not RunPaths.of(cfg).final_weights(cfg.stages[0].name).exists()
    assert not cancel(job_id, cluster.dashboard)  # nothing left to stop


def test_an_error_a_restart_would_meet_again_fails_the_job_without_a_retry(cluster, ray_built, tmp_path):
    missing = tmp_path / "missing.safetensors"
    path, cfg = one_stage(tmp_path, ray_built[1], init_from=str(missing))
    job_id = submit_training(path, cluster.dashboard, workers=2, max_failures=2)
    job, text = finished(job_id, cluster)
    assert job.state == "FAILED", text[-4000:]
    said = " ".join(text.split())
    assert f"error: FileNotFoundError: stage 'pretrain_video' starts from {missing}, which does not exist" in said
    assert len(RANK_PID.findall(text)) == 2, said[-4000:]  # one group started: the error was not retried
    assert "Traceback" not in said


def test_unknown_jobs_wrong_tokens_and_unreachable_clusters_are_one_sentence(cluster, monkeypatch):
    with pytest.raises(ValueError, match="Ray job raysubmit_nosuchjob is not known to the cluster"):
        status("ray:raysubmit_nosuchjob", cluster.dashboard)
    with pytest.raises(ValueError, match="is not a Ray job id"):
        logs("ray:", cluster.dashboard)
    with pytest.raises(RuntimeError, match="cannot reach the Ray Jobs API"):
        status("raysubmit_x", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-this-clusters-token")
    with pytest.raises(RuntimeError, match="refused the request .*Invalid authentication token.*RAY_AUTH_TOKEN"):
        status("raysubmit_x", cluster.dashboard)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
