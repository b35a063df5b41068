"""The one trainer loop: every stage, under every launcher, on DeepSpeed.

Each stage builds the model, takes the previous stage's weights (or its own latest checkpoint on
resume), streams its mixture and steps the engine; rank 0 logs and writes the stage's final weights.
"""
from __future__ import annotations

import gc
import hashlib
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from safetensors import safe_open
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from wamforge.config.paths import RunPaths
from wamforge.config.experiment import ExperimentConfig
from wamforge.config.stages import StageConfig
from wamforge.data_pipeline.decoders import decode_device
from wamforge.data_pipeline.loader import MixtureLoader
from wamforge.data_pipeline.loader.loader import choose_workers
from wamforge.data_pipeline.loader.collate import Collator
from wamforge.data_pipeline.embodiments import EmbodimentRegistry
from wamforge.model_zoo.build import build_model
from wamforge.training.parallel.lora import adapters_only, apply_lora, merge_lora
from wamforge.training.parallel.sequence_parallel import SequenceShard, sequence_groups
from wamforge.training import checkpoint
from wamforge.training.distributed import (CollectiveTimeout, DistEnv, Heartbeat, barrier, init, is_timeout,
                                           max_across_ranks, means_and_maxima, read_env)
from wamforge.training.device_prefetch import on_device
from wamforge.training.ema import EMA
from wamforge.training.engine import build_engine, partitioned_init, resolve_precision
from wamforge.training.faults import Faults
from wamforge.training.metrics import (JsonlLog, TensorBoardLog, device_peak_flops, peak_memory_mb,
                                       stage_summary)
from wamforge.training.plan import experiment_plan
from wamforge.training.preemption import Preempted, StopRequest
from wamforge.training.stages import load_initial_weights, loss_weights_at


class TrainingDiverged(RuntimeError):
    """A run of non-finite losses: training stopped at a checkpoint of the last good weights."""


def _zero_loss(engine) -> torch.Tensor:
    """A loss of exactly zero that reaches every trainable parameter (and none of the NaN activations)."""
    return torch.stack([p.sum() * 0 for p in engine.module.parameters() if p.requires_grad]).sum()


class RunExistsError(RuntimeError):
    pass


# what a rerun of the same config meets again: one sentence to the user, and no automatic retry
RUN_ERRORS = (RunExistsError, TrainingDiverged, FileNotFoundError, ValueError)


def train(cfg: ExperimentConfig, resume: bool = False, overwrite: bool = False,
          only: list[str] | None = None) -> list[dict]:
    """Train every stage in order, or only the stages named in `only` (one job per stage on a scheduler)."""
    unknown = set(only or []) - {s.name for s in cfg.stages}
    if unknown:
        raise ValueError(f"no stage named {sorted(unknown)}; the config has {[s.name for s in cfg.stages]}")
    dist = read_env()
    sp = cfg.training.sequence_parallel
    if dist.world_size % sp:
        raise ValueError(f"{dist.world_size} ranks do not split into sequence-parallel groups of {sp}")
    device = init(dist, cfg.training.collective_timeout_s)
    torch.set_num_threads(cfg.training.threads_per_rank)
    shard = SequenceShard(sequence_groups(dist.world_size, sp)) if sp > 1 else None
    paths = RunPaths.of(cfg)
    registry = EmbodimentRegistry.from_yaml(cfg.embodiments)
    stats = json.loads((paths.data / "stats.json").read_text())
    collator = Collator.for_experiment(cfg, stats, registry, decode_device(cfg.training.decode_device, device))
    console = Console(stderr=True)
    stop = StopRequest().install()  # SIGTERM / SIGUSR1: checkpoint at the next step, then exit
    summaries = []
    for index, stage in enumerate(cfg.stages):
        if only and stage.name not in only:
            continue
        runner = StageRunner(cfg, stage, index, paths, registry, collator, dist, device, console, stop, shard)
        summaries.append(runner.run(resume=resume, overwrite=overwrite))
    torch.distributed.destroy_process_group()  # leave no communicator threads behind at exit
    return summaries


class StageRunner:
    def __init__(self, cfg, stage: StageConfig, index: int, paths: RunPaths, registry, collator,
                 dist: DistEnv, device: torch.device, console: Console, stop: StopRequest | None = None,
                 shard: SequenceShard | None = None):
        self.cfg, self.stage, self.index, self.paths = cfg, stage, index, paths
        self.stop = stop or StopRequest()
        # a sequence-parallel group shares its samples: the loader and the noise see one data rank per group
        self.shard, group = shard, cfg.training.sequence_parallel
        self.data_rank, self.data_world = dist.rank // group, dist.world_size // group
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
        model = build_model(self.cfg, len(self.registry),
                            partitioned=partitioned_init(self.cfg.training, self.dist.world_size))
        report = load_initial_weights(model, self.stage, self.cfg, self.paths)
        if self.stage.lora:
            apply_lora(model, self.stage.lora)
        if self.shard is not None:
            model.trunk.shard_sequence(self.shard)
        engine = build_engine(model, self.stage, self.cfg.training, self.dist.world_size)
        on_cpu = self.collator.decode_device == "cpu"
        workers, idle = choose_workers(self.cfg.training.loader_workers, self.dist.local_world_size,
                                       self.cfg.training.threads_per_rank) if on_cpu else (0, False)
        loader = MixtureLoader(self.paths.data, self.stage, self.collator, self.data_rank,
                               self.data_world, self.cfg.training.micro_batch_per_rank,
                               seed=self.cfg.seed * 1000 + self.index, workers=workers, idle_workers=idle,
                               prefetch=self.cfg.training.prefetch_batches,
                               stall_timeout_s=self.cfg.training.loader_stall_timeout_s,
                               shuffle_buffer_bytes=int(self.cfg.training.shuffle_buffer_mb * 2**20),
                               pin_memory=self.device.type == "cuda" and on_cpu,
                               accumulation=self.cfg.training.grad_accumulation)

        self.ema = EMA(engine.module, self.cfg.training.ema_decay) if self.cfg.training.ema_decay else None
        start = 0
        latest = checkpoint.latest(self.ckpt_root) if resume else None
        if latest is not None:
            trainer_state, loader_states = checkpoint.restore(engine, latest, self.dist.rank,
                                                             self.dist.world_size)
            if trainer_state["stats_hash"] != self.collator.normalizer.stats_hash:
                raise ValueError(f"{latest} was trained with other data statistics than {self.paths.data}/stats.json "
                                 f"now holds; resume on the dataset it was trained on, or start the stage again")
            # the ranks of a sequence-parallel group read the same data: one state per group
            loader.load_state_dict(loader_states[:: trainer_state.get("sequence_parallel", 1)])
            if self.ema is not None:
                self.ema.load(latest / "ema.safetensors")
            start = trainer_state["step"]
            self._say(f"{self.stage.name}: resumed from {latest}")
            if trainer_state["world_size"] != self.dist.world_size:
                self._say(f"[yellow]{self.stage.name}: the checkpoint was written by {trainer_state['world_size']} "
                          f"ranks; on {self.dist.world_size} the loader re-deals the rest of the current pass "
                          f"and AdamW's moments restart[/]")
        else:
            # a distinct noise stream per data rank and stage (shared within a sequence-parallel group)
            torch.manual_seed(self.cfg.seed * 7919 + self.data_rank * 104729 + self.index)
            self._say(f"{self.stage.name}: {report}")
            if self.dist.is_main:
                self.dir.mkdir(parents=True, exist_ok=True)
                (self.dir / "init_report.json").write_text(json.dumps(report.as_dict(), indent=1))

        self._loop(engine, loader, start)
        self._save_final(engine, final)
        barrier()
        summary = {"stage": self.stage.name, **stage_summary(self.dir / "metrics.jsonl")}
        del engine, model, loader
        gc.collect()
        return summary

    def _save_final(self, engine, final: Path) -> None:
        """The stage's weights as one fp32 safetensors file (LoRA merged in; the adapters also on
        their own), and the EMA beside them; what export and the next stage read, without DeepSpeed."""
        full = _full_state_dict(engine)  # under ZeRO-3 a gather: every rank takes part
        averaged = self.ema.gather() if self.ema is not None else None
        if not self.dist.is_main:
            return
        lora = self.stage.lora
        merge = (lambda state: merge_lora(state, lora.alpha / lora.rank)) if lora else (lambda state: state)
        meta = {"stage": self.stage.name, "steps": self.stage.steps, "fingerprint": self.fingerprint()}
        checkpoint.save_weights(merge(full), final, metadata=meta)
        if lora:
            checkpoint.save_weights(adapters_only(full), final.with_name("lora.safetensors"),
                                    metadata={**meta, **lora.model_dump(mode="json")})
        if self.ema is not None:
            checkpoint.save_weights(merge(self.ema.state_dict(full, averaged)), final.with_name("ema.safetensors"),
                                    metadata={**meta, "ema_decay": self.ema.decay})

    def fingerprint(self) -> str:
        """What a stage's final weights depend on: the model, this stage, the embodiments (row order)."""
        # defaults left out: a setting added to the schema later does not make finished stages stale
        spec = {"model": self.cfg.model.model_dump(mode="json", exclude_defaults=True),
                "stage": self.stage.model_dump(mode="json", exclude_defaults=True),
                "embodiments": self.registry.to_dict(), "clip": [self.cfg.data.clip_frames, self.cfg.data.context_frames]}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def _loop(self, engine, loader: MixtureLoader, start: int) -> None:
        heartbeat = Heartbeat(self.dist.rank, self.dist.world_size, self.stage.name)
        try:
            self._steps(engine, loader, start, heartbeat)
        except RuntimeError as err:
            if not is_timeout(err):
                raise
            raise CollectiveTimeout(f"{self.stage.name}: " + heartbeat.explain(self.cfg.training.collective_timeout_s)) from err

    def _steps(self, engine, loader: MixtureLoader, start: int, heartbeat: Heartbeat) -> None:
        stage, training = self.stage, self.cfg.training
        accum = training.grad_accumulation
        logs = [JsonlLog(self.dir / "metrics.jsonl", start)] if self.dist.is_main else []
        if self.dist.is_main and training.tensorboard:
            logs.append(TensorBoardLog(self.dir / "tensorboard", start))
        trace = JsonlLog(self.dir / f"samples.rank{self.dist.rank}.jsonl", start)
        samples_per_step = training.micro_batch_per_rank * accum * self.data_world
        peak_flops = device_peak_flops(self.device)
        # model FLOPs for the MFU, counted where there is a peak to divide by (an accelerator)
        train_flops_per_sample = None if peak_flops is None else \
            experiment_plan(self.cfg).flops_train_step / training.micro_batch_per_rank
        sources = list(self.cfg.data.sources)
        faults = Faults.from_env()
        step, micro, window, waited = start, 0, StepWindow(sources), 0.0
        nonfinite, nonfinite_run, last_saved = 0, 0, None
        tic = time.perf_counter()
        batches = on_device(loader, self.device, self.dtype)
        with self._progress(start) as progress:
            while True:
                if micro % accum == 0:
                    faults.maybe_hang(self.dist.rank, step + 1)
                    heartbeat.beat(step + 1)
                asked = time.perf_counter()
                batch, weights = next(batches)
                waited += time.perf_counter() - asked  # the trainer idles while the loader catches up
                loss_weights = loss_weights_at(stage, step)
                out = engine(batch, stage.objective, loss_weights, stage.timesteps)
                if faults.nonfinite(self.dist.rank, step + 1):
                    out["loss"] = out["loss"] * float("nan")
                finite = max_across_ranks(float(not torch.isfinite(out["loss"]).item()), self.device) == 0
                if finite:
                    engine.backward(out["loss"])
                    engine.step()
                    if self.ema is not None and (micro + 1) % accum == 0:  # the optimizer stepped
                        self.ema.update()
                    window.add(out, batch, engine.module.video_tokens(batch), engine.module.capabilities.horizon)
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
                elapsed = toc - tic
                wait_pct = 100 * waited / elapsed
                # ranks consume equal batch counts, so the mean of their shares is the run's share
                realized = {f"realized/{n}": share for n, share in loader.realized().items()}
                values, maxima = means_and_maxima(
                    {**window.values(), "data_wait_pct": wait_pct, **realized},
                    {"wait": wait_pct, "memory": peak_memory_mb(self.device), "stop": float(self.stop.requested)},
                    self.device)
                realized = {k.split("/", 1)[1]: round(values.pop(k), 4) for k in realized}
                samples_per_s = samples_per_step / elapsed
                grad_norm = engine.get_global_grad_norm() if window.steps else None
                row = {"step": step, **window.summary(values, self.dist.world_size, self.cfg.training.sequence_parallel,
                                                      elapsed),
                       "data_wait_pct": values["data_wait_pct"],
                       "data_wait_pct_max": maxima["wait"],
                       "lr": engine.get_lr()[0], "grad_norm": None if grad_norm is None else float(grad_norm),
                       "samples_per_s": samples_per_s,
                       "peak_memory_mb": maxima["memory"],
                       "mfu": None if peak_flops is None else
                       samples_per_s * train_flops_per_sample / (self.dist.world_size * peak_flops),
                       "mixture": weights, "realized": realized, "skipped_nonfinite": nonfinite,
                       "loss_weights": loss_weights}
                window, waited, tic = StepWindow(sources), 0.0, toc
                for log in logs:
                    log.write(row)
                progress.update(progress.task_ids[0], completed=step, loss=row["loss"])
                stop = maxima["stop"] > 0
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
        for log in logs:
            log.close()

    def _checkpoint(self, engine, loader: MixtureLoader, step: int, weights: dict) -> Path:
        loader_state = loader.state_dict()
        extra = {}
        if self.ema is not None:  # under ZeRO-3 gathering the average is a collective: every rank now
            averaged = self.ema.gather()
            extra["ema.safetensors"] = lambda path: EMA.save(averaged, path)
        return checkpoint.save(engine, self.ckpt_root, step, loader_state,
                               {"stage": self.stage.name, "world_size": self.dist.world_size,
                                "sequence_parallel": self.cfg.training.sequence_parallel,
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


class StepWindow:
    """What the micro-batches of one optimizer step add up to on this rank: losses overall and per
    source, and tokens. Sums stay on the device (no host sync per micro-batch); `values` reads them
    once per step as rank-local means (made global by one all-reduce), and `summary` turns the
    global means into the metrics row."""

    LOSSES = ("loss", "video_loss", "action_loss")
    PER_SOURCE = ("n", "video", "action_sq", "action_n")

    def __init__(self, sources: list[str]):
        self.sources, self.steps = sources, 0
        self.sums: torch.Tensor | None = None  # [losses, video and action tokens, PER_SOURCE x sources]

    def add(self, out: dict, batch, video_tokens: int, horizon: int) -> None:
        self.steps += 1
        per_sample = out["per_sample"]
        video = per_sample["video_loss"]
        rows = torch.stack([torch.ones_like(video), video, per_sample["action_sq"], per_sample["action_count"]])
        by_source = torch.zeros(len(self.PER_SOURCE), len(self.sources), device=video.device)
        by_source.index_add_(1, batch.source_id.to(video.device), rows.float())
        tokens = torch.stack([video.new_tensor(float(len(video) * video_tokens)),
                              (per_sample["action_count"] > 0).sum() * float(horizon)])  # chunks the expert denoised
        sums = torch.cat([torch.stack([out[k].detach().float() for k in self.LOSSES]), tokens, by_source.flatten()])
        self.sums = sums if self.sums is None else self.sums + sums

    def values(self) -> dict[str, float]:
        keys = [*self.LOSSES, "video_tokens", "action_tokens"]
        keys += [f"{kind}/{n}" for kind in self.PER_SOURCE for n in self.sources]
        out = dict(zip(keys, self.sums.tolist() if self.sums is not None else [0.0] * len(keys)))
        for key in self.LOSSES:  # a per-micro-batch mean; NaN if every one was skipped
            out[key] = out[key] / self.steps if self.steps else float("nan")
        return out

    def summary(self, means: dict[str, float], world_size: int, sequence_parallel: int, elapsed: float) -> dict:
        # a sequence-parallel group counts each of its samples once per rank: divide it back out
        total = {k: v * world_size / sequence_parallel for k, v in means.items()}
        per_source = {}
        for name in self.sources:
            if total[f"n/{name}"]:
                per_source[name] = {"video_loss": total[f"video/{name}"] / total[f"n/{name}"],
                                    "action_loss": total[f"action_sq/{name}"] / max(total[f"action_n/{name}"], 1)}
        return {"loss": means["loss"], "video_loss": means["video_loss"], "action_loss": means["action_loss"],
                "source_loss": per_source, "video_tokens_per_s": total["video_tokens"] / elapsed,
                "action_tokens_per_s": total["action_tokens"] / elapsed}


def _full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The whole model in fp32 on every rank: the optimizer's fp32 master copy of each trained
    weight (bf16 training keeps only bf16 in the module), the module's own for frozen ones; ZeRO-3
    partitions are gathered. A collective: every rank calls it."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    zero3 = engine.zero_optimization_partition_weights()
    params = dict(engine.module.named_parameters())
    state = {}
    for key, value in engine.module.state_dict().items():
        param = params.get(key)
        if param is None:  # a buffer
            state[key] = value.detach().cpu()
            continue
        master = safe_get_full_fp32_param(param) if param.requires_grad else None
        if master is None:
            with deepspeed.zero.GatheredParameters([param], enabled=zero3):
                master = param.detach().float().clone()
        state[key] = master.cpu()
    return state


def main_from_file(config_path: Path, resume: bool, overwrite: bool, only: list[str] | None = None) -> None:
    """Entry point of each rank process, whoever started it (launchers/local.py, srun, accelerate, Ray)."""
    from wamforge.config import load_config
    from wamforge.launchers.accelerate import apply_accelerate_plugin

    cfg, changes = apply_accelerate_plugin(load_config(config_path))
    if changes and read_env().is_main:
        Console(stderr=True).print(f"accelerate launch: training settings {changes}")
    train(cfg, resume=resume, overwrite=overwrite, only=only)
