"""A trunk started from a released video generator: `trunk.init_from: {format, path}`.

Formats:
  wan       - the Wan2.1/2.2 repository's layout (`blocks.N.self_attn.q`, `head.modulation`, ...)
  cosmos    - NVIDIA's Cosmos-Predict2 layout (`net.blocks.N.self_attn.q_proj`, ...)
  diffusers - a diffusers model folder (`config.json` + safetensors in diffusers' names), or a
              pipeline folder holding one as `transformer/`

The load is strict: every trunk tensor must come from the checkpoint, with its shape. The parts a
World Action Model adds around the trunk (coupling heads and streams, the embodiment bank, a
trainable caption encoder) start fresh; the stage's init report lists them as new
(training/stages.py). The checkpoint fixes what the trunk reads, so before launch a named size
refuses a VAE or caption encoder of other widths than the release was trained with.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch import nn

from wamforge.config.base import Strict
from wamforge.model_zoo.common.weights_io import LoadReport

FORMATS = {"wan": ("wan", "diffusers"), "cosmos": ("cosmos", "diffusers")}  # by trunk kind


class PretrainedTrunk(Strict):
    format: Literal["wan", "cosmos", "diffusers"]
    path: str


def check_format(kind: str, init: PretrainedTrunk | None) -> None:
    if init is not None and init.format not in FORMATS[kind]:
        raise ValueError(f"trunk kind {kind} loads formats {' or '.join(FORMATS[kind])}, not {init.format!r}")


def check_widths(trunk_cfg, model_cfg, latent_channels: int, text_dim: int, text_encoder: str) -> None:
    """A released size read `latent_channels`-channel latents and `text_dim`-wide caption embeddings
    from `text_encoder`: a model starting from its weights must give the same."""
    if trunk_cfg.init_from is None or trunk_cfg.size is None:
        return
    from wamforge.model_zoo.vae import latent_geometry

    channels = latent_geometry(model_cfg.vae)[0]
    if channels != latent_channels:
        raise ValueError(f"trunk.size {trunk_cfg.size} was trained on {latent_channels}-channel latents, but vae "
                         f"{model_cfg.vae.kind} gives {channels}: use the VAE the release was trained with")
    if model_cfg.text.dim != text_dim:
        raise ValueError(f"trunk.size {trunk_cfg.size} reads {text_dim}-wide caption embeddings ({text_encoder}), "
                         f"but text.dim is {model_cfg.text.dim}: use text.encoder t5 with that checkpoint")


def checkpoint_path(init: PretrainedTrunk) -> Path:
    path = Path(init.path)
    if not path.exists():
        raise FileNotFoundError(f"trunk.init_from.path {path} does not exist")
    if init.format == "diffusers" and (path / "transformer").is_dir():
        return path / "transformer"
    return path


def load_pretrained_trunk(trunk: nn.Module, kind: str, init: PretrainedTrunk) -> LoadReport:
    """The checkpoint `init` names, strictly into `trunk`; the report of what it held."""
    check_format(kind, init)
    layout = "diffusers" if init.format == "diffusers" else "native"
    if kind == "wan":
        from wamforge.model_zoo.trunks.wan.weights import load_wan_weights as load
    else:
        from wamforge.model_zoo.trunks.cosmos.weights import load_cosmos_weights as load
    return load(trunk, checkpoint_path(init), layout=layout)
