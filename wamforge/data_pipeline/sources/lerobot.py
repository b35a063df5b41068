"""LeRobot datasets on disk, both layouts:

- v2.1: one parquet and one mp4 per camera per episode (`data_path` / `video_path` templates in
  meta/info.json filled with episode_chunk and episode_index), episodes listed in meta/episodes.jsonl;
- v3.0: many episodes per parquet and per mp4, located through meta/episodes/*.parquet rows
  (data/chunk_index, data/file_index, dataset_from_index/to_index, and per camera
  videos/<key>/chunk_index, file_index, from_timestamp, to_timestamp).

Each episode becomes one `Episode`: every camera named in `cameras` (default: every video feature)
as a view, `observation.state` as proprio, `action` as actions, the first task string as language.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wamforge.config.data import DataConfig, SourceConfig
from wamforge.data_pipeline.schema import Episode
from wamforge.data_pipeline.video import read_video_file, resample_indices, resize_center_crop


class LeRobotSource:
    def __init__(self, name: str, cfg: SourceConfig, data: DataConfig):
        self.name, self.cfg, self.data = name, cfg, data
        self.root = Path(cfg.path)
        self.state_keys = cfg.state_keys or ["observation.state"]
        self.action_key = cfg.action_key or "action"

    @property
    def info(self) -> dict:
        path = self.root / "meta" / "info.json"
        if not path.exists():
            raise FileNotFoundError(f"source '{self.name}': {path} does not exist; is {self.root} a LeRobot dataset?")
        return json.loads(path.read_text())

    def episode_specs(self) -> list[dict]:
        info = self.info
        version = str(info.get("codebase_version", ""))
        cameras = self.cfg.cameras or [k for k, f in info["features"].items() if f.get("dtype") == "video"]
        missing = [c for c in cameras if c not in info["features"]]
        if missing:
            raise ValueError(f"source '{self.name}': cameras {missing} are not features of {self.root}; "
                             f"it has {sorted(info['features'])}")
        common = {"fps": info["fps"], "cameras": cameras, "robot_type": info.get("robot_type") or ""}
        if version.startswith("v2"):
            return [{**common, **row} for row in self._v2_episodes(info)]
        if version.startswith("v3"):
            return [{**common, **row} for row in self._v3_episodes(info, cameras)]
        raise ValueError(f"source '{self.name}': LeRobot codebase_version {version!r} is not supported "
                         f"(v2.1 and v3.0 are)")

    def _v2_episodes(self, info: dict) -> list[dict]:
        chunk_size = info.get("chunks_size", 1000)
        rows = []
        for line in (self.root / "meta" / "episodes.jsonl").read_text().splitlines():
            if not line.strip():
                continue
            ep = json.loads(line)
            index, chunk = ep["episode_index"], ep["episode_index"] // chunk_size
            rows.append({"episode": f"episode_{index:06d}", "length": ep["length"],
                         "task": (ep.get("tasks") or [""])[0],
                         "data": info["data_path"].format(episode_chunk=chunk, episode_index=index),
                         "videos": {}, "video_template": info.get("video_path"), "chunk": chunk, "index": index})
        return rows

    def _v3_episodes(self, info: dict, cameras: list[str]) -> list[dict]:
        import pyarrow.parquet as pq

        rows = []
        for path in sorted((self.root / "meta" / "episodes").rglob("*.parquet")):
            for ep in pq.read_table(path).to_pylist():
                videos = {cam: {"file": info["video_path"].format(
                              video_key=cam, chunk_index=ep[f"videos/{cam}/chunk_index"],
                              file_index=ep[f"videos/{cam}/file_index"]),
                              "from": ep[f"videos/{cam}/from_timestamp"], "to": ep[f"videos/{cam}/to_timestamp"]}
                          for cam in cameras}
                rows.append({"episode": f"episode_{ep['episode_index']:06d}", "length": ep["length"],
                             "task": (ep.get("tasks") or [""])[0],
                             "data": info["data_path"].format(chunk_index=ep["data/chunk_index"],
                                                              file_index=ep["data/file_index"]),
                             "rows": [ep["dataset_from_index"], ep["dataset_to_index"]], "videos": videos})
        return sorted(rows, key=lambda r: r["episode"])

    def load(self, spec: dict) -> Episode:
        table = self._table(spec)
        length = len(table[self.action_key])
        actions = _stack(table[self.action_key], self.action_key)
        proprio = np.concatenate([_stack(table[k], k) for k in self.state_keys], axis=1) if self.state_keys else None
        views = [self._camera(spec, cam, length) for cam in spec["cameras"]]
        keep = resample_indices(length, spec["fps"], self.data.fps)
        frames = np.stack([v[keep] for v in views], axis=1)
        return Episode(source=self.name, episode=spec["episode"], kind=self.cfg.kind,
                       embodiment=self.cfg.embodiment, frames=frames, fps=self.data.fps,
                       views=[c.split(".")[-1] for c in spec["cameras"]],
                       language=spec["task"] or self.cfg.language, actions=actions[keep],
                       proprio=None if proprio is None else proprio[keep],
                       action_space=f"lerobot:{spec['robot_type'] or self.cfg.embodiment}",
                       extra={"task": spec["task"], "source_fps": spec["fps"]})

    def _table(self, spec: dict) -> dict:
        import pyarrow.parquet as pq

        path = self.root / spec["data"]
        table = pq.read_table(path)
        missing = [k for k in [self.action_key, *self.state_keys] if k not in table.column_names]
        if missing:
            raise ValueError(f"{path.name} has no column {missing[0]!r} (columns: {', '.join(table.column_names)})")
        if "rows" in spec:  # v3.0: this episode's rows of a file that packs many
            first = table["index"][0].as_py() if "index" in table.column_names else 0
            table = table.slice(spec["rows"][0] - first, spec["rows"][1] - spec["rows"][0])
        if table.num_rows != spec["length"]:
            raise ValueError(f"{path.name} holds {table.num_rows} rows for {spec['episode']}, "
                             f"whose metadata says {spec['length']}")
        return {k: table[k].to_pylist() for k in [self.action_key, *self.state_keys]}

    def _camera(self, spec: dict, camera: str, length: int) -> np.ndarray:
        if camera in spec["videos"]:  # v3.0
            video = spec["videos"][camera]
            frames, _ = read_video_file(self.root / video["file"], video["from"], video["to"])
        else:
            path = spec["video_template"].format(episode_chunk=spec["chunk"], video_key=camera,
                                                 episode_index=spec["index"])
            frames, _ = read_video_file(self.root / path)
        if len(frames) != length:
            raise ValueError(f"camera {camera} has {len(frames)} frames for {spec['episode']} but its "
                             f"parquet has {length} rows")
        return resize_center_crop(frames, tuple(self.data.resolution))


def _stack(column: list, name: str) -> np.ndarray:
    try:
        values = np.asarray(column, dtype=np.float32)
    except ValueError:
        raise ValueError(f"column {name!r} holds rows of different lengths") from None
    return values[:, None] if values.ndim == 1 else values
