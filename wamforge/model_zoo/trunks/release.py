"""A WAM's video trunk written back as a release the video ecosystem reads: a folder with
`config.json` and safetensors weights, in one of two layouts.

  diffusers - diffusers' names and config keys: `WanTransformer3DModel.from_pretrained(folder)` or
              `CosmosTransformer3DModel.from_pretrained(folder)` builds and loads it as is
  native    - the Wan2.1/2.2 repository's `WanModel` names and config (`dim`, `in_dim`, ...), or
              Cosmos-Predict2's `net.` names (its config is written in diffusers' keys, since
              Cosmos-Predict2 configures its network in code)

The trunk's state dict is read by name only (no model is built), so a 14B export needs no GPU.
`trunks/pretrained.py` reads both layouts back.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch

from wamforge.model_zoo.common.layers import FREQ_DIM
from wamforge.model_zoo.common.weights_io import write_safetensors

Layout = Literal["diffusers", "native"]
CLASS_NAMES = {"wan": "WanTransformer3DModel", "cosmos": "CosmosTransformer3DModel"}
COSMOS_MAX_SIZE = (128, 240, 240)  # diffusers' default; only learnable positions read it, which Predict2 has not


def diffusers_config(trunk_cfg, latent_channels: int, text_dim: int) -> dict:
    """The diffusers config of a trunk config at the WAM's latent and caption widths."""
    t = trunk_cfg
    if t.kind == "wan":
        shape = dict(patch_size=list(t.patch), num_attention_heads=t.heads, attention_head_dim=t.dim // t.heads,
                     in_channels=latent_channels, out_channels=latent_channels, text_dim=text_dim,
                     freq_dim=FREQ_DIM, ffn_dim=t.ffn_dim, num_layers=t.layers, cross_attn_norm=True,
                     qk_norm="rms_norm_across_heads" if t.qk_norm else None, eps=1e-6, image_dim=None,
                     added_kv_proj_dim=None, rope_max_seq_len=1024, pos_embed_seq_len=None)
    else:
        shape = dict(in_channels=latent_channels + int(t.condition_mask), out_channels=latent_channels,
                     num_attention_heads=t.heads, attention_head_dim=t.head_dim, num_layers=t.layers,
                     mlp_ratio=t.mlp_ratio, text_embed_dim=text_dim, adaln_lora_dim=t.adaln_lora_dim,
                     max_size=list(COSMOS_MAX_SIZE), patch_size=list(t.patch), rope_scale=list(t.rope_scale),
                     concat_padding_mask=True, extra_pos_embed_type=None)
    return {"_class_name": CLASS_NAMES[t.kind], **shape}


def native_config(trunk_cfg, latent_channels: int, text_dim: int, text_tokens: int) -> dict:
    """The config the native code reads: Wan's `WanModel` keys; for Cosmos, diffusers' keys."""
    t = trunk_cfg
    if t.kind != "wan":
        return diffusers_config(trunk_cfg, latent_channels, text_dim)
    return {"_class_name": "WanModel", "model_type": "t2v", "dim": t.dim, "ffn_dim": t.ffn_dim, "freq_dim": FREQ_DIM,
            "in_dim": latent_channels, "out_dim": latent_channels, "text_dim": text_dim, "text_len": text_tokens,
            "num_heads": t.heads, "num_layers": t.layers, "patch_size": list(t.patch), "qk_norm": t.qk_norm,
            "cross_attn_norm": True, "eps": 1e-6}


def layout_name(kind: str, layout: Layout):
    """Our (diffusers') parameter name -> its name in `layout`."""
    if layout == "diffusers":
        return lambda name: name
    if kind == "wan":
        from wamforge.model_zoo.trunks.wan.weights import native_name
    else:
        from wamforge.model_zoo.trunks.cosmos.weights import native_name
    return native_name


def write_release(trunk_state: dict[str, torch.Tensor], trunk_cfg, latent_channels: int, text_dim: int,
                  text_tokens: int, directory: str | Path, layout: Layout,
                  max_shard_bytes: int | None = None) -> Path:
    """The trunk's tensors (its own names, no `trunk.` prefix) as a release folder; returns the folder."""
    if layout not in ("diffusers", "native"):
        raise ValueError(f"unknown trunk layout {layout!r}; expected diffusers or native")
    directory = Path(directory)
    rename = layout_name(trunk_cfg.kind, layout)
    tensors = {rename(name): tensor.contiguous() for name, tensor in trunk_state.items()}
    stem = "model" if (layout, trunk_cfg.kind) == ("native", "cosmos") else "diffusion_pytorch_model"
    write_safetensors(tensors, directory, stem, max_shard_bytes)
    config = (diffusers_config(trunk_cfg, latent_channels, text_dim) if layout == "diffusers" else
              native_config(trunk_cfg, latent_channels, text_dim, text_tokens))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory
