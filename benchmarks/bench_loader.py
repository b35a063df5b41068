"""Training-loader throughput against the raw decode limit and Megatron-Energon, on the same shards.

Three readers of one built dataset (default runs/quickstart/data), in samples/s:
  (a) raw_decode: one process reads every source's WebDataset shards in turn and decodes each
      sample's mp4 with wamforge.data_pipeline.video.decode_mp4 (the loader's decoder), nothing else.
      This is the ceiling for one core.
  (b) wamforge: MixtureLoader (Collator: decode + untile + normalize + pad + collate) mixing the
      sources by --weights with --workers processes; samples = batches x batch size, after a warm-up.
  (c) energon: Megatron-Energon get_train_dataset/get_loader over the same shards (symlinked into a
      temp dir and `energon prepare`d there, the dataset itself is untouched), a MetadatasetV2 blend
      with the same weights, the same Collator as cooker/batcher and the same worker count. Energon
      runs in a separate venv (--energon-python; torch is the main venv's, via a .pth) so the project
      venv is left alone; without one (c) is skipped and the JSON says why.
Peak RSS (psutil, parent + worker processes, RSS summed so shared pages count once per process) is
recorded for (b) and (c) after ~1k samples and at the end (~10k samples or --seconds, whichever first).

  .venv/bin/python benchmarks/bench_loader.py [--data DIR] [--energon-python /tmp/energon-venv/bin/python]

The Energon venv, made once: `python3 -m venv /tmp/energon-venv`, a .pth file in its site-packages
naming .venv's site-packages (so it reuses this torch), then `/tmp/energon-venv/bin/pip install
megatron-energon`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wamforge.config.stages import StageConfig  # noqa: E402
from wamforge.data_pipeline.loader import MixtureLoader  # noqa: E402
from wamforge.data_pipeline.loader.collate import Collator, Normalizer  # noqa: E402
from wamforge.data_pipeline.video import decode_mp4  # noqa: E402
from wamforge.data_pipeline.embodiments import EmbodimentRegistry  # noqa: E402


def make_collator(data: Path, sources: list[str]) -> Collator:
    registry = EmbodimentRegistry.from_yaml(ROOT / "configs/embodiments.yaml")
    stats = json.loads((data / "stats.json").read_text())
    return Collator(Normalizer(stats, registry), registry, {n: i for i, n in enumerate(sources)},
                    horizon=8, max_action_dim=8, max_proprio_dim=8)  # as configs/experiments/quickstart.yaml


def tree_rss() -> int:
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measure(batches, batch_size: int, args) -> dict:
    """Throughput of an endless batch iterator after a warm-up, with peak tree RSS along the way."""
    it = iter(batches)
    for _ in range(args.warmup):
        next(it)
    mix = Counter()
    n, peak, peak_1k, t0 = 0, tree_rss(), None, time.perf_counter()
    while n < args.samples and time.perf_counter() - t0 < args.seconds:
        mix.update(k.split("/")[0] for k in next(it).keys)
        n += batch_size
        if n % (4 * batch_size) == 0 or n >= args.samples:
            peak = max(peak, tree_rss())
        if peak_1k is None and n >= 1000:
            peak_1k = peak
    dt = time.perf_counter() - t0
    return {"samples": n, "seconds": round(dt, 2), "samples_per_s": round(n / dt, 1),
            "peak_rss_mb_after_1k": round(peak_1k / 2**20, 1) if peak_1k else None,
            f"peak_rss_mb_after_{n}": round(peak / 2**20, 1), "processes": 1 + len(psutil.Process().children(recursive=True)),
            "realized_mix": {k: round(v / n, 3) for k, v in sorted(mix.items())}}


def raw_decode(data: Path, shards: list[Path], args) -> dict:
    import webdataset as wds
    n, t0 = 0, time.perf_counter()
    while n < args.samples and time.perf_counter() - t0 < args.seconds:
        for sample in wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False):
            decode_mp4(sample["mp4"])
            n += 1
            if n >= args.samples or time.perf_counter() - t0 >= args.seconds:
                break
    dt = time.perf_counter() - t0
    return {"samples": n, "seconds": round(dt, 2), "samples_per_s": round(n / dt, 1)}


def wamforge_loader(data: Path, weights: dict, args, shuffle_mb: float = 0.0) -> dict:
    stage = StageConfig(name="bench", objective="joint", steps=10**9, mixture={"weights": weights, "curriculum": []})
    loader = MixtureLoader(data, stage, make_collator(data, sorted(weights)), rank=0, world=1,
                           batch_size=args.batch, seed=0, workers=args.workers,
                           shuffle_buffer_bytes=int(shuffle_mb * 2**20))
    return measure((b for b, _ in loader), args.batch, args)


def energon_loader(data: Path, weights: dict, args) -> dict:
    """Runs inside the Energon venv (--only-energon)."""
    from dataclasses import dataclass

    from megatron.energon import (Cooker, DefaultTaskEncoder, Sample, WorkerConfig, basic_sample_keys,
                                  get_loader, get_train_dataset, stateless)
    manifest = json.loads((data / "manifest.json").read_text())
    root = Path(tempfile.mkdtemp(prefix="bench_loader_energon_"))
    t0 = time.perf_counter()
    blend = []
    for name, w in weights.items():
        (root / name / "shards").mkdir(parents=True)
        for s in manifest["sources"][name]["shards"]:
            (root / name / s).symlink_to((data / s).resolve())
        subprocess.run([str(Path(sys.executable).parent / "energon"), "prepare", str(root / name), "--non-interactive",
                        "--split-parts", r"train:shards/.*\.tar", "--sample-type", "CrudeWebdataset",
                        "--num-workers", "1", "--no-progress"], check=True, capture_output=True)
        blend.append(f"      - weight: {w}\n        path: {root / name}\n")
    (root / "blend.yaml").write_text("__module__: megatron.energon\n__class__: MetadatasetV2\n"
                                     "splits:\n  train:\n    blend:\n" + "".join(blend))
    prepare_s = time.perf_counter() - t0
    collator = make_collator(data, sorted(weights))

    @dataclass
    class Item(Sample):
        item: dict

    class Encoder(DefaultTaskEncoder):
        decoder = None  # raw bytes in; the Collator decodes the mp4 exactly as the wamforge loader does
        cookers = [Cooker(stateless(lambda raw: Item(**basic_sample_keys(raw), item=collator.decode(raw))))]

        def batch(self, samples):
            return collator.collate([s.item for s in samples])

        def encode_batch(self, batch):
            return batch

    wc = WorkerConfig(rank=0, world_size=1, num_workers=args.workers)
    ds = get_train_dataset(root / "blend.yaml", worker_config=wc, batch_size=args.batch, shuffle_buffer_size=None,
                           max_samples_per_sequence=None, task_encoder=Encoder())
    out = measure(get_loader(ds), args.batch, args)
    shutil.rmtree(root)  # the symlinks and Energon's metadata
    import megatron.energon
    return {**out, "energon_version": getattr(megatron.energon, "__version__", None) or
            __import__("importlib.metadata").metadata.version("megatron-energon"), "prepare_seconds": round(prepare_s, 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / "runs/quickstart/data")
    p.add_argument("--weights", default="web_standin=0.7,sim=0.3", help="source=weight,... (quickstart stage 1)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5, help="batches")
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=120.0, help="cap per reader")
    p.add_argument("--energon-python", default="/tmp/energon-venv/bin/python")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_loader.json")
    p.add_argument("--only-energon", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = args.data.resolve()
    weights = {k: float(v) for k, v in (kv.split("=") for kv in args.weights.split(","))}
    if args.only_energon:
        print(json.dumps(energon_loader(data, weights, args)))
        return
    manifest = json.loads((data / "manifest.json").read_text())
    shards = [data / s for name in weights for s in manifest["sources"][name]["shards"]]
    res = {"data": str(data), "weights": weights, "batch": args.batch, "workers": args.workers,
           "cpus": os.cpu_count(), "loadavg_1m_before": os.getloadavg()[0], "torch": torch.__version__, "dataset_samples": sum(
               manifest["sources"][n]["samples"] for n in weights)}
    res["a_raw_decode"] = raw_decode(data, shards, args)
    print("a", res["a_raw_decode"], file=sys.stderr)
    # the training default first: an 8 MiB shuffle buffer per source and worker (Energon below reads unshuffled)
    res["b_wamforge_shuffled"] = wamforge_loader(data, weights, args, shuffle_mb=8.0)
    print("b shuffled (default)", res["b_wamforge_shuffled"], file=sys.stderr)
    res["b_wamforge"] = wamforge_loader(data, weights, args)
    print("b unshuffled", res["b_wamforge"], file=sys.stderr)
    if not Path(args.energon_python).exists():
        res["c_energon"] = {"skipped": f"no Energon venv at {args.energon_python} (create one: python -m venv, a .pth "
                                       "to this venv's site-packages, pip install megatron-energon)"}
    else:
        cmd = [args.energon_python, __file__, "--only-energon", *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        res["c_energon"] = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else
                            {"skipped": f"energon run failed: {proc.stderr.strip()[-800:]}"})
    print("c", res["c_energon"], file=sys.stderr)
    b, raw = res["b_wamforge"]["samples_per_s"], res["a_raw_decode"]["samples_per_s"]
    res["ratio_b_shuffled_over_a"] = round(res["b_wamforge_shuffled"]["samples_per_s"] / raw, 3)
    res["ratio_b_over_a"] = round(b / raw, 3)
    c = res["c_energon"].get("samples_per_s")
    res["ratio_b_over_c"] = round(b / c, 3) if c else None
    print(json.dumps(res, indent=1))
    print(f"default loader (shuffled) / raw decode: {res['ratio_b_shuffled_over_a']:.2f}x; unshuffled: "
          f"{res['ratio_b_over_a']:.2f}x" + (f"; unshuffled / Energon: {res['ratio_b_over_c']:.2f}x" if c else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
