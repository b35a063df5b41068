"""Small datasets in real on-disk formats, written with each format's own libraries (pyarrow, PyAV,
h5py), for the source adapter tests. Frame i of episode e is a flat grey of `grey(e, i)` and its
action row is (e, i, ...), so a test can tell every frame and row apart after a round trip."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wamforge.data_pipeline.video import encode_mp4

FPS = 30
SIZE = 32
CAMERAS = ["observation.images.laptop", "observation.images.phone"]
TASKS = ["pick the cube", "open the drawer"]


def grey(episode: int, frame: int, camera: int = 0) -> int:
    return (40 * episode + 6 * frame + 100 * camera) % 200 + 20


def frames(episode: int, length: int, camera: int = 0) -> np.ndarray:
    values = np.array([grey(episode, i, camera) for i in range(length)], np.uint8)
    return np.broadcast_to(values[:, None, None, None], (length, SIZE, SIZE, 3)).copy()


def rows(episode: int, length: int, dim: int = 6) -> np.ndarray:
    out = np.zeros((length, dim), np.float32)
    out[:, 0], out[:, 1] = episode, np.arange(length)
    out[:, 2:] = np.sin(np.arange(length))[:, None] * np.arange(1, dim - 1)
    return out


def _features() -> dict:
    video = {"dtype": "video", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"]}
    return {**{cam: video for cam in CAMERAS},
            "observation.state": {"dtype": "float32", "shape": [6], "names": None},
            "action": {"dtype": "float32", "shape": [6], "names": None},
            **{k: {"dtype": "int64", "shape": [1], "names": None} for k in ("frame_index", "episode_index", "index",
                                                                          "task_index")},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None}}


def _frame_table(episode: int, length: int, first_index: int, drop: str | None = None):
    import pyarrow as pa

    columns = {
        "action": pa.array(list(rows(episode, length)), type=pa.list_(pa.float32())),
        "observation.state": pa.array(list(rows(episode, length) + 0.5), type=pa.list_(pa.float32())),
        "timestamp": pa.array(np.arange(length, dtype=np.float32) / FPS),
        "frame_index": pa.array(np.arange(length)), "episode_index": pa.array(np.full(length, episode)),
        "index": pa.array(first_index + np.arange(length)), "task_index": pa.array(np.full(length, episode % 2)),
    }
    columns.pop(drop, None)
    return pa.table(columns)


def write_lerobot_v21(root: Path, lengths: list[int], drop_action_in: int | None = None) -> Path:
    import pyarrow.parquet as pq

    info = {"codebase_version": "v2.1", "robot_type": "so100", "fps": FPS, "chunks_size": 1000,
            "total_episodes": len(lengths), "total_frames": sum(lengths),
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": _features()}
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                       for i, t in enumerate(TASKS)))
    (root / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": e, "tasks": [TASKS[e % 2]], "length": n}) + "\n" for e, n in enumerate(lengths)))
    first = 0
    for e, n in enumerate(lengths):
        data = root / info["data_path"].format(episode_chunk=0, episode_index=e)
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_frame_table(e, n, first, drop="action" if e == drop_action_in else None), data)
        for c, cam in enumerate(CAMERAS):
            video = root / info["video_path"].format(episode_chunk=0, video_key=cam, episode_index=e)
            video.parent.mkdir(parents=True, exist_ok=True)
            video.write_bytes(encode_mp4(frames(e, n, c), FPS))
        first += n
    return root


def write_lerobot_v30(root: Path, lengths: list[int]) -> Path:
    """Every episode in one parquet file and, per camera, one mp4 file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    info = {"codebase_version": "v3.0", "robot_type": "so100", "fps": FPS, "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 500,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": _features()}
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    pq.write_table(pa.table({"task_index": list(range(len(TASKS)))}, metadata=None).append_column(
        "task", pa.array(TASKS)), root / "meta" / "tasks.parquet")
    starts = np.concatenate([[0], np.cumsum(lengths)])
    data = root / info["data_path"].format(chunk_index=0, file_index=0)
    data.parent.mkdir(parents=True)
    pq.write_table(pa.concat_tables([_frame_table(e, n, int(starts[e])) for e, n in enumerate(lengths)]), data)
    for c, cam in enumerate(CAMERAS):
        video = root / info["video_path"].format(video_key=cam, chunk_index=0, file_index=0)
        video.parent.mkdir(parents=True)
        video.write_bytes(encode_mp4(np.concatenate([frames(e, n, c) for e, n in enumerate(lengths)]), FPS))
    episodes = {"episode_index": list(range(len(lengths))), "tasks": [[TASKS[e % 2]] for e in range(len(lengths))],
                "length": lengths, "data/chunk_index": [0] * len(lengths), "data/file_index": [0] * len(lengths),
                "dataset_from_index": starts[:-1].tolist(), "dataset_to_index": starts[1:].tolist()}
    for cam in CAMERAS:
        episodes[f"videos/{cam}/chunk_index"] = [0] * len(lengths)
        episodes[f"videos/{cam}/file_index"] = [0] * len(lengths)
        episodes[f"videos/{cam}/from_timestamp"] = (starts[:-1] / FPS).tolist()
        episodes[f"videos/{cam}/to_timestamp"] = (starts[1:] / FPS).tolist()
    pq.write_table(pa.table(episodes), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    return root


def write_robomimic(path: Path, lengths: list[int], libero: bool = False, broken: dict | None = None) -> Path:
    """robomimic's layout (LIBERO's with libero=True). broken: {demo index: "no_obs" | "grey_image" |
    "nan_actions" | "short_images" | "empty"}."""
    import h5py

    broken = broken or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = sum(lengths)
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        if libero:
            data.attrs["problem_info"] = json.dumps({"language_instruction": "put the bowl on the plate"})
        for e, n in enumerate(lengths):
            n = 0 if broken.get(e) == "empty" else n
            demo = data.create_group(f"demo_{e}")
            demo.attrs["num_samples"] = n
            actions = rows(e, n, dim=7).astype(np.float64)
            if broken.get(e) == "nan_actions":
                actions[n // 2, 3] = np.inf
            demo.create_dataset("actions", data=actions)
            demo.create_dataset("rewards", data=np.zeros(n))
            if broken.get(e) == "no_obs":
                continue
            obs = demo.create_group("obs")
            for c, cam in enumerate(["agentview", "robot0_eye_in_hand"]):
                images = frames(e, n - 2 if broken.get(e) == "short_images" else n, c)
                obs.create_dataset(f"{cam}_image", data=images[..., 0] if broken.get(e) == "grey_image" else images)
            obs.create_dataset("robot0_eef_pos", data=rows(e, n, dim=3))
            obs.create_dataset("robot0_eef_quat", data=np.tile([0, 0, 0, 1.0], (n, 1)))
            obs.create_dataset("robot0_gripper_qpos", data=np.full((n, 2), 0.04))
    return path


def moving_square(length: int, background: tuple[int, int, int], size: int = SIZE) -> np.ndarray:
    """A white square sliding across a flat background: motion a clip filter accepts."""
    out = np.empty((length, size, size, 3), np.uint8)
    out[:] = background
    for i in range(length):
        x = (2 * i) % (size - 8)
        out[i, 10:18, x:x + 8] = 255
    return out


def write_web_videos(root: Path) -> Path:
    """A WebVid-style folder: a two-shot video, a static and a blank one, a csv listing with one
    line that is not UTF-8, and a tar shard with captioned members and one escaping name."""
    import io
    import tarfile

    root.mkdir(parents=True)
    two_shots = np.concatenate([moving_square(30, (200, 40, 40)), moving_square(30, (40, 40, 200))])
    (root / "two_shots.mp4").write_bytes(encode_mp4(two_shots, 10))
    (root / "static.mp4").write_bytes(encode_mp4(np.repeat(moving_square(1, (90, 160, 90)), 20, 0), 10))
    (root / "blank.mp4").write_bytes(encode_mp4(np.zeros((20, SIZE, SIZE, 3), np.uint8), 10))
    (root / "bad_caption.mp4").write_bytes(encode_mp4(moving_square(20, (120, 120, 30)), 10))
    (root / "captions.csv").write_bytes(b"videoid,name\n"
                                        b"two_shots,a red scene then a blue one\n"
                                        b"static,a still garden\n"
                                        b"blank,darkness\n"
                                        b"bad_caption,caf\xe9 latin-1 bytes\n")
    with tarfile.open(root / "shard-000.tar", "w") as tar:
        for name, payload in [("clip_a.mp4", encode_mp4(moving_square(20, (30, 140, 140)), 10)),
                              ("clip_a.txt", b"a teal scene"),
                              ("../evil.mp4", encode_mp4(moving_square(20, (30, 30, 30)), 10))]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return root


def write_egocentric(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "hands").mkdir()
    (root / "kitchen.mp4").write_bytes(encode_mp4(moving_square(40, (150, 110, 70)), 10))
    hands = np.stack([np.arange(40) * 0.01 + k for k in range(6)], axis=1).astype(np.float32)
    np.save(root / "hands" / "kitchen.npy", hands)
    (root / "narrations.jsonl").write_text(
        json.dumps({"video": "kitchen.mp4", "start": 0.0, "end": 1.5, "narration": "pick up the knife"}) + "\n" +
        json.dumps({"video": "kitchen.mp4", "start": 2.0, "end": 3.8, "narration": "cut the onion"}) + "\n")
    return root


def write_rlds(data_dir: Path, lengths: list[int]) -> Path:
    """An RLDS dataset prepared by tensorflow-datasets itself (the way OXE builders make theirs);
    returns its <name>/<version> folder."""
    import tensorflow_datasets as tfds

    class TinyRlds(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"steps": tfds.features.Dataset({
                "observation": {"image": tfds.features.Image(shape=(SIZE, SIZE, 3)),
                                "wrist_image": tfds.features.Image(shape=(SIZE, SIZE, 3)),
                                "state": tfds.features.Tensor(shape=(6,), dtype=np.float32)},
                "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                "language_instruction": tfds.features.Text(),
                "is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_})}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for e, n in enumerate(lengths):
                yield e, {"steps": [{"observation": {"image": frames(e, n, 0)[i], "wrist_image": frames(e, n, 1)[i],
                                                     "state": rows(e, n)[i] + 0.5},
                                     "action": rows(e, n, dim=7)[i], "language_instruction": TASKS[e % 2],
                                     "is_first": i == 0, "is_last": i == n - 1, "is_terminal": i == n - 1}
                                    for i in range(n)]}

    builder = TinyRlds(data_dir=str(data_dir))
    builder.download_and_prepare()
    return Path(builder.data_dir)
