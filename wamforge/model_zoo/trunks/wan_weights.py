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

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

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


@dataclass
class LoadReport:
    layout: Layout
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model parameters the checkpoint lacks
    unexpected: list[str] = field(default_factory=list)  # checkpoint tensors with no parameter
    mismatched: list[str] = field(default_factory=list)  # "name: checkpoint shape vs model shape"

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        parts = [f"{label} ({len(names)}): {', '.join(names)}" for label, names in
                 (("missing", self.missing), ("unexpected", self.unexpected), ("shape mismatch", self.mismatched))
                 if names]
        return "; ".join(parts)


def checkpoint_files(path: str | Path) -> dict[str, Path]:
    """{tensor name: shard file} for a file, a sharded index or a folder holding one of them."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors.index.json")) or sorted(path.glob("*.safetensors"))
        if len(candidates) != 1:
            raise FileNotFoundError(f"{path} must hold exactly one safetensors index or file, found "
                                    f"{[c.name for c in candidates]}")
        path = candidates[0]
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        return {name: path.parent / shard for name, shard in weight_map.items()}
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: only safetensors checkpoints are read")
    with safe_open(path, framework="pt") as handle:
        return {name: path for name in handle.keys()}


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
    files = {name[len(prefix):]: file for name, file in files.items()}
    layout = detect_layout(files) if layout == "auto" else layout
    targets = layout_names(model, layout)
    state = model.state_dict()

    report = LoadReport(layout)
    report.missing = sorted(targets[name] for name in targets.keys() - files.keys())
    report.unexpected = sorted(files.keys() - targets.keys())
    by_file: dict[Path, list[str]] = {}
    for name in sorted(files.keys() & targets.keys()):
        by_file.setdefault(files[name], []).append(name)
    for file, names in by_file.items():
        with safe_open(file, framework="pt") as handle:
            for name in names:
                shape, wanted = tuple(handle.get_slice(prefix + name).get_shape()), tuple(state[targets[name]].shape)
                if shape != wanted:
                    report.mismatched.append(f"{name}: {shape} vs {wanted}")
    if not report.complete and not partial:
        raise KeyError(f"{path} does not fit the model ({layout} layout): {report.problems()}")

    skipped = {entry.split(":")[0] for entry in report.mismatched}
    with torch.no_grad():
        for file, names in by_file.items():
            with safe_open(file, framework="pt") as handle:
                for name in names:
                    if name not in skipped:
                        state[targets[name]].copy_(handle.get_tensor(prefix + name))
                        report.loaded.append(targets[name])
    return report


def save_wan_weights(model: nn.Module, directory: str | Path, layout: Layout = "native",
                     max_shard_bytes: int | None = None, stem: str = "diffusion_pytorch_model") -> Path:
    """Write `<stem>.safetensors`, or with max_shard_bytes the shards `<stem>-0000i-of-0000n.safetensors`
    and `<stem>.safetensors.index.json`, as diffusers and the Wan releases name them. Returns the
    file to load back."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    tensors = {name: state[param].detach().contiguous() for name, param in layout_names(model, layout).items()}
    if max_shard_bytes is None:
        target = directory / f"{stem}.safetensors"
        save_file(tensors, target, metadata={"format": "pt"})
        return target

    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensor
        shard_bytes += size
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        shard_name = f"{stem}-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / shard_name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, shard_name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    target = directory / f"{stem}.safetensors.index.json"
    target.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return target
