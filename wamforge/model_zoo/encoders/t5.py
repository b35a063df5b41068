"""A frozen T5 / umT5 caption encoder (Wan uses umT5-XXL), loaded from a local directory.

Same interface as ByteTextEncoder: `forward(texts) -> (embeddings [B, max_tokens, dim], mask)`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, T5EncoderModel, UMT5EncoderModel

ENCODER_CLASSES = {"t5": T5EncoderModel, "umt5": UMT5EncoderModel}
# config fields that change with the transformers version or the load call, not the encoder
VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "architectures",
                        "output_hidden_states", "output_attentions", "return_dict"}


class T5TextEncoder(nn.Module):
    """`forward(texts) -> (embeddings [B, max_tokens, dim], mask [B, max_tokens])`, mask True on real tokens.

    Texts are truncated / right-padded to exactly `max_tokens` (as Wan does, so a text's
    embedding never depends on what else is in the batch); padded positions are zeroed.
    `dtype=None` keeps the checkpoint's dtype; `.to("cuda", torch.bfloat16)` works as for any module.
    """

    def __init__(self, path: str | Path, max_tokens: int = 512, dtype: torch.dtype | None = None):
        super().__init__()
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if config.model_type not in ENCODER_CLASSES:
            raise ValueError(f"{path}: model_type {config.model_type!r} is not one of {sorted(ENCODER_CLASSES)}")
        self.model_type = config.model_type
        self.max_tokens = max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # use_safetensors=True: a directory holding only a pickle checkpoint is refused, never unpickled
        self.model = ENCODER_CLASSES[config.model_type].from_pretrained(
            path, local_files_only=True, use_safetensors=True, dtype=dtype)
        self.model.requires_grad_(False)
        self.model.eval()
        self._version_hash = self._fingerprint(config)

    def _fingerprint(self, config) -> str:
        settings = {k: v for k, v in config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
        digest.update(str(len(self.tokenizer)).encode())
        # a few values of every weight: two checkpoints with one config (e.g. a fine-tune) still differ
        for name, param in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(param.flatten()[:8].float().cpu().numpy().tobytes())
        return digest.hexdigest()[:12]

    @property
    def encoder_id(self) -> str:
        """Names encoder, version and precision, so caches never mix embeddings from different ones."""
        precision = str(self.model.dtype).removeprefix("torch.")
        return f"{self.model_type}@{self._version_hash}-{precision}"

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def train(self, mode: bool = True) -> T5TextEncoder:
        # frozen: a parent's .train() must not switch on T5's dropout
        return super().train(False)

    @torch.no_grad()
    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.model.device
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_tokens,
                                return_tensors="pt")
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device).bool()
        embeddings = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return embeddings.masked_fill(~mask.unsqueeze(-1), 0), mask
