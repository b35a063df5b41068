"""The training loader: per-source shard streams mixed by the stage's weights at each global step.

Batches are produced ahead on a background thread (decode releases the GIL), each carrying the
loader state *after* it, so `state_dict()` always describes exactly the batches the trainer has
consumed and a resumed run continues with the very next sample.
"""
from __future__ import annotations

import json
import queue
import threading
from collections import Counter
from pathlib import Path

from wamforge.config.schema import StageConfig
from wamforge.data_pipeline.loader.collate import Collator
from wamforge.data_pipeline.loader.mixture import draw_sources, weights_at
from wamforge.data_pipeline.loader.shard_stream import ShardStream
from wamforge.data_pipeline.video import VideoDecodeError

MAX_CONSECUTIVE_FAILURES = 16


class MixtureLoader:
    def __init__(self, data_dir: Path, stage: StageConfig, collator: Collator, rank: int, world: int,
                 batch_size: int, seed: int, prefetch: int = 2, accumulation: int = 1):
        manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
        self.stage, self.collator, self.rank, self.batch_size = stage, collator, rank, batch_size
        self.seed, self.prefetch, self.accumulation = seed, prefetch, accumulation
        self.step = 0
        self.skipped: Counter = Counter()
        self.realized: Counter = Counter()
        names = set(stage.mixture.weights).union(*(p.weights for p in stage.mixture.curriculum))
        self.streams = {}
        for name in sorted(names):
            shards = [Path(data_dir) / s for s in manifest["sources"][name]["shards"]]
            if not shards:
                raise ValueError(f"stage '{stage.name}' mixes source '{name}', which has no built samples; "
                                 f"see {Path(data_dir) / 'quarantine.jsonl'}")
            self.streams[name] = ShardStream(shards, rank, world, seed=seed + _stable_hash(name),
                                             on_error=self._shard_error)
        self._iters = {}
        self._thread = None

    # ------------------------------------------------------------------ production
    def _next_item(self, name: str) -> dict:
        failures = 0
        while True:
            raw = next(self._iters[name])
            try:
                return self.collator.decode(raw)
            except (VideoDecodeError, ValueError, KeyError) as err:
                self.skipped[f"{name}: {type(err).__name__}"] += 1
                failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(f"source '{name}' failed {failures} samples in a row "
                                       f"(last: {err}); its shards look broken") from None

    def _make_batch(self, step: int):
        weights = weights_at(self.stage.mixture, step // self.accumulation)  # curricula run on optimizer steps
        names = draw_sources(weights, self.batch_size, self.seed, step, self.rank)
        items = [self._next_item(n) for n in names]
        self.realized.update(names)
        state = {"step": step + 1, "streams": {n: s.state_dict() for n, s in self.streams.items()},
                 "realized": dict(self.realized), "skipped": dict(self.skipped)}
        return self.collator.collate(items), state, weights

    def _produce(self, out: queue.Queue, stop: threading.Event) -> None:
        step = self.step
        try:
            while not stop.is_set():
                item = self._make_batch(step)
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                step += 1
        except BaseException as err:  # surface producer errors in the trainer's thread
            out.put(err)

    def __iter__(self):
        self._iters = {n: iter(s) for n, s in self.streams.items()}
        if self.prefetch == 0:
            while True:
                batch, state, weights = self._make_batch(self.step)
                self.step = state["step"]
                yield batch, weights
        buffer: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(buffer, stop), daemon=True)
        self._thread.start()
        try:
            while True:
                item = buffer.get()
                if isinstance(item, BaseException):
                    raise item
                batch, state, weights = item
                self._consumed = state
                self.step = state["step"]
                yield batch, weights
        finally:
            stop.set()
            self._thread.join(timeout=30)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        if getattr(self, "_consumed", None) is not None:
            return self._consumed
        return {"step": self.step, "streams": {n: s.state_dict() for n, s in self.streams.items()},
                "realized": dict(self.realized), "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        for name, s in state["streams"].items():
            if name in self.streams:
                self.streams[name].load_state_dict(s)
        self.realized, self.skipped = Counter(state.get("realized", {})), Counter(state.get("skipped", {}))
        self._consumed = None

    def _shard_error(self, shard: Path, err: Exception) -> None:
        self.skipped[f"shard {shard.name}: {type(err).__name__}"] += 1


def _stable_hash(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % 100_003
