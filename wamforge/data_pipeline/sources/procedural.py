"""Procedural motion clips written as a video folder: a labelled stand-in for internet video.

Coloured shapes drift and bounce over a slowly panning background, so a video model has real
motion to learn before real web adapters are wired in. Every caption says it is synthetic.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wamforge.config.data import ProceduralVideo
from wamforge.data_pipeline.video import encode_mp4

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}


def write_procedural_videos(root: Path, cfg: ProceduralVideo, resolution, fps: float, caption_file: str) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for i in range(cfg.videos):
        frames, caption = _clip(rng, cfg.frames, tuple(resolution))
        name = f"procedural_{i:04d}.mp4"
        (root / name).write_bytes(encode_mp4(frames, fps))
        rows.append({"video": name, "caption": f"synthetic stand-in: {caption}"})
    (root / caption_file).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _clip(rng: np.random.Generator, frames: int, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(30, 120, size=3)
    pan = rng.uniform(-1.5, 1.5, size=2)
    name, colour = list(COLOURS.items())[rng.integers(len(COLOURS))]
    pos = rng.uniform([h * 0.2, w * 0.2], [h * 0.8, w * 0.8])
    vel = rng.uniform(-2.5, 2.5, size=2)
    radius = rng.uniform(0.08, 0.16) * min(h, w)
    square = bool(rng.integers(2))
    out = np.empty((frames, h, w, 3), dtype=np.uint8)
    for t in range(frames):
        shade = (np.sin((xx + pan[1] * t) / 9.0) + np.cos((yy + pan[0] * t) / 11.0)) * 20
        img = np.clip(base[None, None, :] + shade[..., None], 0, 255)
        if square:
            inside = (np.abs(yy - pos[0]) < radius) & (np.abs(xx - pos[1]) < radius)
        else:
            inside = (yy - pos[0]) ** 2 + (xx - pos[1]) ** 2 < radius ** 2
        img[inside] = colour
        out[t] = img.astype(np.uint8)
        pos += vel
        for d, limit in enumerate((h, w)):  # bounce off the borders
            if not radius <= pos[d] <= limit - radius:
                vel[d] = -vel[d]
                pos[d] = np.clip(pos[d], radius, limit - radius)
    direction = ("right" if vel[1] > 0 else "left") if abs(vel[1]) >= abs(vel[0]) else ("down" if vel[0] > 0 else "up")
    return out, f"a {name} {'square' if square else 'ball'} moves {direction}"
