"""Driver side of a build: plan shards, run them as a Ray Data pipeline, write the dataset card.

Outputs: `<out>/shards/<source>-NNNNN.tar`, `manifest.json`, `stats.json`,
`quarantine.jsonl`. A build whose config hash matches the manifest on disk is not redone.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from wamforge.config import ExperimentConfig, config_hash
from wamforge.config.paths import RunPaths
from wamforge.data_pipeline.build.shard_writer import write_shard
from wamforge.data_pipeline.schema import SCHEMA_VERSION
from wamforge.data_pipeline.sources import make_source
from wamforge.data_pipeline.stats import merge_partials
from wamforge.model_zoo.vae import make_vae

def build_dataset(cfg: ExperimentConfig, ray_address: str | None = None, force: bool = False,
                  console: Console | None = None) -> dict:
    console = console or Console()
    out = RunPaths.of(cfg).data
    build_hash = f"{config_hash(cfg.data)}-v{SCHEMA_VERSION}"  # a new sample layout rebuilds too
    if cfg.data.cache_latents:
        build_hash += f"-{make_vae(cfg.model.vae).cache_id}"
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and not force:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("build_config_hash") == build_hash:
            console.print(f"[green]data[/] {out} is up to date (build {build_hash}); use --force to rebuild")
            return manifest

    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    jobs, provenance = _plan(cfg, shard_dir)
    started = time.time()
    summaries = _run_on_ray(jobs, cfg.data.build_workers, ray_address)
    manifest = _write_outputs(cfg, out, build_hash, summaries, provenance, time.time() - started)
    _print_card(console, manifest)
    return manifest


def _plan(cfg: ExperimentConfig, shard_dir: Path) -> tuple[list[dict], dict]:
    jobs, provenance = [], {}
    for name, source_cfg in cfg.data.sources.items():
        source = make_source(name, source_cfg, cfg.data)
        if hasattr(source, "prepare"):
            source.prepare()
        specs = source.episode_specs()
        provenance[name] = {"format": source_cfg.format, "kind": source_cfg.kind,
                            "embodiment": source_cfg.embodiment, "description": source_cfg.description,
                            "episodes_listed": len(specs)}
        per_shard = cfg.data.episodes_per_shard
        for i in range(0, len(specs), per_shard):
            jobs.append({"source": name, "source_cfg": source_cfg.model_dump(mode="json"),
                         "data": cfg.data.model_dump(mode="json"), "vae": cfg.model.vae.model_dump(mode="json"),
                         "path": str(shard_dir / f"{name}-{i // per_shard:05d}.tar"),
                         "specs": specs[i:i + per_shard]})
    return jobs, provenance


def _run_on_ray(jobs: list[dict], workers: int, address: str | None) -> list[dict]:
    import ray

    os.environ.setdefault("MUJOCO_GL", "egl")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 logging_level="warning", configure_logging=True)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = sys.stdout.isatty()  # logs are not the place for redrawn bars
        ds = ray.data.from_items([{"job": json.dumps(j)} for j in jobs], override_num_blocks=len(jobs))
        rows = ds.map(write_shard, num_cpus=1, compute=ray.data.TaskPoolStrategy(size=workers)).take_all()
    finally:
        if started_here:  # a local cluster started for this build leaves the cores to training
            ray.shutdown()
    return sorted((json.loads(r["summary"]) for r in rows), key=lambda s: s["path"])


def _write_outputs(cfg, out: Path, build_hash: str, summaries: list[dict], provenance: dict,
                   seconds: float) -> dict:
    quarantine = [q for s in summaries for q in s["quarantine"]]
    with open(out / "quarantine.jsonl", "w") as f:
        for q in quarantine:
            f.write(json.dumps(q) + "\n")
    (out / "stats.json").write_text(json.dumps(merge_partials([s["stats"] for s in summaries]), indent=1))
    sources = {}
    for name, prov in provenance.items():
        mine = [s for s in summaries if s["source"] == name]
        sources[name] = {**prov, "episodes": sum(s["episodes"] for s in mine),
                         "samples": sum(s["samples"] for s in mine),
                         "quarantined": sum(len(s["quarantine"]) for s in mine),
                         "shards": [f"shards/{s['path']}" for s in mine if s["samples"]]}
    manifest = {
        "name": cfg.name, "schema_version": SCHEMA_VERSION, "build_config_hash": build_hash,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_seconds": round(seconds, 1),
        "clip_frames": cfg.data.clip_frames, "clip_stride": cfg.data.clip_stride,
        "frame_stride": cfg.data.frame_stride, "context_frames": cfg.data.context_frames,
        "action_frames": cfg.data.action_frames,
        "latents": make_vae(cfg.model.vae).cache_id if cfg.data.cache_latents else None,
        "resolution": list(cfg.data.resolution), "fps": cfg.data.fps,
        "shards": [{"source": s["source"], "path": f"shards/{s['path']}", "samples": s["samples"],
                    "episodes": s["episodes"], "bytes": s["bytes"]} for s in summaries],
        "sources": sources,
        "samples": sum(s["samples"] for s in summaries), "bytes": sum(s["bytes"] for s in summaries),
        "quarantined": len(quarantine),
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / "manifest.json")  # the manifest marks a complete build
    return manifest


def _print_card(console: Console, manifest: dict) -> None:
    table = Table(title=f"dataset {manifest['name']} ({manifest['build_seconds']} s)")
    for col in ("source", "kind", "embodiment", "episodes", "windows", "shards", "quarantined"):
        table.add_column(col)
    for name, s in manifest["sources"].items():
        table.add_row(name, s["kind"], s["embodiment"], str(s["episodes"]), str(s["samples"]),
                      str(len(s["shards"])), str(s["quarantined"]))
    console.print(table)
