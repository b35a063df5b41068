"""Checkpoints: `<stage>/checkpoints/step-N/` holds the DeepSpeed state, each rank's loader state
and RNG, and `trainer_state.json`; `latest` names the newest complete step, replaced atomically
only after everything above is on disk."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from wamforge.training.distributed import barrier
from wamforge.training.faults import Faults

LATEST = "latest"


def save(engine, root: Path, step: int, loader_state: dict, trainer_state: dict, rank: int,
         keep_last: int = 3, keep_every: int = 0, extra: dict | None = None) -> Path:
    """`extra`: {file name: writer(path)} that rank 0 adds to the step directory (e.g. the EMA)."""
    tag = f"step-{step}"
    engine.save_checkpoint(str(root), tag=tag, save_latest=False)
    step_dir = root / tag
    (step_dir / f"loader.rank{rank}.json").write_text(json.dumps(loader_state))
    save_file({"cpu": torch.get_rng_state(), **_cuda_rng()}, str(step_dir / f"rng.rank{rank}.safetensors"))
    barrier()
    Faults.from_env().maybe_crash_in_checkpoint(step)
    if rank == 0:
        for name, write in (extra or {}).items():
            write(step_dir / name)
        (step_dir / "trainer_state.json").write_text(json.dumps({**trainer_state, "step": step}, indent=1))
        _write_atomic(root / LATEST, tag)
        prune(root, keep_last, keep_every)
    barrier()
    return step_dir


def prune(root: Path, keep_last: int, keep_every: int = 0) -> None:
    """Delete step directories beyond the newest `keep_last` and the multiples of `keep_every`;
    what `latest` names is always kept."""
    steps = sorted((int(d.name.split("-")[1]), d) for d in root.glob("step-*") if d.is_dir())
    keep = {s for s, _ in steps[-keep_last:]} | {s for s, _ in steps if keep_every and s % keep_every == 0}
    current = (root / LATEST).read_text().strip()
    for step, directory in steps:
        if step not in keep and directory.name != current:
            shutil.rmtree(directory)


def latest(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.exists():
        return None
    step_dir = root / pointer.read_text().strip()
    return step_dir if (step_dir / "trainer_state.json").exists() else None


def restore(engine, step_dir: Path, rank: int, world_size: int) -> tuple[dict, list[dict]]:
    """Load the checkpoint into `engine`; return (trainer_state, the loader state of every rank that
    wrote it). On the same number of ranks everything is restored exactly: weights, optimizer,
    scheduler, RNG. On another number the weights, LR schedule and data position carry over, while
    ZeRO's optimizer partitions (cut for the old ranks) cannot: AdamW's moments restart from zero."""
    trainer_state = json.loads((step_dir / "trainer_state.json").read_text())
    same_world = trainer_state["world_size"] == world_size
    load_path, _ = engine.load_checkpoint(str(step_dir.parent), tag=step_dir.name, load_module_only=not same_world,
                                          load_optimizer_states=same_world, load_lr_scheduler_states=same_world)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {step_dir}")
    if same_world:
        rng = load_file(str(step_dir / f"rng.rank{rank}.safetensors"))
        torch.set_rng_state(rng["cpu"])
        if torch.cuda.is_available() and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"])
    else:
        engine.optimizer.refresh_fp32_params()  # the optimizer's master weights from the loaded module
        for _ in range(trainer_state["step"]):
            engine.lr_scheduler.step()
        torch.manual_seed(trainer_state["step"] * 1_000_003 + rank)  # a fresh noise stream per new rank
    loader_states = [json.loads((step_dir / f"loader.rank{r}.json").read_text())
                     for r in range(trainer_state["world_size"])]
    return trainer_state, loader_states


def save_weights(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)


def _cuda_rng() -> dict:
    return {"cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
