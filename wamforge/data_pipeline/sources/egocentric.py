"""Egocentric video (Ego4D / EPIC-KITCHENS / EgoDex style): videos in a folder, timestamped
narrations in `caption_file` (rows: video, start, end, narration), and optionally per-frame 3D
hand keypoints in `hands/<video stem>.npy` (float [frames, D], one row per recorded frame).

Each narrated segment becomes an episode of the `human` embodiment with its narration as language;
where keypoints exist they are its actions and proprio (the hands' trajectory is what a robot
would have to do), otherwise the clip is action-free.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from wamforge.config.data import DataConfig, SourceConfig
from wamforge.data_pipeline.schema import Episode
from wamforge.data_pipeline.sources.clips import Rejected, reject_reason
from wamforge.data_pipeline.sources.video_folder import VIDEO_SUFFIXES, read_listing, read_spec_video
from wamforge.data_pipeline.video import resample_indices, resize_center_crop


class EgocentricSource:
    def __init__(self, name: str, cfg: SourceConfig, data: DataConfig):
        self.name, self.cfg, self.data = name, cfg, data
        self.root = Path(cfg.path)

    def episode_specs(self) -> list[dict]:
        listing = read_listing(self.root / self.cfg.caption_file)
        if not listing:
            raise FileNotFoundError(f"source '{self.name}': no narrations in {self.root / self.cfg.caption_file}")
        specs = []
        for video in sorted(listing):
            path = self.root / video
            if path.suffix.lower() not in VIDEO_SUFFIXES:
                continue
            for i, row in enumerate(sorted(listing[video], key=lambda r: r.get("segment", [0])[0])):
                specs.append({"path": str(path), "episode": f"{Path(video).with_suffix('').as_posix()}_n{i:03d}", **row})
        return specs

    def clips(self, spec: dict):
        if "error" in spec:
            raise ValueError(spec["error"])
        if not spec.get("segment"):
            raise ValueError(f"narration of {spec['episode']} has no start and end time")
        frames, fps = read_spec_video(spec)
        keep = resample_indices(len(frames), fps, self.data.fps)
        frames = resize_center_crop(frames[keep], tuple(self.data.resolution))
        hands = self._hands(spec, fps, keep)
        min_frames = (self.data.clip_frames - 1) * self.data.frame_stride + 1
        reason = reject_reason(frames, min_frames) if self.cfg.reject_static_blank else None
        if reason is not None:
            yield Rejected(spec["episode"], reason)
            return
        yield Episode(source=self.name, episode=spec["episode"], kind=self.cfg.kind, embodiment=self.cfg.embodiment,
                      frames=frames[:, None], fps=self.data.fps, views=["ego"], language=spec["caption"],
                      actions=hands, proprio=hands, action_space="human:hand_keypoints" if hands is not None else "",
                      extra={"file": Path(spec["path"]).name, "segment": spec["segment"]})

    def _hands(self, spec: dict, fps: float, keep: np.ndarray) -> np.ndarray | None:
        path = self.root / "hands" / f"{Path(spec['path']).stem}.npy"
        if not path.exists():
            return None
        keypoints = np.load(path, allow_pickle=False).astype(np.float32)
        rows = round(spec["segment"][0] * fps) + keep
        if rows[-1] >= len(keypoints):
            raise ValueError(f"{path.name} has {len(keypoints)} keypoint rows; the segment needs row {rows[-1]}")
        return keypoints[rows].reshape(len(rows), -1)
