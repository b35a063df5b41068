"""Internet-style video: a folder of videos plus a captions jsonl ({"video": file, "caption": text}).

Action-free: episodes carry video and language only.
"""
from __future__ import annotations

import json
from pathlib import Path

from wamforge.config.schema import DataConfig, SourceConfig
from wamforge.data_pipeline.schema import Episode
from wamforge.data_pipeline.video import read_video_file, resample_fps, resize_center_crop

SOURCE_FORMAT = "video_folder"
VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".mov", ".avi"}


class VideoFolderSource:
    def __init__(self, name: str, cfg: SourceConfig, data: DataConfig):
        self.name, self.cfg, self.data = name, cfg, data
        self.root = Path(cfg.path)

    def prepare(self) -> None:
        """Write the procedural stand-in clips first when the config asks for them."""
        if self.cfg.generate is not None and not (self.root / self.cfg.caption_file).exists():
            from wamforge.data_pipeline.sources.procedural import write_procedural_videos
            write_procedural_videos(self.root, self.cfg.generate, self.data.resolution, self.data.fps,
                                    self.cfg.caption_file)

    def episode_specs(self) -> list[dict]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"source '{self.name}': video folder {self.root} does not exist")
        captions = self._captions()
        videos = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        return [{"path": str(p), "episode": p.relative_to(self.root).with_suffix("").as_posix(),
                 "caption": captions.get(p.relative_to(self.root).as_posix(), "")} for p in videos]

    def load(self, spec: dict) -> Episode:
        frames, fps = read_video_file(spec["path"])
        frames = resample_fps(frames, fps, self.data.fps)
        frames = resize_center_crop(frames, tuple(self.data.resolution))
        return Episode(source=self.name, episode=spec["episode"], kind=self.cfg.kind,
                       embodiment=self.cfg.embodiment, frames=frames[:, None], fps=self.data.fps,
                       views=["main"], language=spec["caption"], extra={"file": Path(spec["path"]).name})

    def _captions(self) -> dict[str, str]:
        path = self.root / self.cfg.caption_file
        if not path.exists():
            return {}
        out = {}
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out[row["video"]] = row.get("caption", "")
        return out
