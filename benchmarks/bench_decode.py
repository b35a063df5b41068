"""Frames/s of each video decoder on the same clips: random 16-frame reads.

For each backend (decord, torchcodec, PyAV) in one run, on the same H.264 files: `cold` opens
the file for every read (a loader visiting each clip once), `warm` keeps readers open in a
`ReaderCache` (many windows out of one long file). `window` decodes whole 9-frame shard windows
from bytes, the training loader's case. Every read is compared with PyAV's frames; a
backend that differs is reported and never made the default. Where torchcodec can decode on a
CUDA device, `gpu_window` times the windows decoded there against decoded on the CPU and copied.

    .venv/bin/python benchmarks/bench_decode.py [--videos 6 --frames 240 --size 128 --reads 60]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from wamforge.data_pipeline.decoders import (BACKENDS, ReaderCache, available_backends, gpu_decode_unavailable,  # noqa: E402
                                             open_reader)
from wamforge.data_pipeline.video import decode_clip, encode_mp4  # noqa: E402


def make_clips(folder: Path, videos: int, frames: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for v in range(videos):
        base = rng.integers(0, 255, (1, size // 8, size // 8, 3)).repeat(8, 1).repeat(8, 2)
        clip = np.repeat(base, frames, 0).astype(np.uint8)
        for i in range(frames):  # a textured background panning, and a bright square crossing it
            clip[i] = np.roll(clip[i], i, axis=1)
            x = (3 * i) % (size - 16)
            clip[i, size // 3:size // 3 + 16, x:x + 16] = 255
        paths.append(folder / f"clip{v}.mp4")
        paths[-1].write_bytes(encode_mp4(clip, 30))
    return paths


def reads(paths: list[Path], frames: int, count: int, length: int = 16):
    rng = np.random.default_rng(1)
    return [(paths[rng.integers(len(paths))], np.sort(rng.choice(frames, length, replace=False))) for _ in range(count)]


def measure(backend: str, plan, reference: dict, warm: bool) -> dict:
    cache = ReaderCache(capacity=len(reference), backend=backend)
    identical, n = True, 0
    start = time.perf_counter()
    for path, indices in plan:
        reader = cache(path) if warm else open_reader(path, backend)
        frames = reader.get(indices)
        identical &= bool(np.array_equal(frames, reference[path][indices]))
        n += len(indices)
    seconds = time.perf_counter() - start
    return {"frames_per_s": round(n / seconds, 1), "seconds": round(seconds, 2), "identical_to_pyav": identical}


def measure_windows(backend: str, windows: list[bytes], reference: list[np.ndarray]) -> dict:
    identical, n = True, 0
    start = time.perf_counter()
    for data, expected in zip(windows, reference):
        reader = open_reader(data, backend)
        frames = reader.get(range(len(reader)))
        identical &= bool(np.array_equal(frames, expected))
        n += len(frames)
    seconds = time.perf_counter() - start
    return {"frames_per_s": round(n / seconds, 1), "seconds": round(seconds, 2), "identical_to_pyav": identical}


def measure_gpu_windows(windows: list[bytes]) -> dict:
    """The loader's two ways onto a GPU, window by window: decoded on the CPU and copied over,
    against decoded on the GPU by NVDEC. NVDEC converts to RGB with its own kernels, so frames are
    compared by their largest pixel difference, not for identity."""
    device = "cuda"
    unavailable = gpu_decode_unavailable(device)
    if unavailable:
        return {"skipped": unavailable}
    res, largest = {}, 0
    for where in ("cpu", device):
        decode_clip(windows[0], 1, where)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for data in windows:
            clip = decode_clip(data, 1, where).to(device, non_blocking=True)
        torch.cuda.synchronize()
        res[f"{where}_frames_per_s"] = round(len(windows) * len(clip) / (time.perf_counter() - start), 1)
    for data in windows[:20]:
        diff = decode_clip(data, 1, device).int() - decode_clip(data, 1).to(device).int()
        largest = max(largest, int(diff.abs().max()))
    res["ratio_gpu_vs_cpu"] = round(res[f"{device}_frames_per_s"] / res["cpu_frames_per_s"], 2)
    res["largest_pixel_difference"] = largest
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--frames", type=int, default=240)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--reads", type=int, default=60)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_decode.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_clips(Path(tmp), args.videos, args.frames, args.size)
        reference = {path: open_reader(path, "pyav").get(range(args.frames)) for path in paths}
        plan = reads(paths, args.frames, args.reads)
        windows = [encode_mp4(reference[paths[i % len(paths)]][j:j + 9, :64, :64], 10)
                   for i, j in enumerate(range(0, 300 * 7, 7)) if j + 9 <= args.frames] * 20
        window_reference = [open_reader(w, "pyav").get(range(9)) for w in windows]
        res = {"videos": args.videos, "frames": args.frames, "size": args.size, "reads": args.reads,
               "frames_per_read": 16, "cpus": os.cpu_count(), "backends": {}}
        for backend in BACKENDS:
            if backend not in available_backends():
                res["backends"][backend] = {"skipped": "not installed"}
                continue
            res["backends"][backend] = {mode: measure(backend, plan, reference, mode == "warm")
                                        for mode in ("cold", "warm")}
            res["backends"][backend]["window"] = measure_windows(backend, windows, window_reference)
            print(backend, res["backends"][backend], file=sys.stderr)
        # whole frames (--size a side), so a GPU run can time the resolution it trains at
        res["gpu_window"] = measure_gpu_windows([encode_mp4(reference[paths[i % len(paths)]][j:j + 9], 10)
                                                 for i, j in enumerate(range(0, args.frames - 9, 9))])
        print("gpu_window", res["gpu_window"], file=sys.stderr)
    pyav = res["backends"]["pyav"]
    for backend, r in res["backends"].items():
        if "cold" in r:
            for mode in ("cold", "warm", "window"):
                r[mode]["ratio_vs_pyav"] = round(r[mode]["frames_per_s"] / pyav[mode]["frames_per_s"], 2)
    for mode in ("cold", "warm", "window"):
        eligible = {b: r[mode]["frames_per_s"] for b, r in res["backends"].items()
                    if mode in r and all(r[m]["identical_to_pyav"] for m in ("cold", "warm", "window"))}
        res[f"fastest_identical_{mode}"] = max(eligible, key=eligible.get)
    print(json.dumps(res, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
