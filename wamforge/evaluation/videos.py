"""Videos an evaluation leaves for people to watch: episodes and predicted futures as mp4 files.

Simulator renders are small (64x64 is common), so frames are upscaled by an integer factor,
nearest neighbour, until they stand at least `min_height` px high: every rendered pixel stays
a crisp block instead of a blur. Encoding reuses the data pipeline's PyAV/libx264 encoder,
whose FFmpeg ships inside the PyAV wheel, so writing needs no system FFmpeg and the files decode
with torchcodec, decord and PyAV alike.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from wamforge.data_pipeline.video import encode_mp4, tile_views

OBSERVED = (40, 200, 60)  # border of the context frames: the model saw these
PREDICTED = (255, 150, 30)  # border of the predicted panel once the model is on its own
PLAIN = (90, 90, 90)  # border of the real panel past the context
SEPARATOR = (255, 255, 255)  # the thin line between the two panels
SEPARATOR_PX = 4
LABEL_BACKGROUND = (24, 24, 24)


def write_mp4(path, frames: np.ndarray, fps: float, crf: int = 23) -> Path:
    """uint8 [T, H, W, 3] -> an H.264 (yuv420p) mp4 at `path`; returns the path.

    yuv420p needs even sizes, so an odd height or width gets one more row or column, a copy of
    the last. crf 23 (x264's default) keeps evaluation videos small; fps is rounded to a whole
    number, as the pipeline's encoder does."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    _, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(frames, fps, crf=crf))
    return path


def _scale(height: int, min_height: int) -> int:
    return max(1, -(-min_height // height))  # ceil: at least min_height px high


def _upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    return frames.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else frames


def episode_video(frames: np.ndarray, min_height: int = 256) -> np.ndarray:
    """[T, V, H, W, 3] camera views -> [T, k*H, k*V*W, 3]: the views side by side (left to right
    in view order), upscaled by the smallest whole k that makes them min_height px high.
    A single view may come as [T, H, W, 3]."""
    frames = np.asarray(frames)
    if frames.ndim == 4:
        frames = frames[:, None]
    return _upscale(tile_views(frames), _scale(frames.shape[2], min_height))


def _geometry(height: int, min_height: int) -> tuple[int, int, int]:
    """(scale, border px, label bar px) of future_beside_real's layout, growing with the panel."""
    scale = _scale(height, min_height)
    return scale, max(2, height * scale // 64), max(12, height * scale // 12)


def panel_slices(height: int, width: int, min_height: int = 256):
    """Where future_beside_real puts the upscaled real and predicted frames in its output, as
    ((rows, cols) of real, (rows, cols) of predicted) slices: for reading the panels back."""
    scale, border, bar = _geometry(height, min_height)
    rows = slice(bar + border, bar + border + height * scale)
    panel_width = width * scale + 2 * border
    real = slice(border, border + width * scale)
    predicted = slice(real.start + panel_width + SEPARATOR_PX, real.stop + panel_width + SEPARATOR_PX)
    return (rows, real), (rows, predicted)


@lru_cache(maxsize=32)
def _label(text: str, height: int, width: int) -> np.ndarray:
    """uint8 [height, width, 3]: white text on a dark bar, rasterised once by matplotlib's Agg
    backend (no pyplot, so no global figure state and no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor=np.array(LABEL_BACKGROUND) / 255)
    canvas = FigureCanvasAgg(figure)
    figure.text(min(0.5, 6 / width), 0.5, text, color="white", va="center", fontsize=0.6 * height * 72 / dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:height, :width, :3].copy()


def future_beside_real(real: np.ndarray, predicted: np.ndarray, context: int, min_height: int = 256) -> np.ndarray:
    """uint8 [T, H, W, 3] real and predicted frames -> uint8 [T, H', W', 3], the real frames on
    the left and the prediction on the right, each upscaled (nearest) to min_height px, under
    a label bar ("real" / "predicted") and inside a coloured border, a white line between them.

    The first `context` frames are the ones the model observed: both panels' borders are green
    (OBSERVED) there; after it the predicted panel's border turns orange (PREDICTED), so a
    viewer sees where prediction starts. Labels and borders lie outside the panels, so the
    frames themselves are shown unchanged (see panel_slices)."""
    real, predicted = np.asarray(real), np.asarray(predicted)
    if real.shape != predicted.shape or real.ndim != 4 or real.shape[-1] != 3:
        raise ValueError(f"expected real and predicted frames [T, H, W, 3] alike, got {real.shape} and {predicted.shape}")
    t, h, w, _ = real.shape
    if not 0 <= context <= t:
        raise ValueError(f"context {context} is outside the {t} frames")
    scale, border, bar = _geometry(h, min_height)
    (rows, real_cols), (_, predicted_cols) = panel_slices(h, w, min_height)
    panel_width = w * scale + 2 * border
    right = panel_width + SEPARATOR_PX  # first column of the predicted panel

    out = np.empty((t, bar + h * scale + 2 * border, 2 * panel_width + SEPARATOR_PX, 3), np.uint8)
    out[:] = SEPARATOR
    observed = (np.arange(t) < context)[:, None, None, None]
    out[:, bar:, :panel_width] = np.where(observed, OBSERVED, PLAIN)
    out[:, bar:, right:] = np.where(observed, OBSERVED, PREDICTED)
    out[:, :bar, :panel_width] = _label("real", bar, panel_width)
    out[:, :bar, right:] = _label("predicted", bar, panel_width)
    out[:, rows, real_cols] = _upscale(real, scale)
    out[:, rows, predicted_cols] = _upscale(predicted, scale)
    return out
