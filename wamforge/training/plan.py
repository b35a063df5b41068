"""Size a model before submitting: parameters, FLOPs, activation and model-state memory per GPU
for each ZeRO stage (DeepSpeed's own estimators for ZeRO-2/3), and the cheapest setting that fits a GPU.

`plan(shape, ...)` sizes a bare Wan trunk from its shape: FLOPs count multiply-adds as 2, a training
step is forward + backward = 3 forwards (4 with activation checkpointing).

`experiment_plan(cfg)` sizes an experiment's own model: it runs the real training loss and its
backward on fake tensors (shapes and dtypes, no storage) under torch's FlopCounterMode, so the FLOPs
are the code's own, every stream in the trunk's sequence, the heads and experts and the coupling's
extra frames included, at any size (a 14B trunk takes seconds on a CPU and allocates nothing).

Activation bytes, both ways, are an estimate of what autograd saves per trunk block, not a
measurement: bf16, a flash-style attention that keeps no L x L score matrix, ~15 tensors of
[L, dim] per block plus the FFN's two [L, ffn] and the text keys/values. The experiment's estimate
takes L from the trunk's real sequence in every block call of the step (all streams, every pass);
the heads' own activations are left out (they are narrow next to the trunk's).

`fit(plan, gpu_memory_gib, ...)` picks the cheapest setting that fits, trying in this order: activation
checkpointing off before on (it recomputes every block's forward), then the smallest ZeRO stage (each
stage adds communication), then the smallest sequence-parallel degree (Ulysses' all-to-alls). A
setting needs model states per rank for its ZeRO stage + activations per rank (divided by the
sequence-parallel degree; the checkpointed figure with checkpointing) + a margin for workspace,
the CUDA context and fragmentation (`margin_bytes`).
"""
from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass, field

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils import _pytree as pytree
from torch.utils._mode_utils import no_dispatch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from wamforge.data_pipeline.schema import Batch
from wamforge.model_zoo.trunks.wan.sizes import WanSize

BF16 = 2
GIB = 1024**3
MARGIN_FIXED, MARGIN_SHARE = 1 * GIB, 0.10  # the CUDA context, plus a share of the GPU for workspace and fragments


@dataclass(frozen=True)
class Plan:
    params: int
    largest_layer_params: int
    tokens: int
    flops_forward: float
    flops_train_step: float
    activation_bytes: int  # per rank for the micro-batch, every block's saved tensors
    activation_bytes_checkpointed: int  # per rank for the micro-batch, block inputs plus one block recomputed
    model_state_bytes: dict[str, int]  # per GPU, by ZeRO stage
    # experiment plans only: what the real training step runs
    frozen_params: int = 0  # of `params`, those no stage trains (the VAE, a frozen text encoder)
    video_tokens: int = 0  # the clip's own video tokens per sample; `tokens` is the longest trunk sequence
    trunk_tokens: int = 0  # per sample, summed over every block call of the step, divided by the blocks
    objective: str = ""  # the stage objective counted
    # with activation checkpointing: every block call's forward again (an upper bound where a block runs
    # outside the checkpointed loop, as the encoder-only substrate's KV prefill does)
    flops_train_step_checkpointed: float = 0.0
    checkpointing: bool = True  # whether the trunk can checkpoint activations
    sequence_parallel: tuple[int, ...] = (1,)  # the sequence-parallel degrees the trunk allows

    def as_dict(self) -> dict:
        return asdict(self)


def plan(shape: WanSize, frames: int, resolution: tuple[int, int], world_size: int, gpus_per_node: int = 8,
         text_tokens: int = 512, micro_batch: int = 1, build=None) -> Plan:
    """`shape` gives the trunk's FLOPs and activations; `build` (default: the shape's trunk) the
    module whose parameters are counted, e.g. the whole WAM with its heads."""
    with torch.device("meta"):  # shapes only, nothing allocated
        model = (build or shape.build)()
    params = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())

    t_stride, h_stride, w_stride = shape.vae_stride
    latent = (1 + (frames - 1) // t_stride, resolution[0] // h_stride, resolution[1] // w_stride)
    tokens = 1
    for size, patch in zip(latent, shape.patch):
        tokens *= size // patch
    d, f, lt = shape.dim, shape.ffn_dim, text_tokens
    li = 0 if shape.image_dim is None else (shape.pos_embed_seq_len or 257)  # CLIP tokens of I2V
    per_block = (2 * tokens * d * d * 4            # self-attention q, k, v, out
                 + 2 * 2 * tokens * tokens * d     # scores and weighted values
                 + 2 * tokens * d * d * 2          # cross-attention q, out
                 + 2 * (lt + li) * d * d * 2       # cross-attention k, v over text (and image) tokens
                 + 2 * 2 * tokens * (lt + li) * d  # cross-attention scores and values
                 + 2 * tokens * d * f * 2)         # FFN
    text = 2 * lt * (shape.text_dim * d + d * d)
    if li:
        text += 2 * li * (shape.image_dim * shape.image_dim + shape.image_dim * d)  # image embedder MLP
    forward = micro_batch * (shape.layers * per_block + text)

    block_bytes = saved_per_block(tokens, d, f, lt)
    activations = micro_batch * shape.layers * block_bytes
    checkpointed = micro_batch * (shape.layers * BF16 * tokens * d + block_bytes)

    return Plan(params, largest, tokens, float(forward), float(forward * 3), int(activations),
                int(checkpointed), model_states(params, largest, world_size, gpus_per_node),
                sequence_parallel=sequence_parallel_degrees(world_size, shape.heads))


def saved_per_block(tokens: int, dim: int, ffn_dim: int, text_tokens: int) -> int:
    """Bytes autograd keeps for one trunk block over `tokens` tokens: ~15 tensors of [L, dim] (norms,
    q/k/v before and after RoPE, attention outputs, modulated residuals), the FFN's two [L, ffn] and
    the text keys and values."""
    return BF16 * (tokens * (15 * dim + 2 * ffn_dim) + 2 * text_tokens * dim)


def model_states(params: int, largest: int, world_size: int, gpus_per_node: int = 8,
                 frozen: int = 0) -> dict[str, int]:
    """Bytes per GPU of parameters, gradients and Adam states, by ZeRO stage (mixed precision), for
    `params` trained ones; `frozen` ones (the VAE) add their bf16 weights on every rank: they are
    built outside ZeRO-3's partitioning and have no gradients or optimizer states."""
    nodes = max(1, world_size // gpus_per_node)
    per_node = min(world_size, gpus_per_node)
    if not torch.cuda.is_available():  # read at DeepSpeed's first import: no accelerator notice on stdout
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, zero2 = estimate_zero2_model_states_mem_needs(params, per_node, nodes, cpu_offload=False)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(params, largest, per_node, nodes, cpu_offload=False)
    states = {
        "zero0": 16 * params,  # bf16 params + grads, fp32 master + Adam moments, all replicated
        "zero1": 4 * params + 12 * params // world_size,  # optimizer state sharded
        "zero2": int(zero2),
        "zero3": int(zero3),
    }
    return {stage: size + BF16 * frozen for stage, size in states.items()}


def sequence_parallel_degrees(world_size: int, heads: int) -> tuple[int, ...]:
    """Ulysses degrees: groups that split the ranks evenly and give each rank whole heads."""
    return tuple(d for d in range(1, world_size + 1) if world_size % d == 0 and heads % d == 0)


# --- the experiment's own training step, counted on fake tensors ---

_CONSTANT_LIMIT = 1 << 22


class _ShapesOnly(FakeTensorMode):
    """Fake tensors: shapes and dtypes, no storage. Integer and bool tensors made from Python values
    (token counts, ids, caption masks, layouts) stay real constants while small, so the couplings'
    data-dependent bookkeeping on them (repeat_interleave, nonzero, tolist, `if mask.all()`) runs as
    in training; weights, noise and activations stay fake."""

    def may_turn_const(self, t: torch.Tensor) -> bool:
        return (t.layout == torch.strided and t.numel() <= _CONSTANT_LIMIT and not self.is_our_fake(t)
                and t.device.type != "meta")

    def dispatch(self, func, types, args=(), kwargs=None):
        out = super().dispatch(func, types, args, kwargs)
        made_from_values = not any(isinstance(a, torch.Tensor) for a in pytree.tree_leaves((args, kwargs)))
        if (made_from_values and isinstance(out, FakeTensor) and out.constant is None
                and not out.dtype.is_floating_point and not out.dtype.is_complex
                and out.numel() <= _CONSTANT_LIMIT and torch.Tag.nondeterministic_seeded not in func.tags):
            with no_dispatch():
                real = func(*args, **(kwargs or {}))
            return self.fake_tensor_converter.from_real_tensor(self, real, make_constant=True)
        return out


def planning_config(cfg):
    """The experiment as the plan counts it: no caption dropout (it changes no shape), no activation
    checkpointing (its recompute is counted apart: `flops_train_step_checkpointed`), and no weights
    read from disk: a VAE of the same shape, and a frozen T5's captions stood in by `CachedCaptions`,
    so a plan runs on a machine that holds no checkpoint."""
    m = cfg.model
    update = {"condition_dropout": 0.0}
    if m.baseline is None and hasattr(m.trunk, "activation_checkpointing"):
        update["trunk"] = m.trunk.model_copy(update={"activation_checkpointing": False})
    if getattr(m.vae, "path", None):
        update["vae"] = m.vae.model_copy(update={"path": None})
    if m.text.encoder == "t5":
        update["text"] = m.text.model_copy(update={"encoder": "byte", "path": None, "cache_dir": None})
    return cfg.model_copy(update={"model": m.model_copy(update=update)})


class CachedCaptions(torch.nn.Module):
    """A frozen encoder's caption embeddings as its cache serves them: [B, max_tokens, dim], no
    weights and no compute in the training step."""

    def __init__(self, dim: int, max_tokens: int):
        super().__init__()
        self.dim, self.max_tokens = dim, max_tokens

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.zeros(len(texts), self.max_tokens, self.dim),
                torch.ones(len(texts), self.max_tokens, dtype=torch.bool))


def planning_batch(cfg, model) -> Batch:
    """One micro-batch at the experiment's geometry, every sample with actions in every dimension and a
    caption of `text.max_tokens`: the most a step computes. Latents as the shard cache serves them (a
    baseline reads pixels)."""
    m, batch = cfg.model, cfg.training.micro_batch_per_rank
    height, width = cfg.data.resolution
    horizon, a_max, p_max = m.regime.horizon, m.max_action_dim, m.max_proprio_dim
    video = latents = None
    if m.baseline is None:
        stride = model.vae.spatial_stride
        latents = torch.zeros(batch, model.vae.latent_channels, model.latent_frames, height // stride, width // stride)
    else:
        video = torch.zeros(batch, cfg.data.clip_frames, 1, 3, height, width, dtype=torch.uint8)
    return Batch(video=video, latents=latents, video_pad=torch.zeros(batch, cfg.data.clip_frames, dtype=torch.bool),
                 actions=torch.zeros(batch, horizon, a_max), action_mask=torch.ones(batch, horizon, a_max, dtype=torch.bool),
                 has_actions=torch.ones(batch, dtype=torch.bool), proprio=torch.zeros(batch, p_max),
                 proprio_mask=torch.ones(batch, p_max, dtype=torch.bool), embodiment_id=torch.zeros(batch, dtype=torch.long),
                 source_id=torch.zeros(batch, dtype=torch.long), text=["x" * m.text.max_tokens] * batch,
                 keys=[f"plan/{i}" for i in range(batch)], steps_to_go=torch.ones(batch, dtype=torch.long),
                 success=torch.ones(batch))


@dataclass
class StepCount:
    """What one training loss and its backward computed."""
    forward: float = 0.0  # FLOPs
    train: float = 0.0  # forward + backward FLOPs
    blocks_forward: float = 0.0  # the trunk blocks' share of `forward`: what checkpointing recomputes
    sequence: list[int] = field(default_factory=list)  # the trunk's tokens per sample at every block call


def count_step(model, batch: Batch, objective: str) -> StepCount:
    """FLOPs of one training loss and its backward, with the trunk's block calls. SDPA's math backend
    spells attention as matmuls, which the counter sees (the same count as the fused kernels' formula)."""
    out = StepCount()
    with FlopCounterMode(display=False) as forward:
        def enter(_, args):
            out.sequence.append(_tokens(args[0]))
            out.blocks_forward -= forward.get_total_flops()

        def leave(*_):
            out.blocks_forward += forward.get_total_flops()
        hooks = [h for block in _trunk_blocks(model)
                 for h in (block.register_forward_pre_hook(enter), block.register_forward_hook(leave))]
        try:
            model.zero_grad(set_to_none=True)
            with sdpa_kernel(SDPBackend.MATH):
                loss = model.loss(batch, objective, {})["loss"]
        finally:
            for hook in hooks:
                hook.remove()
    with FlopCounterMode(display=False) as backward, sdpa_kernel(SDPBackend.MATH):
        loss.backward()
    out.forward = float(forward.get_total_flops())
    out.train = out.forward + float(backward.get_total_flops())
    return out


def _trunk_blocks(model) -> list[torch.nn.Module]:
    trunk = getattr(model, "trunk", None)
    if trunk is None:  # a baseline
        return []
    return list(getattr(trunk, "blocks", None) or trunk.transformer_blocks)


def _tokens(x: torch.Tensor) -> int:
    """Tokens per sample of a block's input [B, ..., dim]."""
    return x[0].numel() // x.shape[-1]


def planned_objective(model) -> str:
    """`joint` where the model declares it: it trains every network the other objectives train, so its
    step is the most expensive; else the one objective it has (a baseline's `action`)."""
    objectives = model.capabilities.objectives
    return "joint" if "joint" in objectives else objectives[-1]


def experiment_plan(cfg, world_size: int | None = None, gpus_per_node: int = 8, objective: str | None = None) -> Plan:
    """The plan of an experiment's own model at its trunk size, resolution, clip length and micro-batch,
    counted on its real training step for `objective` (default: `planned_objective`) on fake tensors.
    Parameters are the whole model's; with checkpointing, the step also recomputes the blocks' forward."""
    from wamforge.model_zoo.build import build_model

    world_size = world_size or cfg.training.world_size
    frozen_text = cfg.model.text.encoder == "t5"
    cfg = planning_config(cfg)
    with _ShapesOnly(allow_non_fake_inputs=True):
        model = build_model(cfg, num_embodiments=1)
        if frozen_text:
            model.text_encoder = CachedCaptions(cfg.model.text.dim, cfg.model.text.max_tokens)
        batch = planning_batch(cfg, model)
        objective = objective or planned_objective(model)
        step = count_step(model, batch, objective)
        params = sum(p.numel() for p in model.parameters())
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
        video = model.video_tokens(batch) if hasattr(model, "video_tokens") else 0
        blocks = len(_trunk_blocks(model))

    m, calls, micro = cfg.model, step.sequence, cfg.training.micro_batch_per_rank
    activations = checkpointed = 0  # no trunk (a baseline): not estimated
    if calls:  # per block call as `plan` estimates it, at that call's sequence length
        d = m.trunk.dim
        f = m.trunk.ffn_dim if m.trunk.kind == "wan" else int(m.trunk.mlp_ratio * d)

        saved = [saved_per_block(n, d, f, m.text.max_tokens) for n in calls]
        activations = micro * sum(saved)
        checkpointed = micro * (sum(BF16 * n * d for n in calls) + max(saved))
    checkpointing = bool(calls) and hasattr(m.trunk, "activation_checkpointing")
    # Ulysses splits the wan trunk's sequence, but not the encoder-only substrate's cache (config/experiment.py)
    sharded = bool(calls) and m.trunk.kind == "wan" and m.substrate.kind != "feature.encoder_only"
    return Plan(params, largest, max(calls, default=0), step.forward, step.train, int(activations), int(checkpointed),
                model_states(params - frozen, largest, world_size, gpus_per_node, frozen), video_tokens=video,
                frozen_params=frozen,
                trunk_tokens=sum(calls) // max(1, blocks), objective=objective,
                flops_train_step_checkpointed=step.train + step.blocks_forward if checkpointing else step.train,
                checkpointing=checkpointing,
                sequence_parallel=sequence_parallel_degrees(world_size, m.trunk.heads) if sharded else (1,))


# --- the cheapest setting that fits a GPU ---

def margin_bytes(gpu_bytes: int) -> int:
    """What a setting leaves free: the CUDA context, plus a share of the GPU for workspace and fragments."""
    return int(MARGIN_FIXED + MARGIN_SHARE * gpu_bytes)


@dataclass(frozen=True)
class Setting:
    activation_checkpointing: bool
    zero_stage: int
    sequence_parallel: int
    model_state_bytes: int  # per rank
    activation_bytes: int  # per rank
    margin_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.model_state_bytes + self.activation_bytes + self.margin_bytes

    def config_lines(self) -> list[str]:
        return [f"training.zero_stage: {self.zero_stage}", f"training.sequence_parallel: {self.sequence_parallel}",
                f"model.trunk.activation_checkpointing: {str(self.activation_checkpointing).lower()}"]


@dataclass(frozen=True)
class Fit:
    gpu_bytes: int
    considered: tuple[Setting, ...]  # in the order tried, up to the chosen one (all of them when none fits)
    chosen: Setting | None

    def fits(self, setting: Setting) -> bool:
        return setting.total_bytes <= self.gpu_bytes

    @property
    def message(self) -> str:
        """The chosen setting, or one sentence on what the least demanding setting needs."""
        if self.chosen is not None:
            s = self.chosen
            return (f"fits {_size(self.gpu_bytes)} per GPU: ZeRO-{s.zero_stage}, sequence parallel {s.sequence_parallel}, "
                    f"activation checkpointing {'on' if s.activation_checkpointing else 'off'}, "
                    f"{_size(s.total_bytes)} per GPU with the margin")
        best = min(self.considered, key=lambda s: s.total_bytes)
        return (f"nothing fits {_size(self.gpu_bytes)} per GPU: the least demanding setting (ZeRO-{best.zero_stage}, "
                f"sequence parallel {best.sequence_parallel}, checkpointing {'on' if best.activation_checkpointing else 'off'}) "
                f"needs {_size(best.total_bytes)} ({_size(best.model_state_bytes)} model states, "
                f"{_size(best.activation_bytes)} activations, {_size(best.margin_bytes)} margin), so use more ranks, "
                f"a larger GPU, a shorter clip, a lower resolution or a smaller micro-batch")

    def as_dict(self) -> dict:
        row = lambda s: {**asdict(s), "total_bytes": s.total_bytes, "fits": self.fits(s)}
        return {"gpu_bytes": self.gpu_bytes, "message": self.message,
                "chosen": None if self.chosen is None else {**row(self.chosen), "config": self.chosen.config_lines()},
                "considered": [row(s) for s in self.considered]}


def candidates(p: Plan, gpu_bytes: int) -> list[Setting]:
    """Every setting the plan allows, cheapest first: checkpointing off before on, then ZeRO stage,
    then sequence-parallel degree."""
    margin = margin_bytes(gpu_bytes)
    out = []
    for ckpt, zero, sp in itertools.product((False, True) if p.checkpointing else (False,), range(4),
                                            p.sequence_parallel):
        acts = p.activation_bytes_checkpointed if ckpt else p.activation_bytes
        out.append(Setting(ckpt, zero, sp, p.model_state_bytes[f"zero{zero}"], -(-acts // sp), margin))
    return out


def fit(p: Plan, gpu_memory_gib: float) -> Fit:
    """The first setting, in the cost order of `candidates`, that fits `gpu_memory_gib` per GPU."""
    gpu = int(gpu_memory_gib * GIB)
    considered = []
    for setting in candidates(p, gpu):
        considered.append(setting)
        if setting.total_bytes <= gpu:
            return Fit(gpu, tuple(considered), setting)
    return Fit(gpu, tuple(considered), None)


def _size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"
