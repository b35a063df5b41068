"""Ray launcher, the training side: Ray Train's TorchTrainer with one worker per rank, every worker
running the same trainer as the local and SLURM launchers. Ray places the workers (one GPU each
where the cluster has GPUs), joins them in one process group (NCCL on GPUs, gloo on CPUs), which
the trainer then uses as it is; when a worker dies Ray Train restarts the whole group, and every
rank resumes from its stage's `latest` checkpoint, so no step is lost or repeated. An error that a
restart would only meet again (a stale run, a diverged stage, a bad config) is not retried: the rank
that meets it records it in <run_dir>/ray_train_error.txt, the group ends, and the driver raises it.

This module is the driver of a training Ray Job (see ray_jobs.submit_training):
    python -m wamforge.launchers.ray_train CONFIG [--workers N] [--max-failures K] [--stage NAME]...
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from wamforge.config import ConfigError, load_config
from wamforge.config.paths import RunPaths

# what each worker writes first, so the job's logs say which process is which rank (the one to look
# at when a rank hangs); the pattern also keeps Ray from folding the ranks' lines into one
RANK_LINE = re.compile(r"wamforge rank (\d+) of (\d+): pid (\d+)")


def train_on_ray(config_path: str | Path, workers: int | None = None, max_failures: int = 3,
                 stages: list[str] | None = None) -> None:
    """Run the experiment's training on the Ray cluster this process is connected to (or finds:
    RAY_ADDRESS, which a Ray Job's driver has); raises if the run failed after its restarts."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    config_path = Path(config_path).absolute()
    cfg = load_config(config_path)
    if not ray.is_initialized():
        ray.init(address="auto", logging_level="warning")
    # the GPUs that count are the workers', wherever they land, not this driver's (often a CPU head node)
    gpu = ray.cluster_resources().get("GPU", 0) > 0
    workers = workers or cfg.training.world_size
    error_file = (RunPaths.of(cfg).root / "ray_train_error.txt").absolute()
    error_file.unlink(missing_ok=True)  # an earlier submission's
    run = {"config": str(config_path), "workdir": os.getcwd(), "stages": stages, "error_file": str(error_file)}
    trainer = TorchTrainer(
        train_rank, train_loop_config=run,
        # use_gpu adds one GPU per worker; the CPUs are the rank's threads
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": cfg.training.threads_per_rank}),
        # the trainer's own collective timeout, as its `init` would have set on a group of its own
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo",
                                 timeout_s=int(cfg.training.collective_timeout_s)),
        # Ray Train keeps its run state here (the trainer's checkpoints stay in the stage directories);
        # on several nodes it must be shared storage, as the run directory already is
        run_config=RunConfig(name="ray_train", storage_path=str(RunPaths.of(cfg).root.absolute()),
                             failure_config=FailureConfig(max_failures=max_failures)))
    trainer.fit()  # raises the workers' error once the restarts are used up
    if error_file.exists():
        raise RunError(error_file.read_text())


class RunError(RuntimeError):
    """A rank's error that a restart would meet again."""


def train_rank(run: dict) -> None:
    """One rank, inside a Ray Train worker: the trainer reads the standard distributed environment,
    and finds the process group Ray set up already initialized."""
    import ray.train
    import torch

    context = ray.train.get_context()
    os.chdir(run["workdir"])  # the config's relative paths mean what they mean to the submitter
    # TorchConfig sets these too; stated here because they are what the trainer reads
    os.environ.update(RANK=str(context.get_world_rank()), WORLD_SIZE=str(context.get_world_size()),
                      LOCAL_RANK=str(context.get_local_rank()), LOCAL_WORLD_SIZE=str(context.get_local_world_size()))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when DeepSpeed is first imported, below
    # written, not printed: Ray Train's patched print would put it in the logs twice
    sys.stderr.write(f"wamforge rank {context.get_world_rank()} of {context.get_world_size()}: pid {os.getpid()}\n")
    sys.stderr.flush()
    from wamforge.training.trainer import RUN_ERRORS, train

    error_file = Path(run["error_file"])
    if error_file.exists():  # a rank of the failed attempt met an error a restart meets again: end at once
        return
    try:
        # resume=True: a first attempt finds no checkpoint and starts; a restarted group continues
        train(load_config(run["config"]), resume=True, only=run["stages"])
    except RUN_ERRORS as err:
        error_file.parent.mkdir(parents=True, exist_ok=True)
        error_file.write_text(f"{type(err).__name__}: {err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wamforge-ray-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--workers", type=int, default=None, help="ranks (default: training.world_size)")
    parser.add_argument("--max-failures", type=int, default=3, help="group restarts after a worker dies")
    parser.add_argument("--stage", action="append", default=None, help="train only this stage (repeatable)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as err:  # one sentence in the job's logs, no traceback
        print(f"config error: {err}", file=sys.stderr)
        return 2
    try:
        train_on_ray(args.config, workers=args.workers, max_failures=args.max_failures, stages=args.stage)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from wamforge.training.metrics import stage_summary

    paths = RunPaths.of(cfg)
    for stage in cfg.stages:
        if not args.stage or stage.name in args.stage:
            s = stage_summary(paths.stage(stage.name) / "metrics.jsonl")
            print(f"{stage.name}: {s.get('steps')} steps, last loss {s.get('last_loss', float('nan')):.4f}; "
                  f"weights in {paths.final_weights(stage.name)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
