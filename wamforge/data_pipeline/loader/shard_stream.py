"""One source's shards as an endless, resumable stream of raw samples for one consumer
(a loader worker of one rank; there are world * workers consumers in all).

Each epoch shuffles the shard list with (seed, epoch), identically for every consumer. With at
least as many shards as consumers, consumer c of N reads shards c, c+N, ...; otherwise every
consumer reads every shard and keeps samples c, c+N, ... . Either way consumers see disjoint
samples, and the state (epoch, shard position, sample offset) restarts the stream exactly.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import webdataset as wds


@dataclass
class StreamState:
    epoch: int = 0
    shard: int = 0  # position in this rank's shard list for the epoch
    offset: int = 0  # samples of that shard already consumed (after striding)


class ShardStream:
    def __init__(self, shards: list[Path], consumer: int, consumers: int, seed: int, on_error=None):
        if not shards:
            raise ValueError("a source with no shards cannot be streamed")
        self.shards, self.consumer, self.consumers, self.seed = list(shards), consumer, consumers, seed
        self.by_shard = len(self.shards) >= consumers
        self.state = StreamState()
        self.on_error = on_error or (lambda shard, err: None)

    def _epoch_shards(self, epoch: int) -> list[Path]:
        order = list(self.shards)
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order[self.consumer::self.consumers] if self.by_shard else order

    def __iter__(self):
        empty_epochs = 0
        while True:
            produced = False
            shards = self._epoch_shards(self.state.epoch)
            while self.state.shard < len(shards):
                for sample in itertools.islice(self._read(shards[self.state.shard]), self.state.offset, None):
                    self.state.offset += 1
                    produced = True
                    yield sample
                self.state.shard, self.state.offset = self.state.shard + 1, 0
            self.state = StreamState(epoch=self.state.epoch + 1)
            empty_epochs = 0 if produced else empty_epochs + 1
            if empty_epochs >= 2:
                raise RuntimeError(f"loader consumer {self.consumer} found no readable samples in {len(self.shards)} shards")

    def _read(self, shard: Path):
        stride = 1 if self.by_shard else self.consumers
        first = 0 if self.by_shard else self.consumer

        def handler(err):
            self.on_error(shard, err)
            return False  # stop this shard; the stream moves on to the next

        # this stream does its own rank split, so webdataset's node and worker splitters stay out
        samples = wds.WebDataset(str(shard), shardshuffle=False, handler=handler, empty_check=False,
                                 nodesplitter=_everything, workersplitter=_everything)
        return itertools.islice(samples, first, None, stride)

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = StreamState(**state)


def _everything(urls):
    return urls
