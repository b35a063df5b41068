"""Video decoding behind one interface, over three libraries: decord, torchcodec and PyAV.

`open_reader(source, backend)` takes mp4 bytes or a file path and returns a `Reader` with `fps`,
`len()` and `get(indices) -> uint8 [T, H, W, 3]`. All three decode H.264 with FFmpeg and convert
to RGB24, and tests check they return the same frames. `ReaderCache` keeps a bounded number of
open file readers, so reading many episodes out of one long file (LeRobot v3.0) opens it once.

The default backend is the fastest of those returning frames identical to PyAV's in
`benchmarks/bench_decode.py` (see the README); `WAMFORGE_VIDEO_BACKEND` overrides it.
"""
from __future__ import annotations

import io
import os
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np

BACKENDS = ("decord", "torchcodec", "pyav")
PREFERRED = ("torchcodec", "decord", "pyav")  # fastest first, as bench_decode.py measured them


class Reader:
    fps: float

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, indices) -> np.ndarray:
        raise NotImplementedError


class DecordReader(Reader):
    def __init__(self, source):
        import decord

        self.reader = decord.VideoReader(io.BytesIO(source) if isinstance(source, bytes) else str(source),
                                         num_threads=1)
        self.fps = float(self.reader.get_avg_fps())

    def __len__(self) -> int:
        return len(self.reader)

    def get(self, indices) -> np.ndarray:
        return self.reader.get_batch(list(indices)).asnumpy()


class TorchCodecReader(Reader):
    """On a CUDA device torchcodec decodes with NVDEC, and `frames` stay on the GPU."""

    def __init__(self, source, device: str = "cpu"):
        from torchcodec.decoders import VideoDecoder

        self.decoder = VideoDecoder(source if isinstance(source, bytes) else str(source), dimension_order="NHWC",
                                    num_ffmpeg_threads=1, seek_mode="exact", device=device)
        self.fps = float(self.decoder.metadata.average_fps or 0.0)

    def __len__(self) -> int:
        return len(self.decoder)

    def frames(self, indices):
        """uint8 [T, H, W, 3] as a tensor on the decoder's device."""
        return self.decoder.get_frames_at(indices=list(indices)).data

    def get(self, indices) -> np.ndarray:
        return self.frames(indices).cpu().numpy()


class PyAVReader(Reader):
    """PyAV decodes in order: the frames are decoded once, on the first read, and kept."""

    def __init__(self, source):
        import av

        self.container = av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))
        stream = self.container.streams.video[0]
        self.fps = float(stream.average_rate or 0.0)
        self.frames: np.ndarray | None = None

    def _all(self) -> np.ndarray:
        if self.frames is None:
            with self.container:
                self.frames = np.stack([f.to_ndarray(format="rgb24") for f in self.container.decode(video=0)])
        return self.frames

    def __len__(self) -> int:
        return len(self._all())

    def get(self, indices) -> np.ndarray:
        return self._all()[list(indices)]


READERS = {"decord": DecordReader, "torchcodec": TorchCodecReader, "pyav": PyAVReader}


MODULES = {"decord": "decord", "torchcodec": "torchcodec.decoders", "pyav": "av"}


@lru_cache(maxsize=None)
def usable(backend: str) -> bool:
    """Imported only when asked: each library costs its process memory once loaded."""
    try:
        __import__(MODULES[backend])
    except Exception:  # a missing wheel, or torchcodec without the FFmpeg libraries it loads
        return False
    return True


def available_backends() -> tuple[str, ...]:
    return tuple(b for b in BACKENDS if usable(b))


def default_backend() -> str:
    chosen = os.environ.get("WAMFORGE_VIDEO_BACKEND")
    if chosen:
        if chosen not in MODULES or not usable(chosen):
            raise ValueError(f"WAMFORGE_VIDEO_BACKEND={chosen} is not usable here; available: {available_backends()}")
        return chosen
    return next(b for b in PREFERRED if usable(b))


def open_reader(source: bytes | str | Path, backend: str | None = None) -> Reader:
    return READERS[backend or default_backend()](source)


def decode_device(setting: str, device) -> str:
    """Where the training loader decodes clips: `training.decode_device` checked against the rank's
    device (a torch.device); one sentence if the GPU decoder cannot run here."""
    if setting == "cpu":
        return "cpu"
    reason = gpu_decode_unavailable(str(device)) if device.type == "cuda" else f"the ranks run on {device.type}"
    if reason:
        raise ValueError(f"training.decode_device: cuda decodes clips with torchcodec's CUDA decoder on each "
                         f"rank's GPU, but {reason}; set it to cpu")
    return str(device)


@lru_cache(maxsize=None)
def gpu_decode_unavailable(device: str) -> str | None:
    """Why clips cannot be decoded on `device` (a CUDA device) here, or None where they can: a
    two-frame clip is decoded there, as the loader would."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    if not usable("torchcodec"):
        return "torchcodec is not installed, or cannot load FFmpeg"
    from wamforge.data_pipeline.video import encode_mp4

    try:
        TorchCodecReader(encode_mp4(np.zeros((2, 16, 16, 3), np.uint8), 10), device).frames(range(2))
    except Exception as err:  # a CPU-only torchcodec build, or no NVDEC on this GPU
        return f"torchcodec cannot decode on {device} ({type(err).__name__}: {err})"
    return None


class ReaderCache:
    """At most `capacity` open readers of video files, least recently used closed first."""

    def __init__(self, capacity: int = 8, backend: str | None = None):
        self.capacity, self.backend = capacity, backend
        self.readers: OrderedDict[tuple, Reader] = OrderedDict()

    def __call__(self, path: str | Path) -> Reader:
        stat = os.stat(path)
        key = (str(path), stat.st_mtime_ns, stat.st_size)  # a rewritten file is a new entry
        if key in self.readers:
            self.readers.move_to_end(key)
        else:
            self.readers[key] = open_reader(str(path), self.backend)
            while len(self.readers) > self.capacity:
                self.readers.popitem(last=False)
        return self.readers[key]
