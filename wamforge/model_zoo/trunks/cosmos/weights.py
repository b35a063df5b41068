"""Load and save CosmosDiT weights as safetensors, in diffusers' layout or the official Cosmos-Predict2 one.

wamforge's parameter names are diffusers' `CosmosTransformer3DModel` names, so the "diffusers"
layout is the model's own state dict. The "native" layout is NVIDIA's Cosmos-Predict2
`MiniTrainDIT` under the `net.` prefix (`net.x_embedder.proj.1.weight`,
`net.blocks.N.self_attn.q_proj.weight`, `net.blocks.N.adaln_modulation_self_attn.1.weight`,
`net.final_layer.linear.weight`, ...). The rename rules below invert the Cosmos 2.0 tables of
diffusers' `convert_cosmos_transformer_checkpoint_to_diffusers` (loaders/single_file_utils.py, the
same tables as scripts/convert_cosmos_to_diffusers.py); no tensor changes shape.

Official checkpoints also carry tensors no model parameter corresponds to; diffusers' converter
deletes them and so does the loader here, listing them in `LoadReport.dropped`:
`*._extra_state` (TransformerEngine FP8 metadata), `accum_*` (training counters) and
`pos_embedder.seq` / `dim_spatial_range` / `dim_temporal_range` (RoPE buffers, recomputed).

Only safetensors are read: pickled checkpoints (the released `model-*.pt` files) can run code on
load; convert them once with `torch.load(..., weights_only=True)` + `safetensors.torch.save_file`.
A checkpoint is one `.safetensors` file, a `*.safetensors.index.json` with its shards, or a folder
holding exactly one of those.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from torch import nn

from wamforge.model_zoo.common.weights_io import LoadReport, checkpoint_files, load_named, write_safetensors


Layout = Literal["diffusers", "native"]
LAYOUTS = ("diffusers", "native")

NATIVE_PREFIX = "net."  # the official checkpoints hold the DiT as the `net` of the diffusion model
# ComfyUI-style single-file exports put the whole model under this prefix (with or without `net.`)
_COMFY_PREFIX = "model.diffusion_model."

# (diffusers / wamforge pattern, native replacement), applied in order to a full parameter name
_TO_NATIVE = [
    (r"^patch_embed\.proj\.", "x_embedder.proj.1."),  # proj.0 is the patchifying Rearrange
    (r"^time_embed\.t_embedder\.", "t_embedder.1."),  # t_embedder.0 is the sinusoid
    (r"^time_embed\.norm\.", "t_embedding_norm."),
    # not in the Cosmos 2.0 tables (no Predict2 release has it); MiniTrainDIT and Cosmos 1.0 name it so
    (r"^learnable_pos_embed\.", "extra_pos_embedder."),
    (r"^transformer_blocks\.", "blocks."),
    (r"\.norm1\.linear_([12])\.", r".adaln_modulation_self_attn.\1."),
    (r"\.norm2\.linear_([12])\.", r".adaln_modulation_cross_attn.\1."),
    (r"\.norm3\.linear_([12])\.", r".adaln_modulation_mlp.\1."),
    (r"\.attn1\.", ".self_attn."),
    (r"\.attn2\.", ".cross_attn."),
    (r"\.to_([qkv])\.", r".\1_proj."),
    (r"\.to_out\.0\.", ".output_proj."),
    (r"\.norm_([qk])\.", r".\1_norm."),
    (r"\.ff\.net\.0\.proj\.", ".mlp.layer1."),
    (r"\.ff\.net\.2\.", ".mlp.layer2."),
    (r"^norm_out\.linear_([12])\.", r"final_layer.adaln_modulation.\1."),
    (r"^proj_out\.", "final_layer.linear."),
]

# native tensors (after `net.`) that no parameter corresponds to; diffusers' converter removes the same
DROPPED_NATIVE = [
    r"(^|\.)_extra_state$",  # TransformerEngine's per-module FP8 state
    r"^accum_(video_sample_counter|image_sample_counter|iteration|train_in_hours)$",  # training counters
    r"^pos_embedder\.(seq|dim_spatial_range|dim_temporal_range)$",  # RoPE buffers, recomputed on the fly
]


def native_name(name: str) -> str:
    """A wamforge / diffusers parameter name in the official Cosmos-Predict2 layout, `net.` included."""
    for pattern, replacement in _TO_NATIVE:
        name = re.sub(pattern, replacement, name)
    return NATIVE_PREFIX + name


def is_dropped(native: str) -> bool:
    """Whether a native tensor name (with or without `net.`) is one the model knowingly has no use for."""
    if native.startswith(NATIVE_PREFIX):
        native = native[len(NATIVE_PREFIX):]
    return any(re.search(pattern, native) for pattern in DROPPED_NATIVE)


def layout_names(model: nn.Module, layout: Layout) -> dict[str, str]:
    """{checkpoint name in `layout`: model parameter name}."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    names = list(model.state_dict())
    return {native_name(n) if layout == "native" else n: n for n in names}


def _canonical_names(stored: list[str]) -> dict[str, str]:
    """{name as in layout_names: name in the file}: a ComfyUI prefix is stripped, and a native
    checkpoint saved without `net.` gets it (decided by the caller through detect_layout)."""
    prefix = _COMFY_PREFIX if stored and all(n.startswith(_COMFY_PREFIX) for n in stored) else ""
    return {n[len(prefix):]: n for n in stored}


def detect_layout(names) -> Layout:
    bare = {n[len(NATIVE_PREFIX):] if n.startswith(NATIVE_PREFIX) else n for n in names}
    if bare & {"x_embedder.proj.1.weight", "final_layer.linear.weight"}:
        return "native"
    if bare & {"patch_embed.proj.weight", "proj_out.weight"}:
        return "diffusers"
    raise ValueError("cannot tell the layout: neither x_embedder.proj.1.weight / final_layer.linear.weight "
                     "(native) nor patch_embed.proj.weight / proj_out.weight (diffusers) is in the checkpoint")


def load_cosmos_weights(model: nn.Module, path: str | Path, layout: Layout | Literal["auto"] = "auto",
                        partial: bool = False) -> LoadReport:
    """Copy a checkpoint into `model` (cast to each parameter's dtype).

    Missing, unexpected or mis-shaped tensors raise a KeyError naming them, before anything is
    copied; with partial=True the rest is loaded and the report lists what was skipped. Native
    tensors the model has no use for (see DROPPED_NATIVE) are never an error: they are listed in
    `report.dropped`.
    """
    files = checkpoint_files(path)
    names = _canonical_names(list(files))  # {canonical: stored}
    layout = detect_layout(names) if layout == "auto" else layout
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS} or 'auto'")
    if layout == "native" and not any(n.startswith(NATIVE_PREFIX) for n in names):
        names = {NATIVE_PREFIX + n: stored for n, stored in names.items()}  # a bare MiniTrainDIT state dict
    targets = layout_names(model, layout)
    report = LoadReport(layout)
    if layout == "native":
        report.dropped = sorted(names[n] for n in names.keys() - targets.keys() if is_dropped(n))
        names = {n: stored for n, stored in names.items() if stored not in report.dropped}
    return load_named(model, files, names, targets, report, path, partial)


def save_cosmos_weights(model: nn.Module, directory: str | Path, layout: Layout = "native",
                        max_shard_bytes: int | None = None, stem: str = "diffusion_pytorch_model") -> Path:
    """Write `<stem>.safetensors`, or with max_shard_bytes the shards `<stem>-0000i-of-0000n.safetensors`
    and `<stem>.safetensors.index.json`, as diffusers names them. Native files hold the `net.` names
    only (no `_extra_state`, counters or RoPE buffers). Returns the file to load back."""
    state = model.state_dict()
    tensors = {name: state[param].detach().contiguous() for name, param in layout_names(model, layout).items()}
    return write_safetensors(tensors, directory, stem, max_shard_bytes)
