"""The standard distributed environment, whatever launched us (local, torchrun, SLURM, Ray)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def read_env() -> DistEnv:
    """RANK/WORLD_SIZE/LOCAL_RANK, with SLURM_* mapped onto them under srun."""
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29500")
    return DistEnv(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def init(dist: DistEnv) -> torch.device:
    """Join the process group: NCCL on GPUs, gloo on CPU."""
    import deepspeed

    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
        device, backend = torch.device("cuda", dist.local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False,
                                   rank=dist.rank, world_size=dist.world_size)
    return device


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def max_across_ranks(value: float, device: torch.device) -> float:
    if not torch.distributed.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.item()


def mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not torch.distributed.is_initialized() or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    t /= torch.distributed.get_world_size()
    return dict(zip(values, t.tolist()))
