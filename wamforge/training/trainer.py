"""The one trainer loop: every stage, under every launcher, on DeepSpeed.

Each stage builds the model, takes the previous stage's weights (or its own latest checkpoint on
resume), streams its mixture and steps the engine; rank 0 logs and writes the stage's final weights.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from pathlib import Path

import torch
from rich.console import Console
from safetensors import safe_open
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from wamforge.config.paths import RunPaths
from wamforge.config.schema import ExperimentConfig, StageConfig
from wamforge.data_pipeline.loader import MixtureLoader
from wamforge.data_pipeline.loader.collate import Collator, Normalizer
from wamforge.model_zoo.embodiments import EmbodimentRegistry
from wamforge.model_zoo.vae import make_vae
from wamforge.model_zoo.wam import WorldActionModel
from wamforge.training import checkpoint
from wamforge.training.distributed import DistEnv, barrier, init, max_across_ranks, mean_across_ranks, read_env
from wamforge.training.ema import EMA
from wamforge.training.engine import build_engine, resolve_precision
from wamforge.training.metrics import JsonlLog, stage_summary
from wamforge.training.preemption import Preempted, StopRequest
from wamforge.training.stages import load_initial_weights, loss_weights_at


class TrainingDiverged(RuntimeError):
    """A run of non-finite losses: training stopped at a checkpoint of the last good weights."""


def _zero_loss(engine) -> torch.Tensor:
    """A loss of exactly zero that reaches every trainable parameter (and none of the NaN activations)."""
    return torch.stack([p.sum() * 0 for p in engine.module.parameters() if p.requires_grad]).sum()


def _injected_nonfinite_steps() -> set[int]:
    """Fault injection for tests: WAMFORGE_INJECT_NONFINITE="3,5" makes rank 0's loss NaN at those
    steps; "4+" from step 4 on (encoded as {4, -1})."""
    spec = os.environ.get("WAMFORGE_INJECT_NONFINITE", "")
    steps = set()
    for part in filter(None, spec.split(",")):
        steps |= {int(part[:-1]), -1} if part.endswith("+") else {int(part)}
    return steps


class RunExistsError(RuntimeError):
    pass


def train(cfg: ExperimentConfig, resume: bool = False, overwrite: bool = False) -> list[dict]:
    dist = read_env()
    device = init(dist)
    torch.set_num_threads(cfg.training.threads_per_rank)
    paths = RunPaths.of(cfg)
    registry = EmbodimentRegistry.from_yaml(cfg.embodiments)
    stats = json.loads((paths.data / "stats.json").read_text())
    collator = Collator(Normalizer(stats, registry, cfg.model.normalization), registry,
                        source_ids={n: i for i, n in enumerate(cfg.data.sources)},
                        horizon=cfg.model.action_expert.horizon, max_action_dim=cfg.model.max_action_dim,
                        max_proprio_dim=cfg.model.max_proprio_dim, latents=make_vae(cfg.model.vae).cache_id)
    console = Console(stderr=True)
    stop = StopRequest().install()  # SIGTERM / SIGUSR1: checkpoint at the next step, then exit
    summaries = []
    for index, stage in enumerate(cfg.stages):
        runner = StageRunner(cfg, stage, index, paths, registry, collator, dist, device, console, stop)
        summaries.append(runner.run(resume=resume, overwrite=overwrite))
    torch.distributed.destroy_process_group()  # leave no communicator threads behind at exit
    return summaries


class StageRunner:
    def __init__(self, cfg, stage: StageConfig, index: int, paths: RunPaths, registry, collator,
                 dist: DistEnv, device: torch.device, console: Console, stop: StopRequest | None = None):
        self.cfg, self.stage, self.index, self.paths = cfg, stage, index, paths
        self.stop = stop or StopRequest()
        self.registry, self.collator, self.dist, self.device, self.console = registry, collator, dist, device, console
        self.dir = paths.stage(stage.name)
        self.ckpt_root = paths.checkpoints(stage.name)
        self.dtype = torch.bfloat16 if resolve_precision(cfg.training) == "bf16" else None

    def run(self, resume: bool, overwrite: bool) -> dict:
        final = self.paths.final_weights(self.stage.name)
        if resume and final.exists():
            with safe_open(str(final), "pt") as f:
                made_by = (f.metadata() or {}).get("fingerprint")
            if made_by != self.fingerprint():
                raise RunExistsError(f"{final} was trained with another model, stage or embodiment list than "
                                     f"this config describes; pass --overwrite to train the run again, or change its name")
            self._say(f"[dim]{self.stage.name}: already complete, skipping[/]")
            return {"stage": self.stage.name, **stage_summary(self.dir / "metrics.jsonl")}
        if not resume and not overwrite and self.ckpt_root.exists() and any(self.ckpt_root.iterdir()):
            raise RunExistsError(f"{self.ckpt_root} already holds checkpoints; pass --resume to continue "
                                 f"or --overwrite to start the stage again")

        torch.manual_seed(self.cfg.seed)  # identical initial weights on every rank
        model = WorldActionModel.for_experiment(self.cfg, len(self.registry))
        report = load_initial_weights(model, self.stage, self.cfg, self.paths)
        engine = build_engine(model, self.stage, self.cfg.training, self.dist.world_size)
        loader = MixtureLoader(self.paths.data, self.stage, self.collator, self.dist.rank,
                               self.dist.world_size, self.cfg.training.micro_batch_per_rank,
                               seed=self.cfg.seed * 1000 + self.index, workers=self.cfg.training.loader_workers,
                               prefetch=self.cfg.training.prefetch_batches,
                               stall_timeout_s=self.cfg.training.loader_stall_timeout_s,
                               shuffle_buffer_bytes=int(self.cfg.training.shuffle_buffer_mb * 2**20),
                               accumulation=self.cfg.training.grad_accumulation)

        if self.cfg.training.ema_decay and self.cfg.training.zero_stage == 3:
            raise ValueError("training.ema_decay needs zero_stage <= 2 (ZeRO-3 shards the weights it averages)")
        self.ema = EMA(engine.module, self.cfg.training.ema_decay) if self.cfg.training.ema_decay else None
        start = 0
        latest = checkpoint.latest(self.ckpt_root) if resume else None
        if latest is not None:
            trainer_state, loader_states = checkpoint.restore(engine, latest, self.dist.rank,
                                                             self.dist.world_size)
            if trainer_state["stats_hash"] != self.collator.normalizer.stats_hash:
                raise ValueError(f"{latest} was trained with other data statistics than {self.paths.data}/stats.json "
                                 f"now holds; resume on the dataset it was trained on, or start the stage again")
            loader.load_state_dict(loader_states)
            if self.ema is not None:
                self.ema.load(latest / "ema.safetensors")
            start = trainer_state["step"]
            self._say(f"{self.stage.name}: resumed from {latest}")
            if trainer_state["world_size"] != self.dist.world_size:
                self._say(f"[yellow]{self.stage.name}: the checkpoint was written by {trainer_state['world_size']} "
                          f"ranks; on {self.dist.world_size} the loader re-deals the rest of the current pass "
                          f"and AdamW's moments restart[/]")
        else:
            # a distinct noise stream per rank and stage
            torch.manual_seed(self.cfg.seed * 7919 + self.dist.rank * 104729 + self.index)
            if report:
                self._say(f"{self.stage.name}: {report}")

        self._loop(engine, loader, start)
        if self.dist.is_main:
            full = _full_state_dict(engine)
            checkpoint.save_weights(full, final, metadata={"stage": self.stage.name, "steps": self.stage.steps,
                                                           "fingerprint": self.fingerprint()})
            if self.ema is not None:
                checkpoint.save_weights(self.ema.state_dict(full), final.with_name("ema.safetensors"),
                                        metadata={"stage": self.stage.name, "ema_decay": self.ema.decay})
        barrier()
        summary = {"stage": self.stage.name, **stage_summary(self.dir / "metrics.jsonl")}
        del engine, model, loader
        gc.collect()
        return summary

    def fingerprint(self) -> str:
        """What a stage's final weights depend on: the model, this stage, the embodiments (row order)."""
        spec = {"model": self.cfg.model.model_dump(mode="json"), "stage": self.stage.model_dump(mode="json"),
                "embodiments": self.registry.to_dict(), "clip": [self.cfg.data.clip_frames, self.cfg.data.context_frames]}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def _loop(self, engine, loader: MixtureLoader, start: int) -> None:
        stage, training = self.stage, self.cfg.training
        accum = training.grad_accumulation
        metrics = JsonlLog(self.dir / "metrics.jsonl", start) if self.dist.is_main else None
        trace = JsonlLog(self.dir / f"samples.rank{self.dist.rank}.jsonl", start)
        samples_per_step = training.micro_batch_per_rank * accum * self.dist.world_size
        step, micro, window, waited = start, 0, [], 0.0
        nonfinite, nonfinite_run, last_saved = 0, 0, None
        inject = _injected_nonfinite_steps() if self.dist.is_main else set()
        tic = time.perf_counter()
        batches = iter(loader)
        with self._progress(start) as progress:
            while True:
                asked = time.perf_counter()
                batch, weights = next(batches)
                waited += time.perf_counter() - asked  # the trainer idles while the loader catches up
                loss_weights = loss_weights_at(stage, step)
                out = engine(batch.to(self.device, self.dtype), stage.objective, loss_weights, stage.timesteps)
                if step + 1 in inject or -1 in inject and step + 1 >= min(inject - {-1}):
                    out["loss"] = out["loss"] * float("nan")
                finite = max_across_ranks(float(not torch.isfinite(out["loss"]).item()), self.device) == 0
                if finite:
                    engine.backward(out["loss"])
                    engine.step()
                    if self.ema is not None and (micro + 1) % accum == 0:  # the optimizer stepped
                        self.ema.update()
                    window.append({k: float(v.detach()) for k, v in out.items()})
                    nonfinite_run = 0
                else:  # skipped on every rank alike: no update, and the LR schedule does not advance
                    nonfinite, nonfinite_run = nonfinite + 1, nonfinite_run + 1
                    if accum > 1:  # DeepSpeed's accumulation boundary still needs this micro-step
                        engine.backward(_zero_loss(engine))
                        engine.step()
                trace.write({"step": step + 1, "micro": micro, "keys": batch.keys})
                micro += 1
                if micro % accum:
                    continue
                step += 1
                toc = time.perf_counter()
                wait_pct = 100 * waited / (toc - tic)
                # ranks consume equal batch counts, so the mean of their shares is the run's share
                realized = {f"realized/{n}": share for n, share in loader.realized().items()}
                losses = {k: sum(w[k] for w in window) / len(window) for k in window[0]} if window else {
                    "loss": float("nan"), "video_loss": float("nan"), "action_loss": float("nan")}
                values = mean_across_ranks({**losses, "data_wait_pct": wait_pct, **realized}, self.device)
                realized = {k.split("/", 1)[1]: round(values.pop(k), 4) for k in realized}
                row = {"step": step, **values, "data_wait_pct_max": max_across_ranks(wait_pct, self.device),
                       "lr": engine.get_lr()[0], "samples_per_s": samples_per_step / (toc - tic),
                       "mixture": weights, "realized": realized, "skipped_nonfinite": nonfinite,
                       "loss_weights": loss_weights}
                window, waited, tic = [], 0.0, toc
                if metrics is not None:
                    metrics.write(row)
                    progress.update(progress.task_ids[0], completed=step, loss=row["loss"])
                stop = max_across_ranks(float(self.stop.requested), self.device) > 0
                if step % training.checkpoint_every == 0 or step == stage.steps or stop or \
                        nonfinite_run >= training.max_nonfinite_steps:
                    last_saved = self._checkpoint(engine, loader, step, weights)
                if nonfinite_run >= training.max_nonfinite_steps:
                    raise TrainingDiverged(
                        f"{stage.name}: {nonfinite_run} steps in a row had a non-finite loss, up to step {step}; "
                        f"no update was made in them, so {last_saved} holds the last good weights. Resume from "
                        f"it with a lower learning rate, or find the batches in samples.rank*.jsonl")
                if stop:
                    raise Preempted(f"{stage.name}: stopped at step {step} on {self.stop.signal or 'a peer rank'}; "
                                    f"checkpoint {last_saved}")
                if step >= stage.steps:
                    break
        batches.close()  # stops the loader's worker processes now, not at garbage collection
        trace.close()
        if metrics is not None:
            metrics.close()

    def _checkpoint(self, engine, loader: MixtureLoader, step: int, weights: dict) -> Path:
        loader_state = loader.state_dict()
        extra = {"ema.safetensors": self.ema.save} if self.ema is not None else {}
        return checkpoint.save(engine, self.ckpt_root, step, loader_state,
                               {"stage": self.stage.name, "world_size": self.dist.world_size,
                                "stats_hash": self.collator.normalizer.stats_hash,
                                "config": self.cfg.model_dump(mode="json"),
                                "mixture": weights, "skipped": loader_state["skipped"]},
                               self.dist.rank, keep_last=self.cfg.training.keep_last,
                               keep_every=self.cfg.training.keep_every, extra=extra)

    def _progress(self, start: int) -> Progress:
        progress = Progress(TextColumn(f"[bold]{self.stage.name}[/]"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                            console=self.console, disable=not self.dist.is_main)
        progress.add_task(self.stage.name, total=self.stage.steps, completed=start, loss=float("nan"))
        return progress

    def _say(self, text: str) -> None:
        if self.dist.is_main:
            self.console.print(text)


def _full_state_dict(engine) -> dict[str, torch.Tensor]:
    if engine.zero_optimization_partition_weights():  # ZeRO-3 shards parameters: gather them
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict()


def main_from_file(config_path: Path, resume: bool, overwrite: bool) -> None:
    """Entry point of each rank process (see launchers/local.py)."""
    from wamforge.config import load_config

    train(load_config(config_path), resume=resume, overwrite=overwrite)
