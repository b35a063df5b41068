"""The plan's data side: decode cost per sample probed on this machine (the built data's own loader,
or a clip encoded as the build encodes), and the loader cores per GPU that follow from it."""
from __future__ import annotations

import json

import pytest

from wamforge.cli import main
from wamforge.config.paths import RunPaths
from wamforge.data_pipeline.sizing import HEADROOM, DecodeProbe, loader_need, probe_decode, step_time_from_flops


def test_the_probe_times_the_training_loader_on_built_data(built):
    cfg, _ = built
    probe = probe_decode(cfg, samples=4)
    assert probe.samples == 4 and not probe.latents
    assert str(RunPaths.of(cfg).data) in probe.measured_on


def test_a_resized_clip_is_probed_as_the_build_would_encode_it(built):
    cfg, _ = built
    resized = cfg.model_copy(update={"data": cfg.data.model_copy(update={"resolution": (48, 80), "clip_frames": 5})})
    probe = probe_decode(resized, samples=2, built=False)
    assert "synthetic 5-frame 48x80 clip" in probe.measured_on


def test_cores_per_gpu_are_the_samples_a_gpu_reads_times_the_probed_cost():
    probe = DecodeProbe(seconds_per_sample=0.02, samples=16, measured_on="x", latents=False)
    need = loader_need(probe, micro_batch=4, step_time_s=0.5)  # 8 samples/s at 20 ms each
    assert need.samples_per_s_per_gpu == 8 and need.cores_per_gpu == pytest.approx(8 * 0.02 * HEADROOM)
    assert need.workers_per_rank == 1 and "0.20 loader cores" in need.message
    assert step_time_from_flops(989e12 * 0.4, 989, 0.4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="an MFU in"):
        step_time_from_flops(1e12, 989, 1.5)


def test_cli_plan_reports_the_loader_cores_from_its_own_probe(built, tmp_path, capsys):
    cfg, _ = built
    config = tmp_path / "experiment.yaml"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))
    assert main(["plan", str(config), "--step-time", "0.25", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["loader"]
    rate = cfg.training.micro_batch_per_rank / 0.25
    assert out["samples_per_s_per_gpu"] == pytest.approx(rate)
    # the cores follow from the plan's own probe, whatever it measured
    assert out["cores_per_gpu"] == loader_need(DecodeProbe(**out["probe"]), cfg.training.micro_batch_per_rank,
                                               0.25).cores_per_gpu
    assert "training loader" in out["probe"]["measured_on"]
