"""The training loader: per-source shard streams mixed by the stage's weights at each global step.

Work is split into W DataLoader worker processes per rank, which the DataLoader asks in turn.
Steps are dealt to W lanes (lane = step mod W); a lane owns its slice of every source (consumer
rank * W + lane of world * W), and the worker asked i-th after a (re)start serves lane
(start + i) mod W, so batches come back in step order. Each batch carries its lane's stream state
after it, so `state_dict()` describes exactly the batches the trainer consumed and a resumed run
continues with the very next sample of every lane.
"""
from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from functools import partial
from itertools import count
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from wamforge.config.stages import StageConfig
from wamforge.data_pipeline.loader.collate import Collator
from wamforge.data_pipeline.loader.mixture import draw_sources, weights_at
from wamforge.data_pipeline.loader.shard_stream import ShardStream, as_json, remap
from wamforge.data_pipeline.video import VideoDecodeError

MAX_CONSECUTIVE_FAILURES = 16


MAX_AUTO_WORKERS = 8


def choose_workers(setting: int | str, ranks_here: int, threads_per_rank: int,
                   cores: int | None = None) -> tuple[int, bool]:
    """(workers per rank, whether they run at idle priority): `auto` takes the cores this machine's
    ranks leave free, shared among them, and at least one. Workers that share cores with the ranks
    (CPU ranks on every core) run at idle priority: they decode only while a core would otherwise
    idle (a rank waiting in an all-reduce, or for its next batch), so they never slow a rank that
    every other rank would then wait for."""
    cores = cores or len(os.sched_getaffinity(0))
    free = cores - ranks_here * threads_per_rank
    workers = min(MAX_AUTO_WORKERS, max(1, free // ranks_here)) if setting == "auto" else int(setting)
    oversubscribed = ranks_here * (threads_per_rank + workers) > cores
    return workers, oversubscribed and workers > 0


def run_when_idle() -> None:
    """This process runs only on cores nothing else wants (Linux's SCHED_IDLE; the lowest nice
    elsewhere)."""
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.nice(19)


class MixtureLoader:
    def __init__(self, data_dir: Path, stage: StageConfig, collator: Collator, rank: int, world: int,
                 batch_size: int, seed: int, workers: int = 1, prefetch: int = 2, accumulation: int = 1,
                 stall_timeout_s: float = 600.0, shuffle_buffer_bytes: int = 0, pin_memory: bool = False,
                 idle_workers: bool = False):
        manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
        names = sorted(set(stage.mixture.weights).union(*(p.weights for p in stage.mixture.curriculum)))
        self.shards, self.sidecars = {}, {}
        self.sizes = {name: manifest["sources"][name]["samples"] for name in names}
        # the encoder caches this model reads (its VAE's latents), merged into their shards' samples
        caches = {cid: c for cid, c in manifest.get("caches", {}).items() if cid in collator.cache_ids}
        for name in names:
            self.shards[name] = [Path(data_dir) / s for s in manifest["sources"][name]["shards"]]
            self.sidecars[name] = [[(Path(data_dir) / c["sidecars"][s], f"{c['output']}.{cid}.npy")
                                    for cid, c in caches.items() if s in c["sidecars"]]
                                   for s in manifest["sources"][name]["shards"]]
            if not self.shards[name]:
                raise ValueError(f"stage '{stage.name}' mixes source '{name}', which has no built samples; "
                                 f"see {Path(data_dir) / 'quarantine.jsonl'}")
        self.stage, self.collator, self.rank, self.world = stage, collator, rank, world
        self.batch_size, self.seed, self.accumulation = batch_size, seed, accumulation
        self.workers, self.prefetch, self.stall_timeout_s = workers, prefetch, stall_timeout_s
        self.buffer_bytes = shuffle_buffer_bytes  # per source and lane
        self.pin_memory = pin_memory  # batches in page-locked memory, for asynchronous copies to a GPU
        self.idle_workers = idle_workers  # workers that share the ranks' cores decode only on idle cycles
        self.step = 0
        self.lane_states: dict[int, dict] = {}

    def __iter__(self):
        # its own generator: seeding workers must not draw from the trainer's RNG, or a resumed
        # run's noise would drift from an uninterrupted one
        loader = DataLoader(_StepStream(self), batch_size=None, num_workers=self.workers,
                            prefetch_factor=self.prefetch if self.workers else None,
                            timeout=self.stall_timeout_s if self.workers else 0,  # the stall watchdog
                            generator=torch.Generator().manual_seed(self.seed),
                            worker_init_fn=partial(_init_worker, os.getpid(), self.idle_workers),
                            collate_fn=_as_is,  # batches are collated already; skip default_convert's walk
                            pin_memory=self.pin_memory)
        batches, start = iter(loader), self.step
        while True:
            try:
                batch, weights, lane, state = next(batches)
            except RuntimeError as err:
                if "timed out" not in str(err):
                    raise
                worker = (self.step - start) % self.workers  # the DataLoader asks its workers in turn
                raise RuntimeError(f"loader worker {worker} of rank {self.rank} produced no batch for step "
                                   f"{self.step} in {self.stall_timeout_s:.0f} s: it is stalled, most likely "
                                   f"on a hung read of one of its shards") from None
            self.lane_states[lane] = state
            self.step += 1
            yield batch, weights

    def realized(self) -> dict[str, float]:
        """Each source's share of the samples this rank consumed so far in the stage."""
        counts = Counter()
        for state in self.lane_states.values():
            counts.update(state["realized"])
        total = sum(counts.values()) or 1
        return {name: counts[name] / total for name in self.shards}

    def state_dict(self) -> dict:
        totals = {"realized": Counter(), "skipped": Counter()}
        for state in self.lane_states.values():
            for key in totals:
                totals[key].update(state[key])
        lanes = {str(lane): {**s, "streams": {name: as_json(stream) for name, stream in s["streams"].items()}}
                 for lane, s in self.lane_states.items()}
        return {"step": self.step, "lanes": lanes,
                "num_workers": max(1, self.workers), **{k: dict(v) for k, v in totals.items()}}

    def load_state_dict(self, states: list[dict]) -> None:
        """`states`: the loader state of every rank of the checkpoint, in rank order."""
        lanes = max(1, self.workers)
        self.step = states[0]["step"]
        if len(states) == self.world and states[0]["num_workers"] == lanes:
            self.lane_states = {int(lane): s for lane, s in states[self.rank]["lanes"].items()}
            return
        old_lanes = [state["lanes"].get(str(lane)) for state in states for lane in range(state["num_workers"])]
        self.lane_states = {}
        for lane in range(lanes):
            consumer = self.rank * lanes + lane
            streams = {name: remap([old and old["streams"].get(name) for old in old_lanes], len(shards),
                                   self._stream_seed(name), consumer, self.world * lanes)
                       for name, shards in self.shards.items()}
            first = consumer == 0  # the run's totals so far travel on one lane
            self.lane_states[lane] = {"streams": streams, **{
                key: dict(sum((Counter(old[key]) for old in old_lanes if old), Counter())) if first else {}
                for key in ("realized", "skipped")}}

    def _stream_seed(self, name: str) -> int:
        return self.seed + _stable_hash(name)


class _StepStream(IterableDataset):
    """What one worker (or the main process when workers == 0) produces."""

    def __init__(self, loader: MixtureLoader):
        self.loader = loader

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        loader = self.loader
        lane = (loader.step + worker) % workers
        consumer, consumers = loader.rank * workers + lane, loader.world * workers
        state = loader.lane_states.get(lane, {"streams": {}, "realized": {}, "skipped": {}})
        realized, skipped = Counter(state["realized"]), Counter(state["skipped"])

        def shard_error(shard: Path, err: Exception) -> None:
            skipped[f"shard {shard.name}: {type(err).__name__}"] += 1

        streams = {}
        for name, shards in loader.shards.items():
            streams[name] = ShardStream(shards, consumer, consumers, seed=loader._stream_seed(name),
                                        buffer_bytes=loader.buffer_bytes, on_error=shard_error,
                                        sidecars=loader.sidecars[name])
            if name in state["streams"]:
                streams[name].load_state_dict(state["streams"][name])
        iterators = {name: iter(stream) for name, stream in streams.items()}

        def next_item(name: str) -> dict:
            for failures in count(1):
                try:
                    return loader.collator.decode(next(iterators[name]))
                except (VideoDecodeError, ValueError, KeyError) as err:
                    skipped[f"{name}: {type(err).__name__}"] += 1
                    if failures >= MAX_CONSECUTIVE_FAILURES:
                        raise RuntimeError(f"source '{name}' failed {failures} samples in a row "
                                           f"(last: {err}); its shards look broken") from None

        for step in count(loader.step + worker, workers):
            # curricula run on optimizer steps; draws depend on (seed, step, rank) only
            weights = weights_at(loader.stage.mixture, step // loader.accumulation, loader.sizes)
            names = draw_sources(weights, loader.batch_size, loader.seed, step, loader.rank)
            batch = loader.collator.collate([next_item(n) for n in names])
            realized.update(names)
            state = {"streams": {n: s.state_dict() for n, s in streams.items()},
                     "realized": dict(realized), "skipped": dict(skipped)}
            yield batch, weights, lane, state


def _as_is(item):
    return item


def _stable_hash(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % 100_003


def _init_worker(trainer_pid: int, idle: bool, worker_id: int) -> None:
    if idle:
        run_when_idle()
    _outlive_stop_signals(trainer_pid, worker_id)


def _outlive_stop_signals(trainer_pid: int, worker_id: int) -> None:
    """A scheduler's stop signal (scancel, requeue, preemption) reaches every process of the job,
    loader workers included, and the death of a worker fails its trainer. The trainer checkpoints at
    the next step and then stops its workers itself, so a worker ignores SIGUSR1 and every SIGTERM
    but its trainer's: that one (a stalled worker's shutdown, Python's at exit) still ends it."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # no way to tell the sender (macOS): keep torch's handling
        return
    # blocked in every thread, SIGTERM waits for the one thread that asks who sent it
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_sigterm_from, args=(trainer_pid,), name="sigterm", daemon=True).start()


def _exit_on_sigterm_from(trainer_pid: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != trainer_pid:
        pass
    os._exit(0)  # success, as torch's own handler exits, so the trainer reports no dead worker
