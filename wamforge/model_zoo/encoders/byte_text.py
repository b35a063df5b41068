"""A tiny byte-level text encoder; T5/umT5 encoders will plug in behind the same interface."""
from __future__ import annotations

import math

import torch
from torch import nn

END_OF_TEXT = 256  # after the 256 byte values; also fills padding, which the mask hides


class ByteTextEncoder(nn.Module):
    """`forward(texts) -> (embeddings [B, L, dim], mask [B, L])`, mask True on real tokens."""

    def __init__(self, dim: int = 64, max_tokens: int = 32):
        super().__init__()
        self.max_tokens = max_tokens
        self.token_embedding = nn.Embedding(257, dim)
        self.position_embedding = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        self.layer = nn.TransformerEncoderLayer(
            dim, nhead=math.gcd(dim, 4), dim_feedforward=4 * dim, dropout=0.0,
            activation="gelu", batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(dim)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # every text ends with END_OF_TEXT, so even "" has one real token to attend to
        rows = [list(t.encode("utf-8")[: self.max_tokens - 1]) + [END_OF_TEXT] for t in texts]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), END_OF_TEXT, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        device = self.token_embedding.weight.device
        return ids.to(device), mask.to(device)

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(texts)
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        x = self.layer(x, src_key_padding_mask=~mask)
        return self.norm(x), mask
