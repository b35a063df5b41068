"""Worker side of a build: episodes -> clip windows -> one WebDataset shard, with quarantine.

Nothing is lost: an episode that fails to load, validate or encode becomes a quarantine record
with its reason, and the rest of the shard is still written.
"""
from __future__ import annotations

import io
import json
import os
import traceback
from pathlib import Path

import numpy as np
import webdataset as wds

from wamforge.config.schema import DataConfig, SourceConfig
from wamforge.data_pipeline.schema import SCHEMA_VERSION, Episode, sample_key
from wamforge.data_pipeline.sources import make_source
from wamforge.data_pipeline.stats import RunningStats
from wamforge.data_pipeline.video import encode_mp4, tile_views


def write_shard(task: dict) -> dict:
    """One Ray Data row in, one summary row out. `task` holds JSON so Arrow never sees nested specs."""
    job = json.loads(task["job"])
    data = DataConfig.model_validate(job["data"])
    source_cfg = SourceConfig.model_validate(job["source_cfg"])
    source = make_source(job["source"], source_cfg, data)
    path = Path(job["path"])
    tmp = path.with_name(path.name + ".tmp")

    samples, episodes, quarantine = 0, 0, []
    stats: dict[str, dict[str, RunningStats]] = {}
    with wds.TarWriter(str(tmp)) as sink:
        for spec in job["specs"]:
            try:
                episode = source.load(spec)
                episode.validate()
                windows = list(clip_windows(episode, data))
                if not windows:
                    raise ValueError(f"episode has {len(episode.frames)} frames, fewer than "
                                     f"clip_frames={data.clip_frames}")
            except Exception as err:  # every failure is recorded, never fatal to the build
                quarantine.append({"source": job["source"], "spec": spec,
                                   "reason": f"{type(err).__name__}: {err}",
                                   "where": traceback.format_exc(limit=1).strip().splitlines()[-1]})
                continue
            for sample in windows:
                sink.write(sample)
            samples += len(windows)
            episodes += 1
            _update_stats(stats, episode)
    os.replace(tmp, path)  # a shard appears whole or not at all
    return {"summary": json.dumps({
        "source": job["source"], "path": path.name, "samples": samples, "episodes": episodes,
        "bytes": path.stat().st_size, "quarantine": quarantine,
        "stats": {e: {k: s.to_partial() for k, s in f.items()} for e, f in stats.items()}})}


def clip_windows(episode: Episode, data: DataConfig):
    """Windows of T = clip_frames frames every clip_stride frames, fully inside the episode."""
    t = data.clip_frames
    for start in range(0, len(episode.frames) - t + 1, data.clip_stride):
        meta = {"source": episode.source, "kind": episode.kind, "embodiment": episode.embodiment,
                "action_space": episode.action_space, "fps": episode.fps, "language": episode.language,
                "episode": episode.episode, "start": start, "views": episode.views,
                "episode_length": len(episode.frames), "schema_version": SCHEMA_VERSION, **episode.extra}
        sample = {"__key__": sample_key(episode.source, episode.episode, start),
                  "mp4": encode_mp4(tile_views(episode.frames[start:start + t]), episode.fps),
                  "json": json.dumps(meta).encode()}
        if episode.actions is not None:
            sample["actions.npy"] = _npy(episode.actions[start:start + t])
        if episode.proprio is not None:
            sample["proprio.npy"] = _npy(episode.proprio[start:start + t])
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
