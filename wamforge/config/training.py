"""`training`: ranks, DeepSpeed, precision, checkpoints and the loader's resources; `launch`."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from wamforge.config.base import Strict


class TrainingConfig(Strict):
    world_size: int = Field(2, ge=1)
    micro_batch_per_rank: int = Field(4, ge=1)
    grad_accumulation: int = Field(1, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False  # ZeRO's optimizer states (and step) in CPU memory
    # a DeepSpeed JSON of the user's own, laid over the generated one; the keys the experiment
    # also sets (batch sizes, accumulation, ZeRO stage, precision) must agree with it
    deepspeed_config: str | None = None
    # Ulysses sequence parallelism: groups of this many ranks split each sample's tokens (and
    # all-to-all the heads in attention); the groups are data parallel to each other
    sequence_parallel: int = Field(1, ge=1)
    collective_timeout_s: float = Field(1800.0, gt=0)  # a collective waiting this long names the missing ranks
    tensorboard: bool = True  # also write <stage>/tensorboard/ event files
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    grad_clip: float = 1.0
    checkpoint_every: int = Field(20, ge=1)
    # decode processes per rank; 0 decodes in the trainer; auto: the machine's cores the ranks leave
    # free, shared by its ranks (1 to 8). Workers that share cores with the ranks run at idle
    # priority, so decoding takes only the cycles the ranks leave idle
    loader_workers: int | Literal["auto"] = "auto"
    prefetch_batches: int = Field(2, ge=1)  # per loader worker
    # cuda: each rank decodes its clips on its own GPU (NVDEC, through a CUDA build of torchcodec),
    # in its own process; the CPU then only reads shards, and the pixels never cross PCIe
    decode_device: Literal["cpu", "cuda"] = "cpu"
    # per source and loader worker; 0 serves samples in shard order (memory is bounded by bytes, not samples)
    shuffle_buffer_mb: float = Field(8.0, ge=0)
    loader_stall_timeout_s: float = Field(600.0, gt=0)  # a worker silent this long is named and stopped
    threads_per_rank: int = Field(1, ge=1)
    keep_last: int = Field(3, ge=1)  # checkpoints kept besides those kept by keep_every
    keep_every: int = Field(0, ge=0)  # also keep every checkpoint whose step is a multiple of this (0: none)
    max_nonfinite_steps: int = Field(8, ge=1)  # a run of this many NaN/inf losses stops training
    ema_decay: float = Field(0.0, ge=0, lt=1)  # >0: keep an EMA of the trainable weights (export --ema)


class LaunchConfig(Strict):
    target: Literal["local"] = "local"  # N ranks on this machine, CPU (gloo) or one per GPU (NCCL)
