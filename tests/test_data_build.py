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
