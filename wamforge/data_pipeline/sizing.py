"""How many CPU cores of loader work a run needs per GPU: measured on this machine, not guessed.

A short probe times the loader's own work per sample on one core. On a built dataset it times the
training loader itself (one process, the first stage's mixture): read the window from its shard,
decode its video, or read its cached latents when the model's VAE has a cache, cut and normalize
its actions, collate. Without a built dataset it times the decode of a clip encoded as the build
encodes, at the experiment's resolution, clip length and views.

A GPU consumes `micro_batch / step_time` samples per second. Each loader core serves
`1 / seconds_per_sample`. The plan asks for the ratio times `HEADROOM`, the margin that keeps data
wait under 2% when decode times vary from sample to sample (prefetching absorbs the rest).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

HEADROOM = 1.25


@dataclass(frozen=True)
class DecodeProbe:
    seconds_per_sample: float  # on one core
    samples: int
    measured_on: str  # what was timed
    latents: bool  # the samples came as cached latents (no video decode)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LoaderNeed:
    samples_per_s_per_gpu: float
    cores_per_gpu: float  # with HEADROOM
    probe: DecodeProbe

    @property
    def workers_per_rank(self) -> int:
        return max(1, math.ceil(self.cores_per_gpu))

    def as_dict(self) -> dict:
        return {**asdict(self), "headroom": HEADROOM, "workers_per_rank": self.workers_per_rank}

    @property
    def message(self) -> str:
        p = self.probe
        what = "read its cached latents" if p.latents else "decode it"
        return (f"the loader takes {1000 * p.seconds_per_sample:.1f} ms of one core per sample to {what} "
                f"({p.measured_on}); a GPU reads {self.samples_per_s_per_gpu:.2f} samples/s, so it needs "
                f"{self.cores_per_gpu:.2f} loader cores (x{HEADROOM} headroom) for data wait under 2%")


def loader_need(probe: DecodeProbe, micro_batch: int, step_time_s: float) -> LoaderNeed:
    """Cores per GPU for one micro-batch per step of `step_time_s` seconds (per GPU)."""
    rate = micro_batch / step_time_s
    return LoaderNeed(rate, rate * probe.seconds_per_sample * HEADROOM, probe)


def probe_decode(cfg, samples: int = 16, built: bool = True) -> DecodeProbe:
    """The loader's seconds per sample on one core of this machine (see the module docstring); with
    built=False (the clip resized from what was built), the synthetic clip."""
    from wamforge.config.paths import RunPaths

    data = RunPaths.of(cfg).data
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: what a loader worker has
    try:
        if built and (data / "manifest.json").exists() and (data / "stats.json").exists():
            return _probe_loader(cfg, data, samples)
        return _probe_clip(cfg, samples)
    finally:
        torch.set_num_threads(threads)


def _probe_loader(cfg, data, samples: int) -> DecodeProbe:
    import json

    from wamforge.data_pipeline.embodiments import EmbodimentRegistry
    from wamforge.data_pipeline.loader import MixtureLoader
    from wamforge.data_pipeline.loader.collate import Collator

    registry = EmbodimentRegistry.from_yaml(cfg.embodiments)
    collator = Collator.for_experiment(cfg, json.loads((data / "stats.json").read_text()), registry)
    # in this process (no workers): one core's work per sample, without the hand-over's latency
    loader = MixtureLoader(data, cfg.stages[0], collator, rank=0, world=1, batch_size=1, seed=cfg.seed, workers=0,
                           shuffle_buffer_bytes=int(cfg.training.shuffle_buffer_mb * 2**20))
    batches = iter(loader)
    first, _ = next(batches)
    while min(loader.realized().values()) == 0:  # each source's first draw fills its shuffle buffer: once
        next(batches)
    start = time.perf_counter()
    for _ in range(samples):
        next(batches)
    elapsed = time.perf_counter() - start
    return DecodeProbe(elapsed / samples, samples, f"the training loader on {data}", first.latents is not None)


def _probe_clip(cfg, samples: int) -> DecodeProbe:
    from wamforge.data_pipeline.video import decode_clip, encode_mp4

    height, width = cfg.data.resolution
    views = max((len(s.cameras) for s in cfg.data.sources.values() if getattr(s, "cameras", None)), default=1)
    frames = cfg.data.clip_frames
    # smooth motion with a little grain: what camera footage costs a decoder (flat frames are
    # nearly free, pure noise far dearer than any real video)
    t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(views * width), indexing="ij")
    wave = 127 + 60 * np.sin((x + 4 * t) / 17.0) * np.cos((y - 3 * t) / 23.0)
    grain = np.random.default_rng(0).integers(-8, 9, wave.shape)
    clip = np.clip(wave + grain, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=-1)
    mp4 = encode_mp4(clip, cfg.data.fps)
    decode_clip(mp4, views)  # warm the decoder
    start = time.perf_counter()
    for _ in range(samples):
        decode_clip(mp4, views)
    elapsed = time.perf_counter() - start
    where = f"a synthetic {frames}-frame {height}x{width} clip x {views} view(s); build the data to time the loader"
    return DecodeProbe(elapsed / samples, samples, where, False)


def step_time_from_flops(train_flops_per_micro_batch: float, gpu_tflops: float, mfu: float) -> float:
    """Seconds per micro-batch on a GPU of `gpu_tflops` dense peak at `mfu` utilisation."""
    if gpu_tflops <= 0 or not 0 < mfu <= 1:
        raise ValueError(f"a GPU peak above 0 and an MFU in (0, 1] are needed, not {gpu_tflops} and {mfu}")
    return train_flops_per_micro_batch / (gpu_tflops * 1e12 * mfu)


def cores_to_order(need: LoaderNeed, gpus_per_node: int) -> int:
    """Loader cores a node of `gpus_per_node` GPUs should set aside, whole."""
    return math.ceil(need.cores_per_gpu * gpus_per_node)
