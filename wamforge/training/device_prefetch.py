"""Batches on the training device one step ahead: on CUDA the next batch's copy runs on a side
stream while the current step computes (from pinned host memory it is asynchronous), so the step
never waits for a host-to-device copy. Elsewhere batches are moved inline."""
from __future__ import annotations

import torch


def on_device(batches, device: torch.device, dtype: torch.dtype | None = None):
    """(batch, weights) pairs from `batches`, each batch moved to `device` (floats cast to `dtype`)."""
    if device.type != "cuda":
        for batch, weights in batches:
            yield batch.to(device, dtype), weights
        return
    copies, compute = torch.cuda.Stream(device), torch.cuda.current_stream(device)
    batches = iter(batches)

    def ahead():
        batch, weights = next(batches)
        with torch.cuda.stream(copies):
            return batch.to(device, dtype), weights

    upcoming = ahead()
    while True:
        compute.wait_stream(copies)  # the copy of the batch handed out now has finished
        batch, weights = upcoming
        for tensor in batch.tensors():  # made on the side stream, used on this one: keep its memory
            tensor.record_stream(compute)
        upcoming = ahead()
        yield batch, weights
