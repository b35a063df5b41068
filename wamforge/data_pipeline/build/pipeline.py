"""Driver side of a build: plan tasks, run them as Ray tasks, write the dataset card.

Outputs: `<out>/shards/<source>-NNNNN-PPP.tar`, `manifest.json`, `stats.json`, `quarantine.jsonl`,
`build_report.json` and `data_card.png`. A build whose config hash matches the manifest on disk is
not redone; a build that was interrupted resumes: tasks whose `.done.json` carries the current
build hash are not run again, the others are rewritten from scratch.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from wamforge.config import ExperimentConfig, config_hash
from wamforge.config.paths import RunPaths
from wamforge.data_pipeline.build.cache import build_caches, cache_id
from wamforge.data_pipeline.build.shard_writer import write_shard
from wamforge.data_pipeline.schema import SCHEMA_VERSION
from wamforge.data_pipeline.sources import make_source
from wamforge.data_pipeline.stats import merge_partials


def build_dataset(cfg: ExperimentConfig, ray_address: str | None = None, force: bool = False,
                  console: Console | None = None) -> dict:
    console = console or Console()
    out = RunPaths.of(cfg).data
    # shards depend on the data config (not its caches) and the sample layout; the build as a whole
    # also on the encoders' ids, so a changed VAE or teacher re-encodes without re-cutting shards
    shards_hash = f"{config_hash(cfg.data.model_copy(update={'caches': [], 'teacher': None, 'cache_actors': 1}))}-v{SCHEMA_VERSION}"
    build_hash = shards_hash + "".join(f"-{cache_id(kind, cfg)}" for kind in cfg.data.caches)
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and not force:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("build_config_hash") == build_hash:
            console.print(f"[green]data[/] {out} is up to date (build {build_hash}); use --force to rebuild")
            return manifest

    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    jobs, provenance = _plan(cfg, shard_dir, shards_hash)
    done = {} if force else _finished(shard_dir, shards_hash)
    todo = [j for j in jobs if j["key"] not in done]
    if done:
        console.print(f"[dim]resuming the build: {len(jobs) - len(todo)} of {len(jobs)} tasks are already done[/]")
    started = time.time()
    summaries = [done[j["key"]] for j in jobs if j["key"] in done]
    summaries += _run_on_ray(todo, cfg.data.build_workers, ray_address, console) if todo else []
    summaries.sort(key=lambda s: s["key"])
    manifest = _write_outputs(cfg, out, build_hash, summaries, provenance, time.time() - started)
    if cfg.data.caches:
        console.print(f"[dim]encoding caches: {', '.join(cfg.data.caches)}[/]")
        manifest["caches"] = build_caches(cfg, out, manifest, ray_address)
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / "manifest.json")  # the manifest, written last, marks a complete build
    _print_card(console, manifest)
    return manifest


def _plan(cfg: ExperimentConfig, shard_dir: Path, build_hash: str) -> tuple[list[dict], dict]:
    jobs, provenance = [], {}
    for name, source_cfg in cfg.data.sources.items():
        source = make_source(name, source_cfg, cfg.data)
        if hasattr(source, "prepare"):
            source.prepare()
        specs = source.episode_specs()
        provenance[name] = {"format": source_cfg.format, "kind": source_cfg.kind,
                            "embodiment": source_cfg.embodiment, "description": source_cfg.description,
                            "episodes_listed": len(specs)}
        per_task = cfg.data.episodes_per_task
        for i in range(0, len(specs), per_task):
            jobs.append({"key": f"{name}-{i // per_task:05d}", "source": name, "build_hash": build_hash,
                         "source_cfg": source_cfg.model_dump(mode="json"), "out_dir": str(shard_dir),
                         "data": cfg.data.model_dump(mode="json"), "vae": cfg.model.vae.model_dump(mode="json"),
                         "specs": specs[i:i + per_task]})
    return jobs, provenance


def _finished(shard_dir: Path, build_hash: str) -> dict[str, dict]:
    """Summaries of the tasks a previous run of this same build completed, by task key."""
    done = {}
    for path in shard_dir.glob("*.done.json"):
        summary = json.loads(path.read_text())
        parts_whole = all((shard_dir / part["path"]).exists() for part in summary["parts"])
        if summary.get("build_hash") == build_hash and parts_whole:
            done[summary["key"]] = summary
    return done


def _run_on_ray(jobs: list[dict], workers: int, address: str | None, console: Console) -> list[dict]:
    """Every task a Ray task, one core each, on worker processes started once and reused; the driver
    only waits, so on a small machine its cores go to the tasks. Tasks go in planned order (sources
    as the config lists them): a source's tasks are alike, and the finish never waits on one long task
    started last."""
    import ray

    os.environ.setdefault("MUJOCO_GL", "egl")
    started_here = not ray.is_initialized()
    if started_here:
        # "local": a cluster of our own, never one some `ray start` on this machine left behind
        ray.init(address=address or "local", num_cpus=None if address else workers, include_dashboard=False,
                 logging_level="warning", configure_logging=True)
    summaries = []
    try:
        task = ray.remote(num_cpus=1)(write_shard)
        pending = [task.remote({"job": json.dumps(job)}) for job in jobs]
        with Progress(console=console, disable=not console.is_terminal and not sys.stdout.isatty()) as progress:
            bar = progress.add_task("building shards", total=len(jobs))
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                summaries.append(json.loads(ray.get(done[0])["summary"]))
                progress.advance(bar)
    finally:
        if started_here:  # a local cluster started for this build leaves the cores to training
            ray.shutdown()
    return summaries


def _write_outputs(cfg, out: Path, build_hash: str, summaries: list[dict], provenance: dict,
                   seconds: float) -> dict:
    quarantine = [q for s in summaries for q in s["quarantine"]]
    with open(out / "quarantine.jsonl", "w") as f:
        for q in quarantine:
            f.write(json.dumps(q) + "\n")
    stats = merge_partials([s["stats"] for s in summaries])
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    shards = [{"source": s["source"], "path": f"shards/{part['path']}", "samples": part["samples"],
               "bytes": part["bytes"]} for s in summaries for part in s["parts"]]
    sources = {}
    for name, prov in provenance.items():
        mine = [s for s in summaries if s["source"] == name]
        sources[name] = {**prov, "episodes": sum(s["episodes"] for s in mine),
                         "samples": sum(s["samples"] for s in mine),
                         "hours": round(sum(sum(s["episode_frames"]) / s["fps"] for s in mine) / 3600, 6),
                         "quarantined": sum(len(s["quarantine"]) for s in mine),
                         "shards": [sh["path"] for sh in shards if sh["source"] == name]}
    manifest = {
        "name": cfg.name, "schema_version": SCHEMA_VERSION, "build_config_hash": build_hash,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_seconds": round(seconds, 1),
        "clip_frames": cfg.data.clip_frames, "clip_stride": cfg.data.clip_stride,
        "frame_stride": cfg.data.frame_stride, "context_frames": cfg.data.context_frames,
        "action_frames": cfg.data.action_frames,
        "resolution": list(cfg.data.resolution), "fps": cfg.data.fps,
        "shards": shards, "sources": sources,
        "samples": sum(s["samples"] for s in summaries), "bytes": sum(sh["bytes"] for sh in shards),
        "quarantined": len(quarantine), "caches": {},
    }
    _write_report(out, manifest, summaries, stats, quarantine)
    return manifest


def _write_report(out: Path, manifest: dict, summaries: list[dict], stats: dict, quarantine: list[dict]) -> None:
    """build_report.json (clips, hours, per source and embodiment, rejects by reason) and data_card.png."""
    from wamforge.data_pipeline.build.data_card import plot_data_card

    by_embodiment: dict[str, Counter] = {}
    for name, source in manifest["sources"].items():
        row = by_embodiment.setdefault(source["embodiment"], Counter())
        row.update({"episodes": source["episodes"], "clips": source["samples"], "hours": source["hours"]})
    report = {"clips": manifest["samples"], "hours": round(sum(s["hours"] for s in manifest["sources"].values()), 6),
              "bytes": manifest["bytes"], "seconds": manifest["build_seconds"],
              "sources": {n: {k: s[k] for k in ("kind", "embodiment", "episodes", "samples", "hours", "quarantined")}
                          for n, s in manifest["sources"].items()},
              "embodiments": {e: dict(c) for e, c in by_embodiment.items()},
              "rejects_by_reason": dict(Counter(q["reason"].split(":")[0] for q in quarantine))}
    (out / "build_report.json").write_text(json.dumps(report, indent=1))
    lengths = {}
    for s in summaries:
        lengths.setdefault(s["source"], []).extend(s["episode_frames"])
    plot_data_card(out / "data_card.png", manifest["name"], lengths, stats)


def _print_card(console: Console, manifest: dict) -> None:
    table = Table(title=f"dataset {manifest['name']} ({manifest['build_seconds']} s)")
    for col in ("source", "kind", "embodiment", "episodes", "windows", "shards", "quarantined"):
        table.add_column(col)
    for name, s in manifest["sources"].items():
        table.add_row(name, s["kind"], s["embodiment"], str(s["episodes"]), str(s["samples"]),
                      str(len(s["shards"])), str(s["quarantined"]))
    console.print(table)
