"""Encoders of the conditions: captions (a tiny trainable byte encoder, or a frozen T5/umT5) and
vision teachers for feature caches."""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator
from torch import nn

from wamforge.config.base import Strict


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


def build_text_encoder(cfg: TextConfig) -> nn.Module:
    if cfg.encoder == "byte":
        from wamforge.model_zoo.encoders.byte_text import ByteTextEncoder

        return ByteTextEncoder(cfg.dim, cfg.max_tokens)
    from wamforge.model_zoo.encoders.t5 import T5TextEncoder
    from wamforge.model_zoo.encoders.text_cache import CachedTextEncoder

    encoder = T5TextEncoder(cfg.path, cfg.max_tokens)
    if encoder.dim != cfg.dim:
        raise ValueError(f"text.dim is {cfg.dim} but the checkpoint in {cfg.path} has d_model {encoder.dim}")
    return CachedTextEncoder(encoder, cfg.cache_dir) if cfg.cache_dir else encoder
