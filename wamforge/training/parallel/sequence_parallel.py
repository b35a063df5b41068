"""Ulysses sequence parallelism: a group of ranks shares each sample, every rank holding a slice of
its tokens.

Everything in the trunk is per token except self-attention, which DeepSpeed's
`DistributedAttention` handles with two all-to-alls: tokens-sharded -> heads-sharded (each rank
attends over the whole sequence with heads / group size heads) -> back. The tapped features and
the prediction are gathered before the heads and the loss, so every rank of a group computes the
same loss; the gather's backward sums the gradient over the group, which is what makes DeepSpeed's
mean over all ranks equal the data-parallel gradient of the group count.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from wamforge.model_zoo.common.attention import attention


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, group) -> torch.Tensor:
        ctx.dim, ctx.group = dim, group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)  # every rank's use of this slice
        size, rank = dist.get_world_size(ctx.group), dist.get_rank(ctx.group)
        return grad.chunk(size, dim=ctx.dim)[rank], None, None


class SequenceShard:
    """This rank's place in its sequence-parallel group, and the three operations the trunk needs."""

    def __init__(self, group):
        self.group = group
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)

    def split(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        if x.shape[dim] % self.size:
            raise ValueError(f"a sample has {x.shape[dim]} tokens, which do not split evenly over "
                             f"{self.size} sequence-parallel ranks; change the resolution, frames or group size")
        return x.chunk(self.size, dim=dim)[self.rank]

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return _GatherSequence.apply(x, dim, self.group)

    def self_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """q, k, v [B, heads, L_local, d] -> [B, heads, L_local, d], attending over the full sequence."""
        from deepspeed.sequence.layer import DistributedAttention

        def local(q, k, v):  # [B, L, heads / size, d]: whole sequence, this rank's heads
            out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask)
            return out.transpose(1, 2)

        ulysses = DistributedAttention(local, self.group, scatter_idx=2, gather_idx=1)
        out = ulysses(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0)
        return out.transpose(1, 2)


def sequence_groups(world_size: int, group_size: int):
    """Consecutive ranks form a group; every rank must create every group (a collective)."""
    rank, mine = dist.get_rank(), None
    for start in range(0, world_size, group_size):
        group = dist.new_group(list(range(start, start + group_size)))
        if start <= rank < start + group_size:
            mine = group
    return mine
