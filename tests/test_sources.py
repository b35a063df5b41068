"""Source adapters read their formats as written by the formats' own libraries."""
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from tests import formats
from tests.conftest import tiny_config
from wamforge.config import validate
from wamforge.config.paths import RunPaths
from wamforge.config.data import DataConfig, SourceConfig
from wamforge.data_pipeline.build.pipeline import build_dataset
from wamforge.data_pipeline.sources import make_source
from wamforge.data_pipeline.video import encode_mp4


def lerobot_source(path, fps=30.0, **fields):
    cfg = SourceConfig(format="lerobot", kind="teleop", embodiment="so100", path=str(path), **fields)
    data = DataConfig(sources={}, fps=fps, resolution=(formats.SIZE, formats.SIZE))
    return make_source("so100_demo", cfg, data)


def assert_episode(episode, index: int, length: int, step: int = 1):
    """Frames, actions and proprio of episode `index` at every `step`-th recorded frame, aligned."""
    keep = np.arange(0, length, step)
    assert episode.frames.shape == (len(keep), 2, formats.SIZE, formats.SIZE, 3)
    assert episode.views == ["laptop", "phone"]
    for cam in range(2):
        expected = [formats.grey(index, i, cam) for i in keep]
        np.testing.assert_allclose(episode.frames[:, cam, 8, 8, 0], expected, atol=4)
    np.testing.assert_array_equal(episode.actions, formats.rows(index, length)[keep])
    np.testing.assert_array_equal(episode.proprio, formats.rows(index, length)[keep] + 0.5)
    assert episode.language == formats.TASKS[index % 2]
    episode.validate()


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_lerobot_episodes_keep_cameras_actions_state_and_task_aligned(tmp_path, version):
    lengths = [12, 17, 9]
    write = formats.write_lerobot_v21 if version == "v2.1" else formats.write_lerobot_v30
    source = lerobot_source(write(tmp_path / "ds", lengths))
    specs = source.episode_specs()
    assert [s["episode"] for s in specs] == ["episode_000000", "episode_000001", "episode_000002"]
    for index, spec in enumerate(specs):
        assert_episode(source.load(json.loads(json.dumps(spec))), index, lengths[index])


def test_lerobot_resamples_video_and_actions_together(tmp_path):
    source = lerobot_source(formats.write_lerobot_v30(tmp_path / "ds", [12, 16]), fps=15.0)
    episode = source.load(source.episode_specs()[1])
    assert episode.fps == 15.0 and episode.extra["source_fps"] == 30
    assert_episode(episode, 1, 16, step=2)


def test_lerobot_unknown_camera_is_one_clear_error(tmp_path):
    source = lerobot_source(formats.write_lerobot_v21(tmp_path / "ds", [10]), cameras=["observation.images.top"])
    with pytest.raises(ValueError, match=r"cameras \['observation.images.top'\] are not features"):
        source.episode_specs()


def test_lerobot_build_quarantines_a_parquet_without_actions(tmp_path):
    raw = tiny_config(tmp_path)
    raw["data"]["sources"] = {"so100_demo": {
        "format": "lerobot", "kind": "teleop", "embodiment": "so100",
        "path": str(formats.write_lerobot_v21(tmp_path / "ds", [12, 14, 11], drop_action_in=1))}}
    raw["data"]["fps"] = 30
    raw["model"]["regime"]["horizon"] = 4
    for stage in raw["stages"]:
        stage["mixture"] = {"weights": {"so100_demo": 1.0}}
    cfg = validate(raw)
    manifest = build_dataset(cfg)
    source = manifest["sources"]["so100_demo"]
    assert (source["episodes"], source["quarantined"]) == (2, 1)
    reasons = [json.loads(line) for line in (RunPaths.of(cfg).data / "quarantine.jsonl").read_text().splitlines()]
    assert len(reasons) == 1 and reasons[0]["spec"]["episode"] == "episode_000001"
    assert "episode_000001.parquet has no column 'action'" in reasons[0]["reason"]
    shard = RunPaths.of(cfg).data / source["shards"][0]
    meta = [json.loads(s["json"]) for s in wds.WebDataset(str(shard), shardshuffle=False)]
    assert {m["episode"] for m in meta} == {"episode_000000", "episode_000002"}
    assert all(m["views"] == ["laptop", "phone"] and m["embodiment"] == "so100" for m in meta)
    stats = json.loads((RunPaths.of(cfg).data / "stats.json").read_text())
    assert len(stats["so100"]["actions"]["mean"]) == 6


def robomimic_source(path, **fields):
    cfg = SourceConfig(format="robomimic", kind="teleop", embodiment="franka", path=str(path), **fields)
    return make_source("libero", cfg, DataConfig(sources={}, fps=20.0, resolution=(formats.SIZE, formats.SIZE)))


@pytest.mark.parametrize("libero", [False, True])
def test_robomimic_demos_become_episodes(tmp_path, libero):
    source = robomimic_source(formats.write_robomimic(tmp_path / "demo.hdf5", [10, 13], libero=libero))
    specs = source.episode_specs()
    assert [s["demo"] for s in specs] == ["demo_0", "demo_1"]
    episode = source.load(specs[1])
    episode.validate()
    assert episode.views == ["agentview", "robot0_eye_in_hand"] and episode.frames.shape[:2] == (13, 2)
    np.testing.assert_allclose(episode.frames[:, 1, 4, 4, 0], [formats.grey(1, i, 1) for i in range(13)])
    np.testing.assert_array_equal(episode.actions, formats.rows(1, 13, dim=7))
    assert episode.proprio.shape == (13, 9)
    assert episode.language == ("put the bowl on the plate" if libero else "Lift")


@pytest.mark.parametrize("kind, message", [("no_obs", "demo_1 has no 'obs' group"),
                                           ("grey_image", "images must be uint8 [N, H, W, 3]")])
def test_robomimic_bad_demo_is_one_clear_error(tmp_path, kind, message):
    source = robomimic_source(formats.write_robomimic(tmp_path / "demo.hdf5", [10, 11, 12], broken={1: kind}))
    specs = source.episode_specs()
    source.load(specs[0]), source.load(specs[2])
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        source.load(specs[1])


def build_one_source(tmp_path, source: dict):
    return build_sources(tmp_path, {"src": source})


def build_sources(tmp_path, sources: dict):
    raw = tiny_config(tmp_path)
    raw["data"]["sources"] = sources
    raw["model"]["max_action_dim"] = raw["model"]["max_proprio_dim"] = 16
    for stage in raw["stages"]:
        stage["mixture"] = {"weights": {name: 1.0 for name in sources}}
    cfg = validate(raw)
    manifest = build_dataset(cfg)
    out = RunPaths.of(cfg).data
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    metas = [json.loads(s["json"]) for shard in manifest["shards"]
             for s in wds.WebDataset(str(out / shard["path"]), shardshuffle=False)]
    return manifest, quarantine, metas


def test_web_video_is_cut_into_clips_and_bad_inputs_are_quarantined(tmp_path):
    root = formats.write_web_videos(tmp_path / "web")
    manifest, quarantine, metas = build_one_source(tmp_path, {
        "format": "video_folder", "kind": "internet", "embodiment": "none", "path": str(root),
        "caption_file": "captions.csv", "cut_threshold": 0.5, "clip_seconds": 2.0})
    episodes = {m["episode"]: m["language"] for m in metas}
    # two shots of 3 s, each cut at 2 s: 4 clips, the 1 s remainders too short for nothing (9 frames fit)
    assert sorted(episodes) == ["shard-000/clip_a", "two_shots_clip000", "two_shots_clip001",
                                "two_shots_clip002", "two_shots_clip003"]
    assert episodes["two_shots_clip002"] == "a red scene then a blue one" and episodes["shard-000/clip_a"] == "a teal scene"
    reasons = {(q["episode"] or q["spec"]["episode"]): q["reason"] for q in quarantine}
    assert reasons["static"].startswith("static: mean frame difference")
    assert reasons["blank"].startswith("blank: pixel std")
    assert "caption line 5 of captions.csv is not valid UTF-8" in reasons["bad_caption"]
    assert "'../evil.mp4' escapes the archive's folder" in reasons["shard-000/../evil"]
    assert len(quarantine) == 4 and manifest["quarantined"] == 4


# a bad caption line of each kind, after a good one: (caption file, the line, what its reason says)
BAD_CAPTION_LINES = [
    ("captions.jsonl", '{"video": "a.mp4", "caption": ', "is not valid JSON (Expecting value at column 31)"),
    ("captions.jsonl", '["a.mp4", "a list"]', "is a JSON list, not an object"),
    ("captions.jsonl", '{"video": "gone.mp4"}', "lists 'gone.mp4', which is not in the folder or its tar archives"),
    ("captions.jsonl", '{"video": "a.mp4", "start": 1.5, "end": 0.5}', "has start 1.5 and end 0.5; a segment needs 0 <= start < end"),
    ("captions.jsonl", '{"video": "a.mp4", "start": -1, "end": 1}', "has start -1 and end 1; a segment needs 0 <= start < end"),
    ("captions.csv", "a.mp4,only a caption", "has 2 fields where the header has 4"),
    ("captions.csv", "a.mp4,a caption,zero,1.5", "has start 'zero' and end '1.5', not both numbers of seconds"),
    ("captions.csv", ",no video,,", "names no video (video, path or videoid)"),
]


def write_captioned_videos(root, caption_file: str, bad_lines: list[str]):
    """a.mp4 and b.mp4 (real encoded clips), b captioned on line 1 (after the csv header), then `bad_lines`."""
    root.mkdir(parents=True)
    for name, background in [("a", (200, 40, 40)), ("b", (40, 40, 200))]:
        (root / f"{name}.mp4").write_bytes(encode_mp4(formats.moving_square(20, background), 10))
    good = "b.mp4,a blue scene,," if caption_file.endswith(".csv") else json.dumps({"video": "b.mp4", "caption": "a blue scene"})
    header = ["video,caption,start,end"] if caption_file.endswith(".csv") else []
    (root / caption_file).write_text("\n".join(header + [good] + bad_lines) + "\n")
    return len(header) + 2  # the first bad line's number


@pytest.mark.parametrize("caption_file, line, reason", BAD_CAPTION_LINES)
def test_a_bad_caption_line_is_one_bad_item_naming_its_file_and_line(tmp_path, caption_file, line, reason):
    number = write_captioned_videos(tmp_path / "web", caption_file, [line])
    cfg = SourceConfig(format="video_folder", kind="internet", embodiment="none", path=str(tmp_path / "web"),
                       caption_file=caption_file)
    source = make_source("web", cfg, DataConfig(sources={}, fps=10.0, resolution=(formats.SIZE, formats.SIZE)))
    built, bad = {}, []
    for spec in source.episode_specs():
        try:
            built.update({episode.episode: episode.language for episode in source.clips(spec)})
        except ValueError as err:
            bad.append((spec["caption_file"], spec["line"], str(err)))
    assert bad == [(str(tmp_path / "web" / caption_file), number, f"caption line {number} of {caption_file} {reason}")]
    assert built["b"] == "a blue scene" and set(built) <= {"a", "b"}


def test_bad_caption_lines_are_quarantined_with_file_and_line_and_the_rest_is_built(tmp_path):
    sources, expected = {}, {}
    for caption_file in ("captions.jsonl", "captions.csv"):
        bad = [(line, reason) for file, line, reason in BAD_CAPTION_LINES if file == caption_file]
        name, root = caption_file.split(".")[1], tmp_path / caption_file.replace(".", "_")
        first = write_captioned_videos(root, caption_file, [line for line, _ in bad])
        sources[name] = {"format": "video_folder", "kind": "internet", "embodiment": "none", "path": str(root),
                         "caption_file": caption_file}
        expected.update({(name, caption_file, first + i): f"ValueError: caption line {first + i} of {caption_file} {reason}"
                         for i, (_, reason) in enumerate(bad)})
    manifest, quarantine, metas = build_sources(tmp_path, sources)
    assert {(q["source"], Path(q["spec"]["caption_file"]).name, q["spec"]["line"]): q["reason"]
            for q in quarantine} == expected
    assert manifest["quarantined"] == len(quarantine) == len(BAD_CAPTION_LINES)
    assert {(m["source"], m["episode"], m["language"]) for m in metas} == {(n, "b", "a blue scene") for n in sources}


def test_egocentric_narrations_become_human_episodes_with_hand_actions(tmp_path):
    root = formats.write_egocentric(tmp_path / "ego")
    cfg = SourceConfig(format="egocentric", kind="egocentric", embodiment="human", path=str(root),
                       caption_file="narrations.jsonl")
    source = make_source("ego", cfg, DataConfig(sources={}, fps=10.0, resolution=(formats.SIZE, formats.SIZE)))
    specs = source.episode_specs()
    assert [s["caption"] for s in specs] == ["pick up the knife", "cut the onion"]
    second = next(source.clips(specs[1]))
    second.validate()
    assert second.language == "cut the onion" and second.frames.shape[:2] == (18, 1)
    np.testing.assert_allclose(second.actions[:, 0], (20 + np.arange(18)) * 0.01, atol=1e-6)  # rows from 2.0 s
    np.testing.assert_array_equal(second.actions, second.proprio)


def test_every_bad_demo_is_quarantined_with_its_reason_and_the_good_ones_built(tmp_path):
    broken = {1: "no_obs", 2: "grey_image", 3: "nan_actions", 4: "short_images", 5: "empty"}
    path = formats.write_robomimic(tmp_path / "demos.hdf5", [24] * 7, broken=broken)  # 20 Hz -> 12 frames at 10
    manifest, quarantine, metas = build_one_source(tmp_path, {
        "format": "robomimic", "kind": "teleop", "embodiment": "franka", "path": str(path)})
    assert {m["episode"] for m in metas} == {"demos_demo_0", "demos_demo_6"}
    reasons = {q["spec"]["demo"]: q["reason"] for q in quarantine}
    assert reasons == {
        "demo_1": "ValueError: demo_1 has no 'obs' group or dataset (members: actions, rewards)",
        "demo_2": "ValueError: camera agentview: images must be uint8 [N, H, W, 3], got uint8 (24, 32, 32)",
        "demo_3": "ValueError: actions contain NaN or infinite values",
        "demo_4": "ValueError: camera agentview has 22 frames but actions has 24 steps",
        "demo_5": "ValueError: demo_5 is empty (0 steps)"}


def test_rlds_episodes_prepared_by_tensorflow_datasets(tmp_path):
    import subprocess
    import sys

    # TensorFlow never enters this process: beside MuJoCo's EGL renderer (later tests) it crashes it
    script = f"from tests.formats import write_rlds; print(write_rlds(__import__('pathlib').Path({str(tmp_path / 'tfds')!r}), [10, 14]))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    root = done.stdout.strip().splitlines()[-1]
    cfg = SourceConfig(format="rlds", kind="teleop", embodiment="franka", path=str(root), fps=10)
    source = make_source("oxe", cfg, DataConfig(sources={}, fps=10.0, resolution=(formats.SIZE, formats.SIZE)))
    specs = source.episode_specs()
    assert [s["cameras"] for s in specs] == [["image", "wrist_image"]] * 2
    episode = source.load(json.loads(json.dumps(specs[1])))
    episode.validate()
    assert episode.views == ["image", "wrist_image"] and episode.frames.shape[:2] == (14, 2)
    np.testing.assert_allclose(episode.frames[:, 1, 4, 4, 0], [formats.grey(1, i, 1) for i in range(14)])
    np.testing.assert_array_equal(episode.actions, formats.rows(1, 14, dim=7))
    np.testing.assert_array_equal(episode.proprio, formats.rows(1, 14) + 0.5)
    assert episode.language == formats.TASKS[1]
    assert "tensorflow" not in sys.modules  # the adapter read through its helper process
