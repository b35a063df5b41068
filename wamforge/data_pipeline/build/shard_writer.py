"""Worker side of a build: episodes -> clip windows -> one WebDataset shard, with quarantine.

Nothing is lost: an episode that fails to load, validate or encode becomes a quarantine record
with its reason, and the rest of the shard is still written.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from wamforge.config.data import DataConfig, SourceConfig
from wamforge.data_pipeline.schema import SCHEMA_VERSION, Episode, sample_key
from wamforge.data_pipeline.sources import make_source
from wamforge.data_pipeline.sources.clips import Rejected
from wamforge.data_pipeline.stats import RunningStats
from wamforge.data_pipeline.video import encode_mp4, tile_views


def write_shard(task: dict) -> dict:
    """One build task in, one summary out: a task's episodes -> shard files of at most
    `shard_mb` each (`<key>-NNN.tar`), then `<key>.done.json`, which marks the task complete so a
    resumed build skips it. `task` holds JSON so Arrow never sees nested specs."""
    torch.set_num_threads(1)  # one task per core; threads inside a task would only contend
    job = json.loads(task["job"])
    data = DataConfig.model_validate(job["data"])
    source_cfg = SourceConfig.model_validate(job["source_cfg"])
    source = make_source(job["source"], source_cfg, data)
    out_dir, key = Path(job["out_dir"]), job["key"]
    for stale in out_dir.glob(f"{key}-*.tar*"):  # parts of an interrupted or older attempt
        stale.unlink()

    sink = _RollingShards(out_dir, key, int(data.shard_mb * 2**20))
    samples, lengths, quarantine = 0, [], []
    stats: dict[str, dict[str, RunningStats]] = {}
    def reject(spec: dict, reason: str, episode: str | None = None) -> None:
        quarantine.append({"source": job["source"], "spec": spec, "episode": episode, "reason": reason})

    for spec in job["specs"]:
        try:  # an adapter with clips() may cut one listed video into several episodes
            items = list(source.clips(spec)) if hasattr(source, "clips") else [source.load(spec)]
        except Exception as err:  # every failure is recorded, never fatal to the build
            reject(spec, f"{type(err).__name__}: {err}")
            continue
        for episode in items:
            if isinstance(episode, Rejected):
                reject(spec, episode.reason, episode.episode)
                continue
            try:
                episode.validate()
                windows = list(clip_windows(episode, data))
                if not windows:
                    raise ValueError(f"episode has {len(episode.frames)} frames, fewer than the "
                                     f"{(data.clip_frames - 1) * data.frame_stride + 1} a window spans "
                                     f"(clip_frames={data.clip_frames}, frame_stride={data.frame_stride})")
            except Exception as err:
                reject(spec, f"{type(err).__name__}: {err}", episode.episode)
                continue
            for sample in windows:
                sink.write(sample)
            samples += len(windows)
            lengths.append(len(episode.frames))
            _update_stats(stats, episode)
    parts = sink.close()
    summary = {"key": key, "build_hash": job["build_hash"], "source": job["source"], "parts": parts,
               "samples": samples, "episodes": len(lengths), "episode_frames": lengths, "fps": data.fps,
               "quarantine": quarantine,
               "stats": {e: {k: s.to_partial() for k, s in f.items()} for e, f in stats.items()}}
    done = out_dir / f"{key}.done.json"
    tmp = done.with_name(done.name + ".tmp")
    tmp.write_text(json.dumps(summary))
    os.replace(tmp, done)  # written last: a task is complete exactly when this file exists
    return {"summary": json.dumps(summary)}


class _RollingShards:
    """WebDataset tar files `<key>-NNN.tar`, each closed past `limit` bytes and renamed into place whole."""

    def __init__(self, out_dir: Path, key: str, limit: int):
        self.out_dir, self.key, self.limit = out_dir, key, limit
        self.parts: list[dict] = []
        self.writer = None

    def write(self, sample: dict) -> None:
        if self.writer is None:
            self.path = self.out_dir / f"{self.key}-{len(self.parts):03d}.tar"
            # a fixed member mtime: the same inputs give byte-identical shards
            self.writer = wds.TarWriter(str(self.path.with_name(self.path.name + ".tmp")), mtime=0)
            self.count = 0
        self.writer.write(sample)
        self.count += 1
        if self.writer.tarstream.fileobj.tell() >= self.limit:
            self._finish()

    def _finish(self) -> None:
        self.writer.close()
        os.replace(self.path.with_name(self.path.name + ".tmp"), self.path)
        self.parts.append({"path": self.path.name, "samples": self.count, "bytes": self.path.stat().st_size})
        self.writer = None

    def close(self) -> list[dict]:
        if self.writer is not None:
            self._finish()
        return self.parts


def window_starts(length: int, data: DataConfig) -> list[int]:
    """Episode index of each window's first video frame. Windows step by clip_stride; the first one's
    current frame is the episode's first (its context is padding) and the last one ends on its last frame."""
    span = (data.clip_frames - 1) * data.frame_stride
    lead = data.context_frames * data.frame_stride
    last = length - 1 - span
    if last + lead < 0:
        return []
    starts = list(range(-lead, last + 1, data.clip_stride))
    return starts if starts[-1] == last else starts + [last]


def clip_windows(episode: Episode, data: DataConfig):
    """One sample per window: T video frames every frame_stride steps, and the action/proprio rows
    (every step) from the window's current frame on, at most action_frames, fewer at the episode's end."""
    length = len(episode.frames)
    for start in window_starts(length, data):
        frames = start + data.frame_stride * np.arange(data.clip_frames)
        current = start + data.context_frames * data.frame_stride
        rows = slice(current, min(length, current + data.action_frames))
        meta = {"source": episode.source, "kind": episode.kind, "embodiment": episode.embodiment,
                "action_space": episode.action_space, "fps": episode.fps, "language": episode.language,
                "episode": episode.episode, "frames": data.clip_frames, "start": start, "current": current,
                "frame_stride": data.frame_stride, "context_frames": data.context_frames,
                "video_pad": int((frames < 0).sum()), "views": episode.views, "episode_length": length,
                "schema_version": SCHEMA_VERSION, **episode.extra}
        sample = {"__key__": sample_key(episode.source, episode.episode, current),
                  "mp4": encode_mp4(tile_views(episode.frames[np.maximum(frames, 0)]), episode.fps / data.frame_stride),
                  "json": json.dumps(meta).encode()}
        if episode.actions is not None:
            sample["actions.npy"] = _npy(episode.actions[rows])
        if episode.proprio is not None:
            sample["proprio.npy"] = _npy(episode.proprio[rows])
        yield sample


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _update_stats(stats: dict, episode: Episode) -> None:
    for field in ("actions", "proprio"):
        rows = getattr(episode, field)
        if rows is not None and rows.shape[1] > 0:
            slot = stats.setdefault(episode.embodiment, {})
            slot.setdefault(field, RunningStats(rows.shape[1])).update(rows)
