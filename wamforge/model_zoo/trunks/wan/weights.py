"""Load and save WanDiT weights as safetensors, in diffusers' layout or the official Wan one.

wamforge's parameter names are diffusers' `WanTransformer3DModel` names, so the "diffusers" layout
is the model's own state dict. The "native" layout is the Wan2.1/2.2 repository's `WanModel`
(`self_attn.q`, `head.modulation`, ...); the rename rules below mirror diffusers'
`convert_wan_transformer_to_diffusers` and no tensor changes shape. Only safetensors are read:
pickled checkpoints can run code on load.

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

# (diffusers / wamforge pattern, native replacement), applied in order to a full parameter name
_TO_NATIVE = [
    # I2V / FLF2V image embedder (Wan's MLPProj); first, so the rules below never see its norm2
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"^condition_embedder\.image_embedder\.pos_embed$", "img_emb.emb_pos"),
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"\.attn1\.", ".self_attn."),
    (r"\.attn2\.", ".cross_attn."),
    (r"\.to_([qkv])\.", r".\1."),
    (r"\.to_out\.0\.", ".o."),
    (r"\.add_k_proj\.", ".k_img."),  # I2V cross-attention to the image tokens
    (r"\.add_v_proj\.", ".v_img."),
    (r"\.norm_added_k\.", ".norm_k_img."),
    (r"\.norm2\.", ".norm3."),  # the affine LayerNorm before cross-attention is norm3 in Wan
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
    (r"\.scale_shift_table$", ".modulation"),
]
# ComfyUI-style single-file exports put the whole native model under this prefix
_NATIVE_PREFIX = "model.diffusion_model."


def native_name(name: str) -> str:
    """A wamforge / diffusers parameter name in the official Wan layout."""
    for pattern, replacement in _TO_NATIVE:
        name = re.sub(pattern, replacement, name)
    return name


def layout_names(model: nn.Module, layout: Layout) -> dict[str, str]:
    """{checkpoint name in `layout`: model parameter name}."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    names = list(model.state_dict())
    return {native_name(n) if layout == "native" else n: n for n in names}


def detect_layout(names) -> Layout:
    names = set(names)
    if "head.modulation" in names:
        return "native"
    if "scale_shift_table" in names:
        return "diffusers"
    raise ValueError("cannot tell the layout: neither head.modulation (native) nor scale_shift_table "
                     "(diffusers) is in the checkpoint")


def load_wan_weights(model: nn.Module, path: str | Path, layout: Layout | Literal["auto"] = "auto",
                     partial: bool = False) -> LoadReport:
    """Copy a checkpoint into `model` (cast to each parameter's dtype).

    Missing, unexpected or mis-shaped tensors raise a KeyError naming them, before anything is
    copied; with partial=True the rest is loaded and the report lists what was skipped.
    """
    files = checkpoint_files(path)
    prefix = _NATIVE_PREFIX if all(name.startswith(_NATIVE_PREFIX) for name in files) else ""
    stored = {name[len(prefix):]: name for name in files}
    layout = detect_layout(stored) if layout == "auto" else layout
    return load_named(model, files, stored, layout_names(model, layout), LoadReport(layout), path, partial)


def save_wan_weights(model: nn.Module, directory: str | Path, layout: Layout = "native",
                     max_shard_bytes: int | None = None, stem: str = "diffusion_pytorch_model") -> Path:
    """Write `<stem>.safetensors`, or with max_shard_bytes the shards `<stem>-0000i-of-0000n.safetensors`
    and `<stem>.safetensors.index.json`, as diffusers and the Wan releases name them. Returns the
    file to load back."""
    state = model.state_dict()
    tensors = {name: state[param].detach().contiguous() for name, param in layout_names(model, layout).items()}
    return write_safetensors(tensors, directory, stem, max_shard_bytes)
