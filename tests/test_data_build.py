import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from tests.conftest import tiny_config
from wamforge.config import validate
from wamforge.config.paths import RunPaths
from wamforge.data_pipeline.build.pipeline import build_dataset
from wamforge.data_pipeline.loader.collate import load_npy
from wamforge.data_pipeline.video import decode_mp4


def test_build_writes_readable_shards_manifest_and_stats(built):
    cfg, manifest = built
    out = RunPaths.of(cfg).data
    assert manifest["samples"] == sum(s["samples"] for s in manifest["shards"]) > 0
    assert {"sim", "web"} <= set(manifest["sources"]) and manifest["quarantined"] == 0
    counted = 0
    for shard in manifest["shards"]:
        for sample in wds.WebDataset(str(out / shard["path"]), shardshuffle=False):
            meta = json.loads(sample["json"])
            assert sample["__key__"] == f"{meta['source']}/{meta['episode']}/{meta['current']:06d}"
            frames = decode_mp4(sample["mp4"])
            assert frames.shape == (9, 32, 32, 3) and frames.dtype == np.uint8
            if meta["source"] == "sim":
                rows = min(32, meta["episode_length"] - meta["current"])  # data.action_frames by default
                assert load_npy(sample["actions.npy"]).shape == load_npy(sample["proprio.npy"]).shape == (rows, 4)
                assert meta["embodiment"] == "sawyer" and meta["language"]
            else:
                assert "actions.npy" not in sample and meta["kind"] == "synthetic"
            counted += 1
    assert counted == manifest["samples"]
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats) == {"sawyer"}  # action-free video contributes no action statistics
    actions = stats["sawyer"]["actions"]
    assert len(actions["mean"]) == 4 and actions["count"] > 0
    assert all(lo <= q1 <= q99 <= hi for lo, q1, q99, hi in
               zip(actions["min"], actions["q01"], actions["q99"], actions["max"]))
    assert (out / "quarantine.jsonl").exists()


def test_rebuild_with_same_config_is_skipped(built):
    cfg, manifest = built
    again = build_dataset(cfg)
    assert again["created"] == manifest["created"]


def test_corrupt_video_is_quarantined_and_the_rest_is_built(tmp_path):
    raw = tiny_config(tmp_path)
    raw["data"]["sources"].pop("sim")
    for stage in raw["stages"]:
        stage["mixture"] = {"weights": {"web": 1.0}}
    cfg = validate(raw)
    src = cfg.data.sources["web"]
    from wamforge.data_pipeline.sources import make_source
    make_source("web", src, cfg.data).prepare()
    folder = Path(src.path)
    good = sorted(folder.glob("*.mp4"))
    (folder / "broken.mp4").write_bytes(good[0].read_bytes()[:300])  # truncated file
    (folder / "garbage.mp4").write_bytes(b"not a video at all")
    manifest = build_dataset(cfg)
    lines = [json.loads(l) for l in (RunPaths.of(cfg).data / "quarantine.jsonl").read_text().splitlines()]
    bad = {Path(q["spec"]["path"]).name: q["reason"] for q in lines}
    assert set(bad) == {"broken.mp4", "garbage.mp4"}
    assert all("could not be decoded" in reason or "no frames" in reason for reason in bad.values())
    assert manifest["sources"]["web"]["episodes"] == len(good)
    assert manifest["quarantined"] == 2


def test_short_episode_is_quarantined_with_reason(tmp_path):
    raw = tiny_config(tmp_path)
    raw["data"]["sources"].pop("sim")
    raw["data"]["sources"]["web"]["generate"] = {"videos": 2, "frames": 6}  # fewer than clip_frames
    for stage in raw["stages"]:
        stage["mixture"] = {"weights": {"web": 1.0}}
    manifest = build_dataset(validate(raw))
    assert manifest["samples"] == 0 and manifest["quarantined"] == 2
    reasons = (RunPaths.of(validate(raw)).data / "quarantine.jsonl").read_text()
    assert "too short: 6 frames, a window needs 9" in reasons


def test_sample_keys_cannot_escape_the_shard():
    from wamforge.data_pipeline.schema import sample_key

    key = sample_key("../../etc", "/abs/ep.1", 3)
    assert key == "etc/abs_ep_1/000003"
    assert ".." not in key and not key.startswith("/")


def test_episode_validation_names_what_is_wrong():
    import pytest

    from wamforge.data_pipeline.schema import Episode

    frames = np.zeros((10, 1, 8, 8, 3), np.uint8)
    actions = np.zeros((10, 4), np.float32)
    actions[3, 1] = np.nan
    with pytest.raises(ValueError, match="actions contain NaN"):
        Episode("s", "e", "sim", "sawyer", frames, 10.0, ["cam"], actions=actions).validate()
    with pytest.raises(ValueError, match=r"proprio must be \[N, D\] with N = 10"):
        Episode("s", "e", "sim", "sawyer", frames, 10.0, ["cam"], proprio=np.zeros((9, 4), np.float32)).validate()
    with pytest.raises(ValueError, match="1 views but the episode names 2"):
        Episode("s", "e", "sim", "sawyer", frames, 10.0, ["a", "b"]).validate()


def shard_keys(cfg, manifest) -> list[str]:
    out = RunPaths.of(cfg).data
    return [s["__key__"] for shard in manifest["shards"] for s in wds.WebDataset(str(out / shard["path"]),
                                                                                 shardshuffle=False)]


def test_a_killed_build_resumes_without_losing_or_duplicating_a_sample(built, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import pytest
    import yaml

    reference_cfg, reference = built
    raw = tiny_config(tmp_path)
    raw["data"]["episodes_per_task"] = 1  # 16 tasks, so the kill lands between them
    raw["data"]["sources"]["web"]["path"] = reference_cfg.data.sources["web"].path
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = validate(raw)
    shards = RunPaths.of(cfg).data / "shards"
    proc = subprocess.Popen([sys.executable, "-m", "wamforge.cli", "data", "build", str(path)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list(shards.glob("*.done.json"))) < 3:
        assert proc.poll() is None, "the build ended before it could be interrupted"
        if time.time() > deadline:  # a hang guard, not a speed check
            pytest.fail("no build task finished within 300 s")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, Ray and its workers, mid-build
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.done.json")}
    assert not (RunPaths.of(cfg).data / "manifest.json").exists() and 3 <= len(finished) < 16

    manifest = build_dataset(cfg)
    assert all((shards / name).stat().st_mtime_ns == t for name, t in finished.items())  # not redone
    keys = shard_keys(cfg, manifest)
    assert len(keys) == len(set(keys)) == manifest["samples"]
    assert sorted(keys) == sorted(shard_keys(reference_cfg, reference))  # what an uninterrupted build holds
    assert not list(shards.glob("*.tmp"))


def test_shards_roll_over_at_the_byte_target_and_the_build_reports(tmp_path):
    raw = tiny_config(tmp_path)
    raw["data"]["sources"].pop("sim")
    raw["data"]["shard_mb"] = 0.02  # ~20 KB: several shard files per task
    for stage in raw["stages"]:
        stage["mixture"] = {"weights": {"web": 1.0}}
    cfg = validate(raw)
    manifest = build_dataset(cfg)
    limit = 0.02 * 2**20
    tasks = len(list((RunPaths.of(cfg).data / "shards").glob("*.done.json")))
    assert len(manifest["shards"]) > tasks
    sizes = {s["path"]: s["bytes"] for s in manifest["shards"]}
    assert max(sizes.values()) < limit + 16 * 2**10  # a file closes at the first sample past the target
    assert sum(s["samples"] for s in manifest["shards"]) == manifest["samples"] == len(shard_keys(cfg, manifest))

    out = RunPaths.of(cfg).data
    report = json.loads((out / "build_report.json").read_text())
    assert report["clips"] == manifest["samples"] and report["sources"]["web"]["episodes"] == 8
    assert report["hours"] == pytest.approx(8 * 24 / 10 / 3600, rel=1e-3)  # 8 videos of 24 frames at 10 fps
    assert report["embodiments"]["none"]["clips"] == manifest["samples"] and report["rejects_by_reason"] == {}
    assert (out / "data_card.png").stat().st_size > 10_000


# the model's video VAE as the latent cache: parameter-free patchify, and the real causal Wan2.1 VAE at
# its fewest levels (random weights without a path); both share one set of shards, cut once
VAES = {"patchify": {"kind": "patchify"},
        "wan2.1": {"kind": "wan2.1", "base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2], "num_res_blocks": 1}}
CHANGED_VAES = {"patchify": [{"spatial": 8}, {"temporal": 2}],
                "wan2.1": [{"path": "/elsewhere/wan_2.1_vae.safetensors"}, {"z_dim": 4}, {"base_dim": 16}]}


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """One root, so the shards are cut once, and one local Ray cluster for all the cached builds."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning", configure_logging=True)
    yield tmp_path_factory.mktemp("vae-cache")
    ray.shutdown()


@pytest.fixture(scope="module", params=list(VAES))
def vae_cached(request, cache_root):
    """(config, manifest) of a web-only build with `data.caches: [vae]` for one VAE kind."""
    raw = tiny_config(cache_root)
    raw["data"]["sources"].pop("sim")
    raw["data"]["caches"] = ["vae"]
    raw["model"]["vae"] = VAES[request.param]
    for stage in raw["stages"]:
        stage["mixture"] = {"weights": {"web": 1.0}}
    cfg = validate(raw)
    return cfg, build_dataset(cfg)


def cache_loader(cfg, latents: str | None, batch_size: int = 3):
    from wamforge.data_pipeline.embodiments import EmbodimentRegistry
    from wamforge.data_pipeline.loader import MixtureLoader
    from wamforge.data_pipeline.loader.collate import Collator, Normalizer

    registry = EmbodimentRegistry.from_yaml(cfg.embodiments)
    collator = Collator(Normalizer({}, registry), registry, {"web": 0}, horizon=cfg.model.regime.horizon,
                        max_action_dim=cfg.model.max_action_dim, max_proprio_dim=cfg.model.max_proprio_dim,
                        latents=latents)
    return MixtureLoader(RunPaths.of(cfg).data, cfg.stages[0], collator, rank=0, world=1, batch_size=batch_size,
                         seed=0)


def trainer_model(cfg):
    """The model as the trainer builds it (a random VAE is the same one in every process)."""
    import torch

    from wamforge.data_pipeline.embodiments import EmbodimentRegistry
    from wamforge.model_zoo.build import build_model

    torch.manual_seed(cfg.seed)
    return build_model(cfg, len(EmbodimentRegistry.from_yaml(cfg.embodiments)))


def test_vae_cache_holds_the_models_own_latents_and_a_training_step_reads_them(vae_cached):
    import torch

    from wamforge.model_zoo.vae import cache_id, latent_geometry

    cfg, manifest = vae_cached
    vae_id = cache_id(cfg.model.vae)
    assert set(manifest["caches"]) == {vae_id} and vae_id.startswith(cfg.model.vae.kind)
    data = RunPaths.of(cfg).data
    for shard in manifest["shards"]:  # one sidecar per shard, in the shard's own order
        sidecar = data / manifest["caches"][vae_id]["sidecars"][shard["path"]]
        assert sidecar.name.endswith(f".{vae_id}.tar")
        keys = [s["__key__"] for s in wds.WebDataset(str(sidecar), shardshuffle=False)]
        assert keys == [s["__key__"] for s in wds.WebDataset(str(data / shard["path"]), shardshuffle=False)]

    batch = next(iter(cache_loader(cfg, vae_id)))[0]
    pixel_batch = next(iter(cache_loader(cfg, None)))[0]  # the same windows, decoded from the shards
    channels, temporal, spatial = latent_geometry(cfg.model.vae)
    assert batch.video is None and pixel_batch.latents is None and batch.keys == pixel_batch.keys
    assert batch.latents.shape == (3, channels, 1 + 8 // temporal, 32 // spatial, 32 // spatial)
    model = trainer_model(cfg)
    with torch.no_grad():
        own = model.encode_video(pixel_batch.video)
    torch.testing.assert_close(batch.latents, own, rtol=0, atol=1e-5)
    assert own.abs().amax() > 0.1  # latents of something, not an all-zero encoder

    torch.manual_seed(0)
    from_pixels = model.loss(pixel_batch, "video", {})["loss"]
    torch.manual_seed(0)
    from_latents = model.loss(batch, "video", {})["loss"]
    torch.testing.assert_close(from_latents, from_pixels, rtol=1e-5, atol=1e-6)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = [p.detach().clone() for p in model.trunk.parameters()]
    from_latents.backward()
    optimizer.step()
    assert all(torch.isfinite(p.grad).all() for p in model.trunk.parameters() if p.grad is not None)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.trunk.parameters()))


def test_a_changed_vae_is_another_cache_and_its_model_reads_pixels(vae_cached):
    from pydantic import TypeAdapter

    from wamforge.model_zoo.vae import VAEConfig, cache_id

    cfg, manifest = vae_cached
    built_id = cache_id(cfg.model.vae)
    cached_keys = next(iter(cache_loader(cfg, built_id)))[0].keys
    for change in CHANGED_VAES[cfg.model.vae.kind]:
        other_id = cache_id(TypeAdapter(VAEConfig).validate_python({**VAES[cfg.model.vae.kind], **change}))
        assert other_id != built_id and other_id not in manifest["caches"], change
        batch = next(iter(cache_loader(cfg, other_id)))[0]  # what the changed model's trainer would load
        assert batch.latents is None and batch.video is not None and batch.keys == cached_keys
