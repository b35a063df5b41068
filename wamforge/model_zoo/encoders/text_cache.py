"""Caches a frozen text encoder's caption embeddings, so a caption is encoded once, not every step.

Entries live in memory (bounded LRU, on CPU) and on disk as safetensors files at
`<cache_dir>/<encoder_id>/<key[:2]>/<key>.safetensors`, key = sha256(encoder_id, text).
Only a caption's real tokens are stored; batches are rebuilt in the encoder's own layout.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class CachedTextEncoder(nn.Module):
    """`forward(texts) -> (embeddings [B, max_tokens, dim], mask [B, max_tokens])`, as the wrapped encoder.

    The encoder must be frozen, name itself with `encoder_id` and right-pad every text to
    `max_tokens` with zeros (T5TextEncoder does), so a cached row is exactly what it would return.
    """

    def __init__(self, encoder: nn.Module, cache_dir: str | Path, max_memory_entries: int = 1024):
        super().__init__()
        self.encoder = encoder
        self.cache_dir = Path(cache_dir)
        self.max_memory_entries = max_memory_entries
        self.memory: OrderedDict[str, torch.Tensor] = OrderedDict()

    @staticmethod
    def key(encoder_id: str, text: str) -> str:
        return hashlib.sha256(f"{encoder_id}\0{text}".encode()).hexdigest()

    def path(self, encoder_id: str, key: str) -> Path:
        return self.cache_dir / encoder_id / key[:2] / f"{key}.safetensors"

    @torch.no_grad()
    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoder_id = self.encoder.encoder_id
        keys = [self.key(encoder_id, text) for text in texts]
        rows = {}
        for key in dict.fromkeys(keys):
            row = self.lookup(encoder_id, key)
            if row is not None:
                rows[key] = row
        # a dict also drops repeats within the batch: each distinct caption is encoded once
        uncached = {key: text for key, text in zip(keys, texts) if key not in rows}
        if uncached:
            embeddings, mask = self.encoder(list(uncached.values()))
            for key, embedding, row_mask in zip(uncached, embeddings, mask):
                rows[key] = embedding[: int(row_mask.sum())].cpu()
                self.remember(key, rows[key])
                self.write(self.path(encoder_id, key), rows[key])
        return self.assemble([rows[key] for key in keys])

    def lookup(self, encoder_id: str, key: str) -> torch.Tensor | None:
        if key in self.memory:
            self.memory.move_to_end(key)
            return self.memory[key]
        path = self.path(encoder_id, key)
        if not path.exists():
            return None
        row = load_file(path)["embedding"]
        self.remember(key, row)
        return row

    def remember(self, key: str, row: torch.Tensor) -> None:
        self.memory[key] = row
        while len(self.memory) > self.max_memory_entries:
            self.memory.popitem(last=False)

    @staticmethod
    def write(path: Path, row: torch.Tensor) -> None:
        # tmp file + os.replace: a reader (another rank, a crash) never sees a half-written entry
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(handle)
        try:
            save_file({"embedding": row.contiguous()}, tmp)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    def assemble(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.encoder.parameters()).device
        length, dim = self.encoder.max_tokens, rows[0].shape[-1]
        embeddings = torch.zeros(len(rows), length, dim, dtype=rows[0].dtype)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, row in enumerate(rows):
            embeddings[i, : len(row)] = row
            mask[i, : len(row)] = True
        return embeddings.to(device), mask.to(device)
