"""Size a trunk before submitting: parameters, FLOPs per sample, activation and model-state memory
per GPU for each ZeRO stage (DeepSpeed's own estimators for ZeRO-2/3).

FLOPs count multiply-adds as 2; a training step is forward + backward = 3 forwards (4 with
activation checkpointing). Activation bytes assume bf16 and a flash-style attention that keeps no
L x L score matrix; they are an estimate of what autograd saves per block, not a measurement.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from wamforge.model_zoo.trunks.wan.sizes import WanSize

BF16 = 2


@dataclass(frozen=True)
class Plan:
    params: int
    largest_layer_params: int
    tokens: int
    flops_forward: float
    flops_train_step: float
    activation_bytes: int  # per sample, every block's saved tensors
    activation_bytes_checkpointed: int  # per sample, block inputs plus one block recomputed
    model_state_bytes: dict[str, int]  # per GPU, by ZeRO stage

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

    # per block, autograd keeps ~15 tensors of [L, dim] (norms, q/k/v before and after RoPE, attention
    # outputs, modulated residuals) plus the FFN's two [L, ffn] activations and the text k/v
    block_bytes = BF16 * (tokens * (15 * d + 2 * f) + 2 * lt * d)
    activations = micro_batch * shape.layers * block_bytes
    checkpointed = micro_batch * (shape.layers * BF16 * tokens * d + block_bytes)

    nodes = max(1, world_size // gpus_per_node)
    per_node = min(world_size, gpus_per_node)
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, zero2 = estimate_zero2_model_states_mem_needs(params, per_node, nodes, cpu_offload=False)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(params, largest, per_node, nodes, cpu_offload=False)
    states = {
        "zero0": 16 * params,  # bf16 params + grads, fp32 master + Adam moments, all replicated
        "zero1": 4 * params + 12 * params // world_size,  # optimizer state sharded
        "zero2": zero2,
        "zero3": zero3,
    }
    return Plan(params, largest, tokens, float(forward), float(forward * 3), int(activations),
                int(checkpointed), states)


def experiment_plan(cfg, world_size: int | None = None) -> Plan:
    """The plan of an experiment's own model at its resolution, frames and micro-batch: parameters of
    the whole WAM as `build_model` makes it, FLOPs and activations of its trunk (Wan and Cosmos
    blocks alike: self-attention, cross-attention to the text, FFN)."""
    from wamforge.model_zoo.build import build_model
    from wamforge.model_zoo.vae import latent_geometry

    m = cfg.model
    channels, temporal, spatial = latent_geometry(m.vae)
    trunk = m.trunk
    ffn = trunk.ffn_dim if trunk.kind == "wan" else int(trunk.mlp_ratio * trunk.dim)
    shape = WanSize(trunk.dim, ffn, trunk.layers, trunk.heads, in_channels=channels,
                    text_dim=m.text.dim, patch=trunk.patch, vae_stride=(temporal, spatial, spatial))
    return plan(shape, cfg.data.clip_frames, tuple(cfg.data.resolution), world_size or cfg.training.world_size,
                text_tokens=m.text.max_tokens, micro_batch=cfg.training.micro_batch_per_rank,
                build=lambda: build_model(cfg, num_embodiments=1))
