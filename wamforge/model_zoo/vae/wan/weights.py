"""Load `WanVAE` weights from safetensors, in diffusers' layout or the official Wan2.1 one.

`WanVAE`'s parameter names are diffusers' `AutoencoderKLWan` names. The "native" layout is the Wan2.1
repository's `WanVAE_` (`Wan2.1_VAE.pth`, and ComfyUI's `wan_2.1_vae.safetensors`): residual blocks
are `residual.{0,2,3,6}` Sequentials, the decoder's levels are one flat `upsamples` list, and the
quant convs are `conv1` / `conv2`. The map mirrors diffusers' `convert_wan_vae_to_diffusers` but is
derived from the model, so it also holds for small configs. Only safetensors are read: pickled
`.pth` files can run code on load (convert them once, elsewhere, with safetensors' `save_file`).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from wamforge.model_zoo.vae.wan.model import WanVAE

# inside a residual block: (norm1, SiLU, conv1, norm2, SiLU, dropout, conv2) is one Sequential
_RESIDUAL = [(r"\.norm1\.", ".residual.0."), (r"\.conv1\.", ".residual.2."), (r"\.norm2\.", ".residual.3."),
             (r"\.conv2\.", ".residual.6."), (r"\.conv_shortcut\.", ".shortcut.")]
# applied after _RESIDUAL, whose `.conv1.` would otherwise catch the renamed `encoder.conv1.`
_TOP = [(r"^(encoder|decoder)\.conv_in\.", r"\1.conv1."), (r"^(encoder|decoder)\.norm_out\.", r"\1.head.0."),
        (r"^(encoder|decoder)\.conv_out\.", r"\1.head.2."), (r"^quant_conv\.", "conv1."),
        (r"^post_quant_conv\.", "conv2."), (r"^encoder\.down_blocks\.", "encoder.downsamples."),
        (r"\.mid_block\.resnets\.0\.", ".middle.0."), (r"\.mid_block\.attentions\.0\.", ".middle.1."),
        (r"\.mid_block\.resnets\.1\.", ".middle.2.")]


def native_name(name: str, num_res_blocks: int) -> str:
    """A WanVAE / diffusers parameter name in the official Wan2.1 layout."""
    for pattern, replacement in _RESIDUAL + _TOP:
        name = re.sub(pattern, replacement, name)
    # each decoder level is num_res_blocks + 1 residual blocks and then its upsampler, flattened
    per_level = num_res_blocks + 2
    name = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                  lambda m: f"decoder.upsamples.{int(m[1]) * per_level + int(m[2])}.", name)
    return re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                  lambda m: f"decoder.upsamples.{int(m[1]) * per_level + per_level - 1}.", name)


def native_names(model: WanVAE) -> dict[str, str]:
    """{official Wan2.1 name: model parameter name}."""
    num_res_blocks = len(model.decoder.up_blocks[0].resnets) - 1
    return {native_name(name, num_res_blocks): name for name in model.state_dict()}


def _checkpoint_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(f"{path} must hold exactly one .safetensors file, found {[f.name for f in files]}")
        path = files[0]
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: only .safetensors are read (pickled checkpoints can run code on load)")
    return path


def load_wan_vae(model: WanVAE, path: str | Path) -> WanVAE:
    """Fill `model` from a safetensors file (or a folder with one) in either layout, detected by name.

    Every parameter must be present and nothing else: otherwise a ValueError lists the missing and
    unexpected names (and shape mismatches). Tensors are cast to the model's dtype and device.
    """
    file = _checkpoint_file(path)
    with safe_open(file, framework="pt") as handle:
        stored = list(handle.keys())
        native = any(name.startswith(("encoder.conv1.", "encoder.downsamples.")) for name in stored)
        names = native_names(model) if native else {name: name for name in model.state_dict()}
        params = model.state_dict()
        missing = sorted(set(names) - set(stored))
        unexpected = sorted(set(stored) - set(names))
        wrong_shape = [f"{name} {list(handle.get_slice(name).get_shape())} != {list(params[names[name]].shape)}"
                       for name in sorted(set(stored) & set(names))
                       if list(handle.get_slice(name).get_shape()) != list(params[names[name]].shape)]
        if missing or unexpected or wrong_shape:
            layout = "native Wan2.1" if native else "diffusers"
            raise ValueError(f"{file} does not fit this WanVAE ({layout} layout): missing {missing}, "
                             f"unexpected {unexpected}, wrong shape {wrong_shape}")
        with torch.no_grad():
            for name in stored:
                target = params[names[name]]
                target.copy_(handle.get_tensor(name).to(device=target.device, dtype=target.dtype))
    return model


def save_wan_vae(model: WanVAE, path: str | Path, layout: str = "native") -> Path:
    """Write the weights as one safetensors file, in the "native" Wan2.1 or the "diffusers" layout."""
    if layout not in ("native", "diffusers"):
        raise ValueError(f"unknown layout {layout!r}; expected 'native' or 'diffusers'")
    state = model.state_dict()
    names = native_names(model) if layout == "native" else {name: name for name in state}
    path = Path(path)
    save_file({stored: state[name].detach().contiguous().cpu() for stored, name in names.items()}, str(path))
    return path
