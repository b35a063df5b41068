"""Typed experiment config: one file states data, model 4-tuple, stages and launch target."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# ----------------------------------------------------------------------------- data

class ProceduralVideo(Strict):
    """Procedural motion clips: an action-free stand-in for internet video, labelled as such."""
    videos: int = Field(24, ge=1)
    frames: int = Field(48, ge=5)
    seed: int = 0


class SourceConfig(Strict):
    format: Literal["metaworld", "video_folder", "egocentric", "lerobot", "robomimic", "rlds"]
    kind: Literal["internet", "egocentric", "teleop", "sim", "synthetic"]
    embodiment: str
    description: str = ""
    # metaworld
    tasks: list[str] = []
    episodes_per_task: int = Field(4, ge=1)
    max_steps: int = Field(120, ge=8)
    camera: str = "corner"
    seed: int = 0
    # video_folder
    path: str | None = None
    generate: ProceduralVideo | None = None
    caption_file: str = "captions.jsonl"  # .jsonl or .csv: video (or path, videoid), caption (or name), start, end
    clip_seconds: float | None = Field(None, gt=0)  # split long videos into clips of at most this long
    cut_threshold: float | None = Field(None, gt=0)  # split at shot cuts (histogram distance 0..2); None: no cuts
    reject_static_blank: bool = True  # quarantine clips with almost no motion or no contrast
    # recorded robot data (lerobot, robomimic): which cameras, state fields and action field to read;
    # empty means the format's usual names (all cameras; observation.state / robot0_eef_* ; action(s))
    cameras: list[str] = []
    state_keys: list[str] = []
    action_key: str | None = None
    language: str = ""  # the instruction when the data has none
    fps: float | None = Field(None, gt=0)  # the recording rate, where the files do not state it (robomimic: 20)

    @model_validator(mode="after")
    def _format_fields(self):
        if self.format == "metaworld" and not self.tasks:
            raise ValueError("a metaworld source needs at least one task in 'tasks'")
        if self.format != "metaworld" and not self.path:
            raise ValueError(f"a {self.format} source needs 'path'")
        return self


class DataConfig(Strict):
    out_dir: str | None = None  # default: <run_dir>/data
    clip_frames: int = Field(9, ge=1)
    clip_stride: int = Field(4, ge=1)  # control steps between the current frames of neighbouring windows
    # multi-rate windows: video frames every frame_stride control steps, actions at every step
    frame_stride: int = Field(1, ge=1)
    # past context: video frames before the current one (clean conditioning, a multiple of the VAE's
    # temporal stride 4); at an episode's start they repeat its first frame and are marked as padding
    context_frames: int = Field(0, ge=0)
    action_frames: int = Field(32, ge=1)  # action/proprio rows stored from the current frame on (>= horizon)
    # encoder caches built after the shards, by Ray actors: "vae" (the model's video VAE: latents,
    # which training then reads instead of decoding and encoding video) and "teacher" (features)
    caches: list[Literal["vae", "teacher"]] = []
    teacher: str | None = None  # a local Hugging Face vision checkpoint (e.g. DINOv2, SigLIP) for "teacher"
    cache_actors: int = Field(1, ge=1)  # encoder actors; each takes a GPU where there is one
    resolution: tuple[int, int] = (64, 64)
    fps: float = Field(10.0, gt=0)
    episodes_per_task: int = Field(4, ge=1)  # episodes per build task: the unit of parallel (and resumed) work
    shard_mb: float = Field(256.0, gt=0)  # a task rolls over to a new shard file past this size
    build_workers: int = Field(2, ge=1)
    sources: dict[str, SourceConfig]

    @field_validator("clip_frames")
    @classmethod
    def _wan_aligned(cls, t: int) -> int:
        if (t - 1) % 4:
            raise ValueError(f"clip_frames must be 1 + 4k to match the video VAE's temporal stride; got {t}")
        return t

    @model_validator(mode="after")
    def _teacher_named(self):
        if "teacher" in self.caches and not self.teacher:
            raise ValueError("data.caches names 'teacher' but data.teacher (a local checkpoint folder) is not set")
        return self

    @model_validator(mode="after")
    def _context_fits(self):
        if self.context_frames % 4 or self.context_frames >= self.clip_frames - 1:
            raise ValueError(f"context_frames must be a multiple of 4 below clip_frames - 1 = {self.clip_frames - 1} "
                             f"(whole latent frames of context, at least one future latent); got {self.context_frames}")
        return self


# ----------------------------------------------------------------------------- model

class TrunkConfig(Strict):
    kind: Literal["wan_dit"] = "wan_dit"
    dim: int = 96
    layers: int = 4
    heads: int = 4
    ffn_dim: int = 256
    patch: tuple[int, int, int] = (1, 2, 2)
    tap_layer: int = 2  # the action expert reads features after this block
    qk_norm: bool = True
    activation_checkpointing: bool = False  # recompute blocks in backward to save activation memory

    @model_validator(mode="after")
    def _shapes(self):
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if not 1 <= self.tap_layer <= self.layers:
            raise ValueError(f"tap_layer must be in 1..{self.layers}")
        return self


class VAEConfig(Strict):
    kind: Literal["patchify"] = "patchify"
    spatial: int = 4
    temporal: int = 4


class TextConfig(Strict):
    # byte: a tiny encoder trained with the model; t5: a frozen local T5/umT5 checkpoint (safetensors)
    encoder: Literal["byte", "t5"] = "byte"
    dim: int = 64  # t5: must equal the checkpoint's d_model (4096 for Wan's umT5-XXL)
    max_tokens: int = 32
    path: str | None = None  # t5: checkpoint directory
    cache_dir: str | None = None  # t5: caption embeddings cached here, so captions are encoded once

    @model_validator(mode="after")
    def _t5_needs_a_checkpoint(self):
        if self.encoder == "t5" and not self.path:
            raise ValueError("text.encoder 't5' needs text.path, a local checkpoint directory")
        return self


class ActionExpertConfig(Strict):
    dim: int = 64
    layers: int = 2
    heads: int = 4
    horizon: int = 8  # action chunk length H


# the points of the 4-tuple that model_zoo and evaluation can run today
IMPLEMENTED = {"substrate": ("pixel.latent",), "coupling": ("post_prediction_head",), "backbone": ("diffusion",),
               "regime": ("chunked",)}


class ModelConfig(Strict):
    # the survey's 4-tuple (eq. 37)
    substrate: Literal["pixel.latent", "pixel.decoded", "feature.tap", "feature.teacher",
                       "geometric.flow", "affordance.map"] = "pixel.latent"
    coupling: Literal["action_conditioned_rollout", "joint_generation", "post_prediction_head"] = "post_prediction_head"
    backbone: Literal["diffusion", "autoregressive", "joint_embedding", "hybrid", "vlm"] = "diffusion"
    regime: Literal["open_loop", "chunked", "single_step", "interactive"] = "chunked"
    trunk: TrunkConfig = TrunkConfig()
    vae: VAEConfig = VAEConfig()
    text: TextConfig = TextConfig()
    action_expert: ActionExpertConfig = ActionExpertConfig()
    max_action_dim: int = 8
    max_proprio_dim: int = 8
    flow_shift: float = 1.0
    # mean_std: (x - mean) / std; quantile: q01..q99 mapped to -1..1 (robust to outliers)
    normalization: Literal["mean_std", "quantile"] = "mean_std"

    @model_validator(mode="after")
    def _implemented(self):
        for axis, value in (("substrate", self.substrate), ("coupling", self.coupling),
                            ("backbone", self.backbone), ("regime", self.regime)):
            if value not in IMPLEMENTED[axis]:
                raise ValueError(f"{axis} '{value}' has no model yet; available: {', '.join(IMPLEMENTED[axis])}")
        return self


# ----------------------------------------------------------------------------- stages

# source weights; a group ({robot: {franka: 2, ur5: 1}}) counts as one entry of weight 1 (or its
# own `weight:` key) shared among its members in proportion to theirs
Weights = dict[str, float | dict[str, float]]


def flatten_weights(table: dict) -> dict[str, float]:
    flat: dict[str, float] = {}
    for name, value in table.items():
        members = value if isinstance(value, dict) else {name: value}
        share = 1.0
        if isinstance(value, dict):
            members = {k: w for k, w in value.items() if k != "weight"}
            share = float(value.get("weight", 1.0))
            total = sum(members.values())
            if not members or any(w < 0 for w in members.values()) or total <= 0:
                raise ValueError(f"group '{name}' needs members with non-negative weights, not all zero")
            members = {k: share * w / total for k, w in members.items()}
        for member, w in members.items():
            flat[member] = flat.get(member, 0.0) + float(w)
    return flat


class CurriculumPoint(Strict):
    step: int = Field(ge=0)
    weights: Weights

    _flat = field_validator("weights")(lambda cls, v: flatten_weights(v))


class MixtureConfig(Strict):
    weights: Weights
    curriculum: list[CurriculumPoint] = []  # breakpoints over the stage's steps
    # linear: weights ramp between breakpoints; step: each breakpoint's weights hold until the next
    interpolation: Literal["linear", "step"] = "linear"
    # "size": each source's weight is also multiplied by its number of built samples
    balance: Literal["weights", "size"] = "weights"

    _flat = field_validator("weights")(lambda cls, v: flatten_weights(v))

    @model_validator(mode="after")
    def _positive(self):
        for table in [self.weights, *(p.weights for p in self.curriculum)]:
            if any(w < 0 for w in table.values()) or sum(table.values()) <= 0:
                raise ValueError("mixture weights must be non-negative and not all zero")
        steps = [p.step for p in self.curriculum]
        if steps != sorted(steps):
            raise ValueError("curriculum breakpoints must be in increasing step order")
        return self


class TimestepConfig(Strict):
    kind: Literal["uniform", "logit_normal", "shifted", "beta"] = "uniform"
    mean: float = 0.0  # logit_normal
    std: float = Field(1.0, gt=0)  # logit_normal
    shift: float = Field(1.0, gt=0)  # shifted
    alpha: float = Field(1.5, gt=0)  # beta
    beta: float = Field(1.0, gt=0)  # beta


class WeightPoint(Strict):
    step: int = Field(ge=0)
    weight: float = Field(ge=0)


class ParamGroup(Strict):
    """Parameters matching `params` (fnmatch over names; the first group that matches wins) train
    with their own learning rate and weight decay; the stage's values fill what is left unset."""
    params: list[str] = Field(min_length=1)
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)


class LoRAConfig(Strict):
    """Low-rank adapters on the linear layers matching `targets`: their weights freeze and
    W + (alpha / rank) * B @ A trains instead; the stage's final weights are saved merged."""
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    targets: list[str] = Field(["trunk.blocks.*.attn1.to_*", "trunk.blocks.*.attn2.to_*"], min_length=1)


class StageConfig(Strict):
    name: str
    objective: Literal["video", "joint", "action"]
    steps: int = Field(ge=1)
    mixture: MixtureConfig
    trainable: list[str] = ["*"]  # fnmatch patterns over parameter names (LoRA adapters always train)
    param_groups: list[ParamGroup] = []
    lora: LoRAConfig | None = None
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = 0.0
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    loss_weights: dict[Literal["video", "action"], float] = {}
    # piecewise-linear loss weights over the stage's steps (e.g. the action weight ramping in); they
    # replace loss_weights for the modalities they name
    loss_weight_schedule: dict[Literal["video", "action"], list[WeightPoint]] = {}
    # per-modality timestep samplers; default: video `shifted` by model.flow_shift, action `uniform`
    timesteps: dict[Literal["video", "action"], TimestepConfig] = {}

    @model_validator(mode="after")
    def _schedules_ordered(self):
        for modality, points in self.loss_weight_schedule.items():
            steps = [p.step for p in points]
            if not points or steps != sorted(set(steps)):
                raise ValueError(f"loss_weight_schedule.{modality} needs breakpoints in increasing step order")
        return self
    init_from: str | None = "previous"  # "previous", a path to model.safetensors, or null
    # rename checkpoint keys on load: {regex: replacement}, applied in order (e.g. {"^model\\.": ""})
    init_keys: dict[str, str] = {}
    # strict: every model tensor must be loaded and every checkpoint tensor used; otherwise the
    # missing ones keep their fresh initialisation and the unused are dropped (both reported)
    init_strict: bool = True


# ----------------------------------------------------------------------------- training / eval / launch

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
    loader_workers: int = Field(1, ge=0)  # decode processes per rank; 0 decodes in the trainer
    prefetch_batches: int = Field(2, ge=1)  # per loader worker
    # per source and loader worker; 0 serves samples in shard order (memory is bounded by bytes, not samples)
    shuffle_buffer_mb: float = Field(8.0, ge=0)
    loader_stall_timeout_s: float = Field(600.0, gt=0)  # a worker silent this long is named and stopped
    threads_per_rank: int = Field(1, ge=1)
    keep_last: int = Field(3, ge=1)  # checkpoints kept besides those kept by keep_every
    keep_every: int = Field(0, ge=0)  # also keep every checkpoint whose step is a multiple of this (0: none)
    max_nonfinite_steps: int = Field(8, ge=1)  # a run of this many NaN/inf losses stops training
    ema_decay: float = Field(0.0, ge=0, lt=1)  # >0: keep an EMA of the trainable weights (export --ema)


class EvalConfig(Strict):
    tasks: list[str] = []
    episodes: int = Field(3, ge=1)
    max_steps: int = Field(150, ge=1)
    execute_steps: int = Field(4, ge=1)  # K: actions executed per chunk
    flow_steps: int = Field(8, ge=1)
    seed: int = 1000
    embodiment: str = "sawyer"
    source: str = "sim"  # the data source whose camera and resolution the policy sees


class LaunchConfig(Strict):
    target: Literal["local"] = "local"  # N ranks on this machine, CPU (gloo) or one per GPU (NCCL)


class ExperimentConfig(Strict):
    name: str
    seed: int = 0
    run_dir: str = "runs"
    embodiments: str = "configs/embodiments.yaml"
    data: DataConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    stages: list[StageConfig]
    eval: EvalConfig = EvalConfig()
    launch: LaunchConfig = LaunchConfig()

    @model_validator(mode="after")
    def _cross_checks(self):
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique; got {names}")
        for stage in self.stages:
            for table in [stage.mixture.weights, *(p.weights for p in stage.mixture.curriculum)]:
                unknown = set(table) - set(self.data.sources)
                if unknown:
                    raise ValueError(f"stage '{stage.name}' mixes unknown sources {sorted(unknown)}; "
                                     f"known: {sorted(self.data.sources)}")
        if self.model.action_expert.horizon > self.data.action_frames:
            raise ValueError(f"model.action_expert.horizon {self.model.action_expert.horizon} exceeds the "
                             f"{self.data.action_frames} action rows a window stores; raise data.action_frames")
        t = self.training
        if t.world_size % t.sequence_parallel:
            raise ValueError(f"training.world_size {t.world_size} is not a multiple of training.sequence_parallel "
                             f"{t.sequence_parallel}")
        if self.model.trunk.heads % t.sequence_parallel:
            raise ValueError(f"model.trunk.heads {self.model.trunk.heads} must divide by training.sequence_parallel "
                             f"{t.sequence_parallel}: Ulysses gives each rank of a group whole heads")
        if self.stages and self.stages[0].init_from == "previous":
            self.stages[0].init_from = None
        return self
