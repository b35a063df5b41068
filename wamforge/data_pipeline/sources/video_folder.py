"""Internet-style video (WebVid / Panda-70M style): videos in a folder or in tar archives, with
captions from a listing (`caption_file`, jsonl or csv; a row may name a [start, end) segment in
seconds) or from a `.txt`/`.json` member beside each video in a tar. Long videos are split at shot
cuts (`cut_threshold`) and every `clip_seconds`; blank, static and too-short clips are rejected
with their reason. Action-free: episodes carry video and language only.
"""
from __future__ import annotations

import csv
import io
import json
import math
import tarfile
from pathlib import Path, PurePosixPath

from wamforge.config.data import DataConfig, SourceConfig
from wamforge.data_pipeline.schema import Episode
from wamforge.data_pipeline.sources.clips import Rejected, histogram_cuts, reject_reason, split_points
from wamforge.data_pipeline.video import read_video_file, resample_fps, resize_center_crop

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
        listing = read_listing(self.root / self.cfg.caption_file)
        specs, found = [], set()
        for path in sorted(p for p in self.root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES):
            rel = path.relative_to(self.root).as_posix()
            found.add(rel)
            specs += _with_segments({"path": str(path), "episode": str(PurePosixPath(rel).with_suffix(""))},
                                    listing.get(rel))
        for archive in sorted(self.root.rglob("*.tar")):
            specs += archive_specs(archive, listing)
        found |= {spec["member"] for spec in specs if "member" in spec}
        return specs + unmatched_rows({video: rows for video, rows in listing.items() if video not in found})

    def clips(self, spec: dict):
        """The spec's video as Episodes, one per clip, or Rejected clips with their reason."""
        if "error" in spec:
            raise ValueError(spec["error"])
        frames, fps = read_spec_video(spec)
        frames = resize_center_crop(resample_fps(frames, fps, self.data.fps), tuple(self.data.resolution))
        cuts = histogram_cuts(frames, self.cfg.cut_threshold) if self.cfg.cut_threshold else []
        ranges = split_points(len(frames), self.data.fps, self.cfg.clip_seconds, cuts)
        min_frames = (self.data.clip_frames - 1) * self.data.frame_stride + 1
        for i, (start, end) in enumerate(ranges):
            episode = spec["episode"] if len(ranges) == 1 else f"{spec['episode']}_clip{i:03d}"
            reason = reject_reason(frames[start:end], min_frames) if self.cfg.reject_static_blank else None
            if reason is not None:
                yield Rejected(episode, reason)
                continue
            yield Episode(source=self.name, episode=episode, kind=self.cfg.kind, embodiment=self.cfg.embodiment,
                          frames=frames[start:end, None], fps=self.data.fps, views=["main"],
                          language=spec.get("caption", ""), extra={"file": spec.get("member") or Path(spec["path"]).name,
                                                                   "clip": [start, end]})


def read_listing(path: Path) -> dict[str, list[dict]]:
    """Caption rows by video (relative path or archive member), each with its `caption_file` and
    `line`. A line that cannot be read (not UTF-8, not JSON, fields missing, a bad segment) becomes a
    row with an `error`, so only its video is quarantined; one that names no video is kept under "".
    """
    if not path.exists():
        return {}
    lines = list(enumerate(path.read_bytes().splitlines(), start=1))
    header = None  # a JSON object per line
    if path.suffix == ".csv" and lines:
        header = next(csv.reader([lines.pop(0)[1].decode("utf-8-sig", "replace")]), [])
    listing: dict[str, list[dict]] = {}
    for number, raw in lines:
        if raw.strip():
            row = {"caption_file": str(path), "line": number, **_row(raw, header)}
            if "error" in row:
                row["error"] = f"caption line {number} of {path.name} {row['error']}"
            listing.setdefault(row.pop("video"), []).append(row)
    return listing


def _row(raw: bytes, header: list[str] | None) -> dict:
    """One caption line (a csv row under `header`, or a JSON object) as video, caption and segment,
    or as whatever of those it names with the `error` that makes it unusable."""
    text = raw.decode("utf-8", "replace")
    if header is not None:
        values = next(csv.reader([text]))
        fields = dict(zip(header, values))
        if len(values) != len(header):
            return {"video": _video(fields), "error": f"has {len(values)} fields where the header has {len(header)}"}
    else:
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as err:
            return {"video": "", "error": f"is not valid JSON ({err.msg} at column {err.colno})"}
        if not isinstance(fields, dict):
            return {"video": "", "error": f"is a JSON {type(fields).__name__}, not an object"}
    row = {"video": _video(fields), "caption": fields.get("caption") or fields.get("narration") or fields.get("name") or ""}
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return {**row, "error": f"is not valid UTF-8 ({err.reason} at byte {err.start})"}
    if not row["video"]:
        return {**row, "error": "names no video (video, path or videoid)"}
    start, end = (fields.get(k) for k in ("start", "end"))
    if start in (None, "") and end in (None, ""):
        return row
    try:
        row["segment"] = [float(start), float(end)]
    except (TypeError, ValueError):
        return {**row, "error": f"has start {start!r} and end {end!r}, not both numbers of seconds"}
    if not 0 <= row["segment"][0] < row["segment"][1] < math.inf:
        return {**row, "error": f"has start {start} and end {end}; a segment needs 0 <= start < end"}
    return row


def _video(fields: dict) -> str:
    return fields.get("video") or fields.get("path") or (f"{fields['videoid']}.mp4" if fields.get("videoid") else "")


def unmatched_rows(listing: dict[str, list[dict]]) -> list[dict]:
    """Specs for the caption rows left over once every video took its own: each is quarantined,
    with its error, or as listing a video that is not there."""
    return [{"episode": f"{Path(row['caption_file']).name}:{row['line']}", "video": video, **row,
             "error": row.get("error") or f"caption line {row['line']} of {Path(row['caption_file']).name} "
                                          f"lists {video!r}, which is not in the folder or its tar archives"}
            for video, rows in listing.items() for row in rows]


def _with_segments(spec: dict, rows: list[dict] | None) -> list[dict]:
    """One spec per listed segment of a video (or one for the whole video)."""
    if not rows:
        return [spec]
    if len(rows) == 1 and "segment" not in rows[0]:
        return [{**spec, **rows[0]}]
    return [{**spec, **row, "episode": f"{spec['episode']}_seg{i:03d}"} for i, row in enumerate(rows)]


def archive_specs(archive: Path, listing: dict) -> list[dict]:
    """Video members of a tar, captioned by the listing or a same-stem .txt/.json member. Members are
    read in memory, never extracted; one whose name could escape a folder is turned down."""
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        specs = []
        for name in sorted(members):
            if PurePosixPath(name).suffix.lower() not in VIDEO_SUFFIXES:
                continue
            episode = f"{archive.stem}/{PurePosixPath(name).with_suffix('')}"
            spec = {"archive": str(archive), "member": name, "episode": episode}
            if name.startswith("/") or ".." in PurePosixPath(name).parts:
                specs.append({**spec, "error": f"archive member name {name!r} escapes the archive's folder"})
                continue
            stem = str(PurePosixPath(name).with_suffix(""))
            if f"{stem}.txt" in members:
                spec["caption"] = tar.extractfile(members[f"{stem}.txt"]).read().decode("utf-8", "replace").strip()
            elif f"{stem}.json" in members:
                spec["caption"] = json.loads(tar.extractfile(members[f"{stem}.json"]).read()).get("caption", "")
            specs += _with_segments(spec, listing.get(name))
    return specs


def read_spec_video(spec: dict):
    """(frames, fps) of a spec's video file or archive member, cut to its segment if it has one."""
    start, end = spec.get("segment") or (0.0, None)
    if "archive" in spec:
        with tarfile.open(spec["archive"]) as tar:
            data = tar.extractfile(spec["member"]).read()
        return read_video_file(io.BytesIO(data), start, end)
    return read_video_file(spec["path"], start, end)
