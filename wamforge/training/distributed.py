"""The standard distributed environment, whatever launched us (local, torchrun, SLURM, Ray)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int = 1  # ranks on this machine, which share its cores with their loader workers

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
    world = int(env.get("WORLD_SIZE", 1))
    # torchrun and our launchers say how many ranks share the machine; srun's per-node count reads
    # "8" or "8(x2)"; without either, one machine holds them all
    local = env.get("LOCAL_WORLD_SIZE") or env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0] or str(world)
    return DistEnv(int(env.get("RANK", 0)), world, int(env.get("LOCAL_RANK", 0)), int(local))


def init(dist: DistEnv, timeout_s: float = 1800.0) -> torch.device:
    """Join the process group: NCCL on GPUs, gloo on CPU; a collective that waits `timeout_s`
    raises instead of hanging the job."""
    import deepspeed

    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
        device, backend = torch.device("cuda", dist.local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False,
                                   rank=dist.rank, world_size=dist.world_size, timeout=timedelta(seconds=timeout_s))
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


def means_and_maxima(means: dict[str, float], maxima: dict[str, float],
                     device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """The mean over the ranks of each of `means` and the maximum of each of `maxima`, in one
    collective: every rank gets every rank's values."""
    if not torch.distributed.is_initialized():
        return dict(means), dict(maxima)
    t = torch.tensor([*means.values(), *maxima.values()], dtype=torch.float64, device=device)
    gathered = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, t)
    table = torch.stack(gathered)
    n = len(means)
    return dict(zip(means, table[:, :n].mean(0).tolist())), dict(zip(maxima, table[:, n:].amax(0).tolist()))


class CollectiveTimeout(RuntimeError):
    """A collective waited past training.collective_timeout_s; the message names the ranks behind."""


def is_timeout(err: BaseException) -> bool:
    return "timed out" in str(err).lower() or type(err).__name__ == "DistBackendError"


class Heartbeat:
    """Each rank posts the step it has reached to the rendezvous store (reachable from every node);
    when a collective times out, the rank that waited reads them and names the ranks behind it."""

    def __init__(self, rank: int, world_size: int, stage: str):
        from torch.distributed.distributed_c10d import _get_default_store

        self.rank, self.world_size, self.prefix = rank, world_size, f"wamforge/{stage}/step/"
        self.store = _get_default_store() if torch.distributed.is_initialized() else None
        self.step = 0

    def beat(self, step: int) -> None:
        self.step = step
        if self.store is not None:
            self.store.set(f"{self.prefix}{self.rank}", str(step))

    def behind(self) -> dict[int, int | None]:
        """{rank: the last step it reached (None: never started)} for every rank behind this one."""
        if self.store is None:
            return {}
        steps = {}
        for rank in range(self.world_size):
            key = f"{self.prefix}{rank}"
            steps[rank] = int(self.store.get(key)) if self.store.check([key]) else None
        return {r: s for r, s in steps.items() if s is None or s < self.step}

    def explain(self, timeout_s: float) -> str:
        behind = self.behind()
        who = ", ".join(f"rank {r} (" + ("never started" if s is None else f"last reached step {s}") + ")"
                        for r, s in behind.items()) or "no rank is behind in steps (a hang inside the step)"
        return (f"rank {self.rank} waited {timeout_s:g} s in a collective at step {self.step}; behind it: {who}. "
                f"Their logs show why (a stuck data loader, a deadlock, a lost node); resume with --resume")
