"""Parameters built under DeepSpeed ZeRO-3's `zero.Init` hold only their rank's partition (an
empty tensor in `.data`); code that re-initialises or loads one needs the whole tensor for a moment."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch


def is_partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def full_shape(param: torch.Tensor) -> tuple[int, ...]:
    return tuple(param.ds_shape) if is_partitioned(param) else tuple(param.shape)


@contextmanager
def whole(params: Iterable[torch.Tensor]):
    """Inside the block, `params` hold their whole tensors; what rank 0 writes there is what every
    rank keeps. Ordinary parameters pass through untouched."""
    partitioned = [p for p in params if is_partitioned(p)]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
        yield
