"""Real 2-rank DeepSpeed training over gloo, launched through the CLI, then export, policy and eval."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config, write_config
from tests.runs import one_stage_config, run_config, wait_for, wamforge
from wamforge.config import validate
from wamforge.config.paths import RunPaths
from wamforge.training.metrics import read_jsonl


@pytest.fixture(scope="session")
def trained(built, tmp_path_factory):
    cfg_built, _ = built
    root = tmp_path_factory.mktemp("trained")
    path, cfg = run_config(root, cfg_built)
    proc = wamforge("train", path)
    assert proc.wait(timeout=600) == 0
    return path, cfg


def test_two_rank_training_runs_every_stage(trained):
    _, cfg = trained
    paths = RunPaths.of(cfg)
    for stage in cfg.stages:
        rows = read_jsonl(paths.stage(stage.name) / "metrics.jsonl")
        assert [r["step"] for r in rows] == list(range(1, stage.steps + 1))
        assert all(np.isfinite(r["loss"]) for r in rows)
        assert all(0 <= r["data_wait_pct"] <= r["data_wait_pct_max"] <= 100 and r["samples_per_s"] > 0 for r in rows)
        assert paths.final_weights(stage.name).exists()
        assert (paths.checkpoints(stage.name) / "latest").read_text() == f"step-{stage.steps}"
        # both ranks consumed batches, and never the same sample at the same step
        traces = [read_jsonl(paths.stage(stage.name) / f"samples.rank{r}.jsonl") for r in range(2)]
        for a, b in zip(*traces):
            assert a["step"] == b["step"] and not set(a["keys"]) & set(b["keys"])
        # the realized shares are those of every key both ranks consumed so far
        keys = [k for trace in traces for r in trace for k in r["keys"]]
        for name, share in rows[-1]["realized"].items():
            assert share == pytest.approx(sum(k.startswith(name + "/") for k in keys) / len(keys), abs=1e-4)
    video_rows = read_jsonl(paths.stage("pretrain_video") / "metrics.jsonl")
    assert all(r["action_loss"] == 0 for r in video_rows)


def test_metrics_record_grad_norm_tokens_memory_and_loss_per_source(trained):
    _, cfg = trained
    paths = RunPaths.of(cfg)
    # 2 ranks x 2 samples; 3 latent frames of 8x8 latents in 2x2 patches = 48 tokens each; horizon 4
    for stage, has_actions in (("pretrain_video", False), ("align_embodiment", True)):
        rows = read_jsonl(paths.stage(stage) / "metrics.jsonl")
        for r in rows:
            assert r["grad_norm"] > 0 and np.isfinite(r["grad_norm"]) and r["peak_memory_mb"] > 100
            assert r["video_tokens_per_s"] == pytest.approx(4 * 48 * r["samples_per_s"] / 4, rel=1e-6)
            assert (r["action_tokens_per_s"] > 0) == has_actions and r["mfu"] is None  # no peak FLOP/s on CPU
            assert set(r["source_loss"]) <= {"web", "sim"}
            assert all(v["video_loss"] > 0 for v in r["source_loss"].values())
        # web video has no actions: its action loss is 0, the robot's is not
        assert any("sim" in r["source_loss"] for r in rows)
        if has_actions:
            assert all(r["source_loss"]["web"]["action_loss"] == 0 for r in rows if "web" in r["source_loss"])
            assert any(r["source_loss"]["sim"]["action_loss"] > 0 for r in rows if "sim" in r["source_loss"])
        events = list((paths.stage(stage) / "tensorboard").glob("events.out.tfevents.*"))
        assert events and events[0].stat().st_size > 0


def test_wamforge_plot_draws_a_run(trained, tmp_path):
    _, cfg = trained
    out = tmp_path / "training.png"
    assert wamforge("plot", RunPaths.of(cfg).root, "--out", out).wait(timeout=120) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stage_handoff_and_frozen_trunk(trained):
    _, cfg = trained
    paths = RunPaths.of(cfg)
    align = load_file(str(paths.final_weights("align_embodiment")))
    final = load_file(str(paths.final_weights("finetune_action")))
    trunk = [k for k in final if k.startswith("trunk.")]
    expert = [k for k in final if k.startswith("action_expert.")]
    assert trunk and expert
    assert all(torch.equal(final[k], align[k]) for k in trunk)  # frozen in finetune_action
    assert any(not torch.equal(final[k], align[k]) for k in expert)  # trained in finetune_action


@pytest.fixture(scope="session")
def killed(built, tmp_path_factory):
    """A run killed mid align_embodiment, and a pristine copy of it for a resume on another layout."""
    root = tmp_path_factory.mktemp("killed")
    path, cfg = run_config(root, built[0])
    paths = RunPaths.of(cfg)
    proc = wamforge("train", path, start_new_session=True)
    latest = paths.checkpoints("align_embodiment") / "latest"
    wait_for(latest, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-stage
    proc.wait()
    assert not paths.final_weights("align_embodiment").exists()
    shutil.copytree(root / "runs", root / "copy" / "runs")
    return path, cfg, root / "copy"


def assert_same_samples(paths: RunPaths, reference: RunPaths, stage: str) -> None:
    """Every rank drew the reference run's samples, step by step."""
    for rank in range(2):
        resumed = read_jsonl(paths.stage(stage) / f"samples.rank{rank}.jsonl")
        expected = read_jsonl(reference.stage(stage) / f"samples.rank{rank}.jsonl")
        assert [r["keys"] for r in resumed] == [r["keys"] for r in expected]


def test_kill_and_resume_matches_an_uninterrupted_run(trained, killed):
    _, reference = trained
    path, cfg, _ = killed
    paths = RunPaths.of(cfg)
    assert wamforge("train", path).wait(timeout=600) != 0  # refuses to silently restart
    assert wamforge("train", path, "--resume").wait(timeout=600) == 0

    ref = RunPaths.of(reference)
    for stage in cfg.stages:
        assert_same_samples(paths, ref, stage.name)
        # exact resume: bitwise the same loss at every step, the resumed ones included
        resumed = read_jsonl(paths.stage(stage.name) / "metrics.jsonl")
        expected = read_jsonl(ref.stage(stage.name) / "metrics.jsonl")
        for key in ("loss", "video_loss", "action_loss", "grad_norm"):
            assert [r[key] for r in resumed] == [r[key] for r in expected], (stage.name, key)
    a = load_file(str(paths.final_weights("finetune_action")))
    b = load_file(str(ref.final_weights("finetune_action")))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_on_fewer_ranks_repeats_no_sample(killed, built):
    """The killed 2-rank run continues on one rank: ZeRO re-cuts its partitions, the loader re-deals the pass."""
    _, _, copy = killed
    path, cfg = run_config(copy, built[0])
    ckpts = RunPaths.of(cfg).checkpoints("align_embodiment")
    resumed_at = int((ckpts / "latest").read_text().split("-")[1])
    proc = wamforge("train", path, "--resume", "--set", "training.world_size=1", stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    stage_dir = RunPaths.of(cfg).stage("align_embodiment")
    rank0 = read_jsonl(stage_dir / "samples.rank0.jsonl")
    before = [k for r in read_jsonl(stage_dir / "samples.rank1.jsonl") if r["step"] <= resumed_at for k in r["keys"]]
    keys = before + [k for r in rank0 for k in r["keys"]]
    assert len(keys) == len(set(keys))  # the tiny stage stays within one pass of each source
    assert [r["step"] for r in rank0] == list(range(1, cfg.stages[1].steps + 1))
    assert RunPaths.of(cfg).final_weights("finetune_action").exists()


def test_export_load_policy_act_in_raw_units(trained, tmp_path):
    from wamforge import load_policy
    from wamforge.data_pipeline.loader.collate import stats_hash
    from wamforge.training.export import export

    _, cfg = trained
    out = export(cfg, out=tmp_path / "export")
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "stats.json",
                                               "embodiments.json", "README.md"}
    obs = {"image": np.full((64, 48, 3), 120, np.uint8), "proprio": np.array([0.0, 0.6, 0.2, 1.0], np.float32)}
    chunk = load_policy(out).act(obs, "reach the goal")
    assert chunk.shape == (cfg.model.regime.horizon, 4) and chunk.dtype == np.float32
    assert np.all(chunk >= -1) and np.all(chunk <= 1)  # sawyer bounds, raw units

    # statistics that are not the ones the policy was trained with are refused
    stats = json.loads((out / "stats.json").read_text())
    stats["sawyer"]["actions"]["mean"][0] -= 0.25
    (out / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(ValueError, match="not the statistics this policy was trained with"):
        load_policy(out)

    # units: a policy exported with its action mean shifted acts shifted by exactly that, in raw units
    meta = json.loads((out / "config.json").read_text())
    meta["stats_hash"] = stats_hash(stats)
    (out / "config.json").write_text(json.dumps(meta))
    shifted = load_policy(out).act(obs, "reach the goal")
    unclipped = np.abs(chunk[:, 0]) < 1
    assert unclipped.any()
    np.testing.assert_allclose(shifted[unclipped, 0], np.maximum(chunk[unclipped, 0] - 0.25, -1), atol=1e-4)
    np.testing.assert_allclose(shifted[:, 1:], chunk[:, 1:], atol=1e-5)


def test_a_bf16_export_is_half_the_size_and_acts_like_the_fp32_one(trained, tmp_path):
    from wamforge import load_policy
    from wamforge.training.export import export

    _, cfg = trained
    full, half = export(cfg, out=tmp_path / "fp32"), export(cfg, out=tmp_path / "bf16", dtype="bf16")
    weights = load_file(str(half / "model.safetensors"))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.bfloat16}
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    assert json.loads((half / "config.json").read_text())["dtype"] == "bf16"
    obs = {"image": np.full((64, 48, 3), 120, np.uint8), "proprio": np.array([0.0, 0.6, 0.2, 1.0], np.float32)}
    np.testing.assert_allclose(load_policy(half).act(obs, "reach the goal"),
                               load_policy(full).act(obs, "reach the goal"), atol=0.05)
    with pytest.raises(ValueError, match="export dtype must be one of"):
        export(cfg, out=tmp_path / "fp8", dtype="fp8")


def test_eval_reports_the_policy_its_futures_and_videos(trained, tmp_path):
    from wamforge import load_policy
    from wamforge.evaluation import evaluate
    from wamforge.training.export import export

    _, cfg = trained
    out = export(cfg, out=tmp_path / "export")
    policy = load_policy(out)
    report = evaluate(policy, cfg.eval, resolution=tuple(cfg.data.resolution), camera="corner",
                      out_dir=tmp_path / "eval")
    assert set(report["controllers"]) == {"policy", "expert", "random"}
    overall = report["controllers"]["policy"]["overall"]
    assert overall["latency_ms"]["calls"] >= 1 and overall["latency_ms"]["p95"] >= overall["latency_ms"]["p50"] > 0
    assert overall["denoising_steps"]["action_steps"] == cfg.eval.flow_steps
    assert (tmp_path / "eval" / overall["video_paths"][0]).stat().st_size > 1000
    # the predicted future of a held-out window, scored against the real frames and shown beside them
    held_out, training = report["futures"]["held_out"], report["futures"]["training"]
    assert held_out["windows"][0]["seed"] != training["windows"][0]["seed"]
    assert 0 < held_out["psnr"] < 100 and -1 <= held_out["ssim"] <= 1 and held_out["action_mse"] >= 0
    assert (tmp_path / "eval" / held_out["windows"][0]["video"]).stat().st_size > 1000
    frames = np.zeros((1 + cfg.data.context_frames, 1, 64, 64, 3), np.uint8)
    future = policy.imagine(frames, np.zeros(4, np.float32), "reach the goal")
    assert future.shape == (cfg.data.clip_frames - 1 - cfg.data.context_frames, 1, 64, 64, 3)
    assert future.dtype == np.uint8


def test_cli_export_and_eval(trained):
    from wamforge.cli import main

    path, cfg = trained
    paths = RunPaths.of(cfg)
    assert main(["export", str(path)]) == 0
    assert main(["eval", str(path), "--set", "eval.future_windows=0", "--set", "eval.videos=0"]) == 0
    report = json.loads((paths.eval / "report.json").read_text())
    assert report["tasks"] == ["reach-v3"] and report["protocol"]["execute_steps"] == 4
    card = (paths.export / "README.md").read_text()
    assert "post_prediction_head" in card and "finetune_action" in card


def test_a_nonfinite_loss_is_skipped_on_every_rank(built, tmp_path):
    path, cfg = one_stage_config(tmp_path, built[0])
    env = {**os.environ, "WAMFORGE_INJECT_NONFINITE": "2"}
    assert wamforge("train", path, env=env).wait(timeout=600) == 0
    rows = read_jsonl(RunPaths.of(cfg).stage("pretrain_video") / "metrics.jsonl")
    assert [r["skipped_nonfinite"] for r in rows] == [0, 1, 1, 1, 1, 1]
    assert np.isnan(rows[1]["loss"]) and all(np.isfinite(r["loss"]) for r in rows[2:])
    assert rows[1]["lr"] == rows[0]["lr"]  # the skipped step did not advance the schedule
    weights = load_file(str(RunPaths.of(cfg).final_weights("pretrain_video")))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_run_of_nonfinite_losses_stops_at_a_checkpoint_of_the_last_good_weights(built, tmp_path):
    path, cfg = one_stage_config(tmp_path, built[0], max_nonfinite_steps=2)
    env = {**os.environ, "WAMFORGE_INJECT_NONFINITE": "3+"}
    proc = wamforge("train", path, env=env, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0
    assert "2 steps in a row had a non-finite loss, up to step 4" in err and "Traceback" not in err
    ckpts = RunPaths.of(cfg).checkpoints("pretrain_video")
    assert (ckpts / "latest").read_text() == "step-4"
    assert f"{ckpts / 'step-4'} holds the last good weights" in " ".join(err.split())


def test_a_stop_signal_checkpoints_every_rank_and_resume_loses_no_step(trained, built, tmp_path):
    _, reference = trained
    path, cfg = run_config(tmp_path, built[0])
    paths = RunPaths.of(cfg)
    proc = wamforge("train", path, stderr=subprocess.PIPE, text=True)
    first = paths.checkpoints("align_embodiment") / "step-3"
    wait_for(first / "trainer_state.json", proc)
    proc.send_signal(signal.SIGUSR1)  # what SLURM sends ahead of preemption
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 75, err[-2000:]
    stopped_at = int((paths.checkpoints("align_embodiment") / "latest").read_text().split("-")[1])
    assert 3 <= stopped_at < 8 and f"stopped at step {stopped_at} on SIGUSR1" in " ".join(err.split())
    assert not paths.final_weights("align_embodiment").exists()
    assert wamforge("train", path, "--resume").wait(timeout=600) == 0
    for stage in cfg.stages:
        assert_same_samples(paths, RunPaths.of(reference), stage.name)


def test_checkpoint_retention_keeps_the_newest_and_every_mth(tmp_path):
    from wamforge.training.checkpoint import LATEST, prune

    for step in range(1, 11):
        (tmp_path / f"step-{step}").mkdir()
    (tmp_path / LATEST).write_text("step-10")
    prune(tmp_path, keep_last=2, keep_every=4)
    assert sorted(int(d.name[5:]) for d in tmp_path.glob("step-*")) == [4, 8, 9, 10]


def test_ema_is_kept_checkpointed_resumed_and_exported(built, tmp_path):
    path, cfg = one_stage_config(tmp_path, built[0], ema_decay=0.5, checkpoint_every=3)
    proc = wamforge("train", path, start_new_session=True)
    paths = RunPaths.of(cfg)
    first = paths.checkpoints("pretrain_video") / "step-3"
    wait_for(first / "trainer_state.json", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (first / "ema.safetensors").exists()
    assert wamforge("train", path, "--resume").wait(timeout=600) == 0

    final = load_file(str(paths.final_weights("pretrain_video")))
    ema = load_file(str(paths.final_weights("pretrain_video").with_name("ema.safetensors")))
    assert set(ema) == set(final)
    trained = [k for k in final if not torch.equal(final[k], ema[k])]
    assert trained and all(k.startswith(("trunk.", "text_encoder.", "action_expert.", "embodiments.")) for k in trained)
    out = tmp_path / "export_ema"
    assert wamforge("export", path, "--ema", "--out", out).wait(timeout=300) == 0
    exported = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
    assert json.loads((out / "config.json").read_text())["weights"] == "ema"


def test_a_finished_run_with_another_model_is_not_taken_as_done(trained, tmp_path):
    path, cfg = trained
    raw = yaml.safe_load(Path(path).read_text())
    raw["model"]["coupling"]["head"]["layers"] = 2  # another model than the one whose weights are on disk
    changed = write_config(raw, tmp_path / "changed.yaml")
    proc = wamforge("train", changed, "--resume", stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0 and "was trained with another model, stage or embodiment list" in " ".join(err.split())
    assert "Traceback" not in err
