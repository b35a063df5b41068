"""mp4 encode (PyAV/libx264) and decode (through decoders.py: decord, torchcodec or PyAV).

Several camera views travel in one mp4, tiled left to right; the sample's json names them.
"""
from __future__ import annotations

import io

import av
import numpy as np
import torch

from wamforge.data_pipeline.decoders import ReaderCache, TorchCodecReader, default_backend, open_reader


class VideoDecodeError(ValueError):
    pass


def tile_views(frames: np.ndarray) -> np.ndarray:
    """[T, V, H, W, 3] -> [T, H, V*W, 3]"""
    t, v, h, w, c = frames.shape
    return frames.transpose(0, 2, 1, 3, 4).reshape(t, h, v * w, c)


def untile_views(frames: np.ndarray, views: int) -> np.ndarray:
    """[T, H, V*W, 3] -> [T, V, H, W, 3]"""
    t, h, vw, c = frames.shape
    return frames.reshape(t, h, views, vw // views, c).transpose(0, 2, 1, 3, 4)


def video_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, V, H, W, 3] -> float [T, V, 3, H, W] in [-1, 1]"""
    return pixels_to_unit(video_to_uint8(frames))


def decode_clip(data: bytes, views: int, device: str = "cpu") -> torch.Tensor:
    """A shard window's mp4 -> uint8 [T, V, 3, H, W] on `device`. On a CUDA device the clip is
    decoded there (NVDEC, through torchcodec): neither the CPU nor the host-to-device copy carries
    its pixels; a clip NVDEC refuses is decoded on the CPU, which names the fault if it is corrupt."""
    frames = None
    if device != "cpu":
        try:
            reader = TorchCodecReader(data, device)
            frames = reader.frames(range(len(reader)))
        except Exception:
            pass
    if frames is None:
        frames = torch.from_numpy(decode_mp4(data)).to(device)
    t, h, vw, c = frames.shape  # the views side by side: [T, H, V*W, 3]
    return frames.reshape(t, h, views, vw // views, c).permute(0, 2, 4, 1, 3)


def video_to_uint8(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, V, H, W, 3] -> uint8 [T, V, 3, H, W]: what loader workers send (a quarter of float32's bytes)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 1, 4, 2, 3)


def pixels_to_unit(video: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [-1, 1]; float input is taken as already scaled."""
    return video.float().div(127.5).sub(1.0) if video.dtype == torch.uint8 else video


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 18) -> bytes:
    """uint8 [T, H, W, 3] -> H.264 mp4 bytes (even sizes, as yuv420p requires).

    One encoder thread (builds run a task per core) and explicit timestamps make x264's output a
    function of its input, so shards come out byte-identical run after run. Below 128 px a side,
    x264's SIMD kernels were seen to vary between processes (64x64), so there its C kernels run:
    3x slower, and still a small share of a build at that size."""
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"video frames must have even height and width for H.264, got {h}x{w}")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "fastdecode", "threads": "1",
                          **({"x264-params": "asm=0"} if min(h, w) < 128 else {})}
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = i  # explicit timestamps: x264's rate control reads them
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return buf.getvalue()


def decode_mp4(data: bytes, backend: str | None = None) -> np.ndarray:
    """mp4 bytes -> uint8 [T, H, W, 3]; raises VideoDecodeError with the reason.

    The default decoder first (see decoders.py); PyAV where it refuses a stream it cannot copy out
    (decord, for frames narrower than its row alignment)."""
    try:
        reader = open_reader(data, backend)
        frames = reader.get(range(len(reader)))
    except Exception:
        try:
            reader = open_reader(data, "pyav")
            frames = reader.get(range(len(reader)))
        except Exception as err:  # decoders raise many types for corrupt input
            raise VideoDecodeError(f"video could not be decoded ({type(err).__name__}: {err})") from None
    if frames.ndim != 4 or len(frames) == 0:
        raise VideoDecodeError("video holds no frames")
    return frames


_FILE_READERS = ReaderCache(capacity=4)  # per process: files that pack many episodes are opened once


def read_video_file(path, start_s: float = 0.0, end_s: float | None = None) -> tuple[np.ndarray, float]:
    """A video file (a path, or a binary file object) -> (uint8 [T, H, W, 3], fps), optionally only
    the frames whose timestamps fall in [start_s, end_s) (one episode of a file that packs many).
    Files go through the cached default decoder; PyAV decodes file objects and is the fallback."""
    if not hasattr(path, "read") and default_backend() != "pyav":
        try:
            reader = _FILE_READERS(path)
            fps = reader.fps or 30.0
            first = round(start_s * fps)
            stop = len(reader) if end_s is None else min(len(reader), round(end_s * fps))
            if stop > first:
                return reader.get(range(first, stop)), fps
        except Exception:
            pass  # PyAV below gives the reason, if there is one
    return _read_with_pyav(path, start_s, end_s)


def _read_with_pyav(path, start_s: float, end_s: float | None) -> tuple[np.ndarray, float]:
    try:
        with av.open(path if hasattr(path, "read") else str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 0) or 30.0
            if start_s > 0:  # jump to the keyframe before start_s instead of decoding from the top
                container.seek(int(start_s / stream.time_base), stream=stream, backward=True)
            frames = []
            half_frame = 0.5 / fps  # timestamps are rounded; frame i sits at i / fps
            for frame in container.decode(stream):
                t = float(frame.pts * stream.time_base) if frame.pts is not None else len(frames) / fps
                if t < start_s - half_frame:
                    continue
                if end_s is not None and t >= end_s - half_frame:
                    break
                frames.append(frame.to_ndarray(format="rgb24"))
    except Exception as err:
        raise VideoDecodeError(f"video {path} could not be decoded ({type(err).__name__}: {err})") from None
    if not frames:
        raise VideoDecodeError(f"video {path} holds no frames" + (f" in [{start_s}, {end_s}) s" if end_s else ""))
    return np.stack(frames), fps


def resample_indices(length: int, src_fps: float, dst_fps: float) -> np.ndarray:
    """Indices of the frames nearest to a dst_fps time grid over `length` frames at src_fps."""
    if abs(src_fps - dst_fps) < 1e-6:
        return np.arange(length)
    times = np.arange(0, length / src_fps, 1.0 / dst_fps)
    return np.minimum(np.round(times * src_fps).astype(int), length - 1)


def resample_fps(frames: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
    """Pick the frames nearest to a dst_fps time grid."""
    return frames[resample_indices(len(frames), src_fps, dst_fps)]


def resize_center_crop(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, h, w, 3]: center crop to the target aspect, then area-resize."""
    import torch
    import torch.nn.functional as F

    h, w = size
    t, src_h, src_w, _ = frames.shape
    if (src_h, src_w) == (h, w):
        return frames
    scale = min(src_h / h, src_w / w)
    crop_h, crop_w = round(h * scale), round(w * scale)
    top, left = (src_h - crop_h) // 2, (src_w - crop_w) // 2
    x = torch.from_numpy(frames[:, top:top + crop_h, left:left + crop_w]).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(h, w), mode="area")
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
