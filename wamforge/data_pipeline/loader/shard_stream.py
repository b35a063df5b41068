"""One source's shards as an endless, resumable stream of raw samples for one consumer
(a loader worker of one rank; there are world * workers consumers in all).

A pass is a list of pieces; a piece is a strided run of one shard's samples, (shard, first, stride,
count), count None meaning "to the shard's end". Pass e shuffles the shard list with (seed, e),
identically for every consumer. With at least as many shards as consumers, consumer c of N owns
shards c, c+N, ... whole; otherwise it owns samples c, c+N, ... of every shard. Consumers therefore
see disjoint samples, and the cursor (pass, piece, offset) restarts the stream exactly.

A shuffle buffer, sized in bytes, decorrelates neighbouring windows; it is saved as the locations
(shard, index) of the samples it holds, never as their bytes, and refilled from the shards on resume.
The locations live in one int64 array: a worker hands its state over with every batch, and an array
crosses the process boundary a few dozen times faster than thousands of tuples.

When the number of consumers changes (other ranks or workers), `remap` gives every new consumer
an equal strided share of what the old ones had left in their current pass, including their
buffered samples; after that remainder every new consumer starts the next pass. No sample is
repeated within a pass and none is skipped.
"""
from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds

Piece = tuple[int, int, int, "int | None"]  # shard index, first sample, stride, count


class Locations:
    """The buffer's (shard, index) pairs, in an array that grows by doubling."""

    def __init__(self, pairs=()):
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        self.array, self.size = np.empty((max(64, 2 * len(pairs)), 2), np.int64), len(pairs)
        self.array[: self.size] = pairs

    def __len__(self) -> int:
        return self.size

    def append(self, location: tuple[int, int]) -> None:
        if self.size == len(self.array):
            self.array = np.concatenate([self.array, np.empty_like(self.array)])
        self.array[self.size] = location
        self.size += 1

    def swap_pop(self, index: int) -> None:
        """Remove entry `index`, the last one taking its place (as the samples list does)."""
        self.size -= 1
        self.array[index] = self.array[self.size]

    def snapshot(self) -> np.ndarray:
        return self.array[: self.size].copy()


@dataclass
class StreamState:
    epoch: int = 0  # the pass served after any remainder
    piece: int = 0
    offset: int = 0  # samples of that piece already read
    remainder: list | None = None  # pieces left over from a different consumer layout, served first
    buffer: list | np.ndarray = field(default_factory=list)  # [[shard, index], ...] read but not yet served
    rng: dict | None = None  # the buffer's numpy bit-generator state


class ShardStream:
    def __init__(self, shards: list[Path], consumer: int, consumers: int, seed: int,
                 buffer_bytes: int = 0, on_error=None, sidecars: list[list[tuple[Path, str]]] | None = None):
        if not shards:
            raise ValueError("a source with no shards cannot be streamed")
        self.shards, self.consumer, self.consumers, self.seed = list(shards), consumer, consumers, seed
        self.buffer_bytes = buffer_bytes
        # per shard: (sidecar tar, field) pairs whose samples are merged in, key by key (encoder caches)
        self.sidecars = sidecars or [[] for _ in self.shards]
        self.state = StreamState()
        self._buffer = self._rng = None  # live while iterating; state_dict() snapshots them
        self.on_error = on_error or (lambda shard, err: None)

    # -- what a pass holds -------------------------------------------------------------------
    def pass_pieces(self, epoch: int) -> list[Piece]:
        return epoch_pieces(len(self.shards), self.consumer, self.consumers, self.seed, epoch)

    def _pieces(self) -> list[Piece]:
        s = self.state
        return [tuple(p) for p in s.remainder] if s.remainder is not None else self.pass_pieces(s.epoch)

    # -- reading -----------------------------------------------------------------------------
    def _cursor(self):
        """(location, sample) in pass order from the saved cursor on, forever."""
        empty_passes = 0
        while True:
            produced = False
            pieces = self._pieces()
            while self.state.piece < len(pieces):
                shard, first, stride, count = pieces[self.state.piece]
                start = first + self.state.offset * stride
                stop = None if count is None else first + count * stride
                for index, sample in self._read(shard, start, stop, stride):
                    self.state.offset += 1
                    produced = True
                    yield (shard, index), sample
                self.state.piece, self.state.offset = self.state.piece + 1, 0
            if self.state.remainder is None:
                self.state.epoch += 1
            self.state.remainder, self.state.piece, self.state.offset = None, 0, 0
            empty_passes = 0 if produced else empty_passes + 1
            if empty_passes >= 2:
                raise RuntimeError(f"loader consumer {self.consumer} found no readable samples "
                                   f"in {len(self.shards)} shards")

    def __iter__(self):
        self._rng = np.random.default_rng([self.seed, self.consumer])
        if self.state.rng is not None:
            self._rng.bit_generator.state = self.state.rng
        # the locations and the samples side by side, entry i of one being entry i of the other
        locations = self._buffer = Locations(self.state.buffer)
        samples = self._fetch(self.state.buffer)
        held = sum(map(_nbytes, samples))

        def drain():  # serve while the buffer is over budget (budget 0: no shuffling, pass order)
            nonlocal held
            while samples and held >= self.buffer_bytes:
                pick = int(self._rng.integers(len(samples))) if len(samples) > 1 else 0
                samples[pick], samples[-1] = samples[-1], samples[pick]
                locations.swap_pop(pick)
                out = samples.pop()
                held -= _nbytes(out)
                yield out

        yield from drain()  # a state saved mid-drain resumes mid-drain, before reading on
        for location, sample in self._cursor():
            locations.append(location)
            samples.append(sample)
            held += _nbytes(sample)
            yield from drain()

    def _read(self, shard: int, start: int, stop: int | None, stride: int):
        path = self.shards[shard]

        def handler(err):
            self.on_error(path, err)
            return False  # stop this shard; the stream moves on to the next piece

        def tar(file: Path):
            # this stream does its own consumer split, so webdataset's node and worker splitters stay out
            samples = wds.WebDataset(str(file), shardshuffle=False, handler=handler, empty_check=False,
                                     nodesplitter=_everything, workersplitter=_everything)
            return itertools.islice(samples, start, stop, stride)

        indices = itertools.count(start, stride) if stop is None else range(start, stop, stride)
        samples = tar(path)
        if self.sidecars[shard]:
            samples = _merged(samples, [(tar(file), field) for file, field in self.sidecars[shard]])
        return zip(indices, samples)

    def _fetch(self, locations: list) -> list[dict]:
        """The buffered samples of a saved state, read back from their shards."""
        locations = [(int(shard), int(index)) for shard, index in locations]
        wanted = defaultdict(set)
        for shard, index in locations:
            wanted[shard].add(index)
        found = {}
        for shard, indices in wanted.items():
            for index, sample in self._read(shard, min(indices), max(indices) + 1, 1):
                if index in indices:
                    found[(shard, index)] = sample
        missing = [loc for loc in map(tuple, locations) if loc not in found]
        if missing:
            raise RuntimeError(f"{len(missing)} buffered samples of the saved loader state are no longer "
                               f"in their shards (first: {self.shards[missing[0][0]]} #{missing[0][1]}); "
                               f"the dataset changed since the checkpoint")
        return [found[tuple(loc)] for loc in locations]

    def state_dict(self) -> dict:
        """The cursor, plus the buffer's sample locations and RNG as of the last sample served."""
        if self._buffer is not None:
            self.state.buffer = self._buffer.snapshot()  # [n, 2]; `as_json` makes lists of it for a checkpoint
            self.state.rng = self._rng.bit_generator.state
        return dict(vars(self.state))  # not asdict(): its deep copy is costly on a large buffer, every batch

    def load_state_dict(self, state: dict) -> None:
        self.state, self._buffer = StreamState(**state), None


def as_json(state: dict) -> dict:
    """A stream state with its buffer as lists, as a checkpoint's JSON holds it."""
    buffer = state.get("buffer")
    return {**state, "buffer": buffer.tolist()} if isinstance(buffer, np.ndarray) else state


def epoch_pieces(num_shards: int, consumer: int, consumers: int, seed: int, epoch: int) -> list[Piece]:
    order = list(range(num_shards))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    if num_shards >= consumers:
        return [(shard, 0, 1, None) for shard in order[consumer::consumers]]
    return [(shard, consumer, consumers, None) for shard in order]


def remap(old_states: list[dict | None], num_shards: int, seed: int, consumer: int, consumers: int) -> dict:
    """The state of new consumer `consumer` of `consumers`, given every old consumer's state
    (None for one that never started) in old consumer order."""
    left: list[Piece] = []
    next_epoch = 0
    for old, raw in enumerate(old_states):
        state = StreamState(**raw) if raw else StreamState()
        if state.remainder is not None:
            pieces, next_epoch = [tuple(p) for p in state.remainder], max(next_epoch, state.epoch)
        else:
            pieces = epoch_pieces(num_shards, old, len(old_states), seed, state.epoch)
            next_epoch = max(next_epoch, state.epoch + 1)
        rest = pieces[state.piece:]
        if rest:
            rest[0] = _advance(rest[0], state.offset)
        left += [(int(shard), int(index), 1, 1) for shard, index in state.buffer]
        left += [p for p in rest if p[3] is None or p[3] > 0]
    share = [p for p in (_share(piece, consumer, consumers) for piece in left) if p[3] is None or p[3] > 0]
    return asdict(StreamState(epoch=next_epoch, remainder=[list(p) for p in share]))


def _advance(piece: Piece, done: int) -> Piece:
    shard, first, stride, count = piece
    return shard, first + done * stride, stride, None if count is None else count - done


def _share(piece: Piece, consumer: int, consumers: int) -> Piece:
    shard, first, stride, count = piece
    own = None if count is None else math.ceil(max(0, count - consumer) / consumers)
    return shard, first + consumer * stride, stride * consumers, own


def _merged(samples, sidecars):
    """Shard samples with their sidecar entries added; a sidecar out of step is a stale cache."""
    for sample, *extras in zip(samples, *(side for side, _ in sidecars)):
        for extra, (_, field) in zip(extras, sidecars):
            if extra["__key__"] != sample["__key__"]:
                raise RuntimeError(f"cache {field} holds {extra['__key__']} where its shard holds "
                                   f"{sample['__key__']}; rebuild the data")
            sample[field] = extra[field.split(".", 1)[0] + ".npy"]
        yield sample


def _nbytes(sample: dict) -> int:
    return sum(len(v) for v in sample.values() if isinstance(v, (bytes, bytearray)))


def _everything(urls):
    return urls
