"""Declarative self-attention masks over a sequence of typed token streams.

A model lays its streams end to end (video latent tokens per frame, action, proprio, register and
query tokens, a clean copy of the video for teacher forcing) and describes the result as a
`Layout` of `Span`s. An experiment lists `MaskRule`s, e.g.

    attention: [{kind: block_causal}, {kind: hide, query: [video], key: [action]}]

and `build_mask` turns them into one bool [L, L] mask, True where a query may attend to a key: the
convention of torch SDPA and of `attention.attention(attn_mask=...)`. Mixture-of-transformers
shared attention uses the same rules over the joint sequence; a narrow expert that cross-attends
the trunk is a head's business (heads/), not a mask rule.

A rule restricts one attention layer. Over several layers information also travels through
whatever a token may see: with `hide video<-action` alone, a register that sees the actions hands
them to the video one layer later. Hide such relays too, and check with `receptive_field`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Annotated, Literal, Sequence, Union

import torch
from pydantic import Field

from wamforge.config.base import Strict


@dataclass(frozen=True)
class Span:
    """A contiguous run of tokens of one stream."""

    stream: str  # "video", "action", "proprio", "register", "query", ...
    length: int
    frame: int = -1  # the frame block the tokens belong to; -1: tied to no frame (registers, text-like tokens)
    clean: bool = False  # a clean copy (teacher forcing's conditioning copy, or observed frames)

    def __post_init__(self):
        if self.length < 0 or self.frame < -1:
            raise ValueError(f"bad span {self}: length must be >= 0 and frame >= -1")


class Layout:
    """The spans of a sequence, laid end to end, and per-token tensors [L] describing them.

    stream_id indexes `streams` (the stream names in order of first appearance); frame is -1 for
    tokens tied to no frame; clean marks clean copies.
    """

    def __init__(self, spans: Sequence[Span]):
        self.spans = tuple(spans)
        self.streams = tuple(dict.fromkeys(span.stream for span in self.spans))
        lengths = torch.tensor([span.length for span in self.spans], dtype=torch.long)

        def per_token(values, dtype) -> torch.Tensor:
            return torch.repeat_interleave(torch.tensor(values, dtype=dtype), lengths)

        self.stream_id = per_token([self.streams.index(span.stream) for span in self.spans], torch.long)
        self.frame = per_token([span.frame for span in self.spans], torch.long)
        self.clean = per_token([span.clean for span in self.spans], torch.bool)
        ends = lengths.cumsum(0).tolist()
        self.slices = tuple(slice(end - span.length, end) for span, end in zip(self.spans, ends))

    @property
    def length(self) -> int:
        return self.frame.numel()

    def __len__(self) -> int:
        return self.length

    def to(self, device) -> Layout:
        moved = copy.copy(self)
        moved.stream_id, moved.frame, moved.clean = (t.to(device) for t in (self.stream_id, self.frame, self.clean))
        return moved

    def in_streams(self, streams: Sequence[str] | None) -> torch.Tensor:
        """bool [L]: tokens of the named streams (None: every token).

        A name this layout lacks matches nothing, so one rule list serves layouts with and
        without an optional stream (proprio for an embodiment that has none).
        """
        if streams is None:
            return torch.ones_like(self.clean)
        ids = [self.streams.index(name) for name in streams if name in self.streams]
        return torch.isin(self.stream_id, torch.tensor(ids, dtype=torch.long, device=self.stream_id.device))

    def index(self, stream: str, clean: bool | None = None) -> torch.Tensor:
        """LongTensor of the positions of a stream's tokens, optionally only its clean (or noisy) ones."""
        selected = self.in_streams([stream])
        if clean is not None:
            selected = selected & (self.clean == clean)
        return selected.nonzero().flatten()


class _Rule(Strict):
    def allowed(self, layout: Layout) -> torch.Tensor:
        """bool [L, L]: what this rule lets each query see (on the layout's device)."""
        raise NotImplementedError


def _pairs(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    return query[:, None] & key[None, :]


class Full(_Rule):
    """No restriction: what an empty rule list means."""

    kind: Literal["full"] = "full"

    def allowed(self, layout: Layout) -> torch.Tensor:
        return torch.ones(layout.length, layout.length, dtype=torch.bool, device=layout.frame.device)


class BlockCausal(_Rule):
    """A query of frame f sees keys of frames <= f, among framed tokens of `streams` (None: all).

    Tokens tied to no frame (frame -1) are left alone: they see, and are seen by, everything.
    """

    kind: Literal["block_causal"] = "block_causal"
    streams: list[str] | None = None

    def allowed(self, layout: Layout) -> torch.Tensor:
        framed = layout.in_streams(self.streams) & (layout.frame >= 0)
        return ~_pairs(framed, framed) | (layout.frame[:, None] >= layout.frame[None, :])


class Hide(_Rule):
    """Queries of the `query` streams never see keys of the `key` streams (PAD, Fast-WAM: video
    never sees actions)."""

    kind: Literal["hide"] = "hide"
    query: list[str]
    key: list[str]

    def allowed(self, layout: Layout) -> torch.Tensor:
        return ~_pairs(layout.in_streams(self.query), layout.in_streams(self.key))


class OnlyFrames(_Rule):
    """Queries of the `query` streams see, among the `key` streams' tokens, only those of `frames`.

    "current" is each query's own frame (Fast-WAM: actions see only their frame's video). Key tokens
    tied to no frame are hidden too unless -1 is listed: the rule names their stream explicitly.
    """

    kind: Literal["only_frames"] = "only_frames"
    query: list[str]
    key: list[str]
    frames: list[int] | Literal["current"]

    def allowed(self, layout: Layout) -> torch.Tensor:
        if self.frames == "current":
            listed = layout.frame[:, None] == layout.frame[None, :]
        else:
            listed = torch.isin(layout.frame, torch.tensor(self.frames, device=layout.frame.device))[None, :]
        return ~_pairs(layout.in_streams(self.query), layout.in_streams(self.key)) | listed


class TeacherForcing(_Rule):
    """DreamZero's teacher forcing over a clean copy (clean=True) and the noisy blocks of the frames.

    Clean tokens never see noisy ones and are block-causal among themselves, so the clean copy is
    exactly what a causal model would have computed at inference. A noisy token of block k sees the
    clean blocks < k (its context) and the noisy tokens of block k only, so every block is denoised
    as if it were the next one generated. Any framed stream (actions of frame k) follows its block;
    tokens tied to no frame are left alone.
    """

    kind: Literal["teacher_forcing"] = "teacher_forcing"

    def allowed(self, layout: Layout) -> torch.Tensor:
        framed = layout.frame >= 0
        q_frame, k_frame = layout.frame[:, None], layout.frame[None, :]
        q_clean, k_clean = layout.clean[:, None], layout.clean[None, :]
        from_clean = k_clean & (q_frame >= k_frame)
        from_noisy = (k_clean & (q_frame > k_frame)) | (~k_clean & (q_frame == k_frame))
        return ~_pairs(framed, framed) | torch.where(q_clean, from_clean, from_noisy)


MaskRule = Annotated[Union[Full, BlockCausal, Hide, OnlyFrames, TeacherForcing], Field(discriminator="kind")]


def build_mask(layout: Layout, rules: Sequence[MaskRule], device=None) -> torch.Tensor:
    """bool [L, L], True where a query may attend to a key: all-True, ANDed with every rule."""
    layout = layout.to(device) if device is not None else layout
    mask = Full().allowed(layout)
    for rule in rules:
        mask &= rule.allowed(layout)
    # Every query keeps itself: a row with no True key is a softmax over nothing, i.e. NaN.
    mask.diagonal().fill_(True)
    return mask


def receptive_field(mask: torch.Tensor, layers: int) -> torch.Tensor:
    """bool [L, L]: [i, j] is True where token j's input can reach token i's output through
    `layers` attention layers under `mask` (other sublayers being per token, and the residual
    path keeping each token's own input, i.e. the diagonal)."""
    field = torch.eye(mask.shape[0], dtype=torch.bool, device=mask.device)
    step = mask | field
    for _ in range(layers):
        field = (step.float() @ field.float()) > 0
    return field
