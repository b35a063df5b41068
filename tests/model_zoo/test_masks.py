"""The declarative attention-mask builder: exact masks per rule, the rule configs, and the property
that matters to a model: a token a mask hides from another cannot move that other's outputs."""
from __future__ import annotations

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from wamforge.model_zoo.common.layers import TransformerBlock
from wamforge.model_zoo.common.masks import (BlockCausal, Full, Hide, Layout, MaskRule, OnlyFrames, Span,
                                             TeacherForcing, build_mask, receptive_field)

# Tokens 0..6: video frame 0 (0, 1), video frame 1 (2, 3), actions of frame 0 (4, 5), a register (6).
TINY = Layout([Span("video", 2, frame=0), Span("video", 2, frame=1), Span("action", 2, frame=0),
               Span("register", 1)])
# Tokens 0..5, one per block: clean frame 0, clean frame 1, noisy frame 0, noisy frame 1, actions of
# frame 1, a register.
FORCED = Layout([Span("video", 1, frame=0, clean=True), Span("video", 1, frame=1, clean=True),
                 Span("video", 1, frame=0), Span("video", 1, frame=1), Span("action", 1, frame=1),
                 Span("register", 1)])


def rows(*lines: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in line] for line in lines])


def test_layout_describes_each_token_and_where_each_stream_lies():
    assert len(TINY) == 7 and TINY.streams == ("video", "action", "register")
    assert TINY.frame.tolist() == [0, 0, 1, 1, 0, 0, -1]
    assert TINY.slices == (slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 7))
    assert TINY.index("video").tolist() == [0, 1, 2, 3]
    assert FORCED.index("video", clean=True).tolist() == [0, 1]
    assert FORCED.index("video", clean=False).tolist() == [2, 3]
    assert TINY.index("proprio").numel() == 0  # an absent stream matches nothing


@pytest.mark.parametrize("layout, rules, expected", [
    (TINY, [], ["1111111"] * 7),
    (TINY, [Full()], ["1111111"] * 7),
    (TINY, [BlockCausal()], ["1100111"] * 2 + ["1111111"] * 2 + ["1100111"] * 2 + ["1111111"]),
    (TINY, [BlockCausal(streams=["video"])], ["1100111"] * 2 + ["1111111"] * 5),
    (TINY, [Hide(query=["video"], key=["action"])], ["1111001"] * 4 + ["1111111"] * 3),
    (TINY, [OnlyFrames(query=["action"], key=["video"], frames="current")],
     ["1111111"] * 4 + ["1100111"] * 2 + ["1111111"]),
    (TINY, [OnlyFrames(query=["action"], key=["video"], frames=[1])], ["1111111"] * 4 + ["0011111"] * 2 + ["1111111"]),
    (TINY, [BlockCausal(), Hide(query=["video"], key=["action"])],
     ["1100001"] * 2 + ["1111001"] * 2 + ["1100111"] * 2 + ["1111111"]),
    (FORCED, [TeacherForcing()], ["100001", "110001", "001001", "100111", "100111", "111111"]),
], ids=["no_rules", "full", "block_causal", "block_causal_video_only", "hide", "only_frames_current",
        "only_frames_listed", "rules_combine", "teacher_forcing"])
def test_each_rule_gives_its_exact_mask(layout, rules, expected):
    assert torch.equal(build_mask(layout, rules), rows(*expected))


def test_rules_commute():
    rules = [BlockCausal(), Hide(query=["video"], key=["action"]), OnlyFrames(query=["action"], key=["video"],
                                                                                frames="current")]
    assert torch.equal(build_mask(TINY, rules), build_mask(TINY, rules[::-1]))


def test_every_query_sees_at_least_itself_when_rules_hide_everything():
    mask = build_mask(TINY, [Hide(query=["video"], key=["video", "action", "register"])])
    assert torch.equal(mask[:4], torch.eye(7, dtype=torch.bool)[:4])


def test_a_register_that_sees_hidden_tokens_relays_them_a_layer_later():
    mask = build_mask(TINY, [Hide(query=["video"], key=["action"])])
    video, action = TINY.index("video"), TINY.index("action")
    assert not receptive_field(mask, 1)[video][:, action].any()
    assert receptive_field(mask, 2)[video][:, action].all()


def tokens(layout: Layout, stream: str, frame: int | None = None, clean: bool | None = None) -> torch.Tensor:
    """bool [L]: the tokens of a stream, optionally of one frame and one copy."""
    selected = torch.zeros(len(layout), dtype=torch.bool)
    selected[layout.index(stream, clean)] = True
    return selected if frame is None else selected & (layout.frame == frame)


UNREGISTERED = Layout([Span("video", 2, frame=0), Span("video", 2, frame=1), Span("action", 2, frame=0)])
FORCED_ACTIONS = Layout([Span("video", 2, frame=0, clean=True), Span("video", 2, frame=1, clean=True),
                         Span("video", 2, frame=0), Span("action", 1, frame=0),
                         Span("video", 2, frame=1), Span("action", 1, frame=1)])

# (layout, rules, the queries Q, the tokens the mask must hide from Q through every layer)
HIDING = {
    # the register is hidden from the actions too, or it would relay them to the video
    "hide": (TINY, [Hide(query=["video", "register"], key=["action"])],
             lambda l: tokens(l, "video"), lambda l: tokens(l, "action")),
    "block_causal": (UNREGISTERED, [BlockCausal()],
                     lambda l: tokens(l, "video", frame=0), lambda l: l.frame == 1),
    "only_frames_current": (UNREGISTERED, [BlockCausal(streams=["video"]),
                                           OnlyFrames(query=["action"], key=["video"], frames="current")],
                            lambda l: tokens(l, "action"), lambda l: tokens(l, "video", frame=1)),
    "teacher_forcing_clean": (FORCED_ACTIONS, [TeacherForcing()],
                              lambda l: tokens(l, "video", frame=1, clean=True), lambda l: ~l.clean),
    "teacher_forcing_noisy": (FORCED_ACTIONS, [TeacherForcing()],
                              lambda l: tokens(l, "video", frame=1, clean=False),
                              lambda l: tokens(l, "video", frame=1, clean=True) | (~l.clean & (l.frame == 0))),
}
LAYERS, DIM = 2, 16


@pytest.mark.parametrize("case", HIDING.values(), ids=HIDING.keys())
def test_changing_any_token_a_rule_hides_leaves_the_hidden_from_outputs_bit_identical(case):
    layout, rules, query_of, hidden_of = case
    mask = build_mask(layout, rules)
    queries = query_of(layout)
    reached = receptive_field(mask, LAYERS)[queries].any(0)  # inputs that can reach some output in Q
    hidden = ~reached
    assert torch.equal(hidden, hidden_of(layout))  # the mask hides what the rule is meant to hide
    seen = reached & ~queries
    assert seen.any()  # a visible token outside Q, for the control below

    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(TransformerBlock(DIM, 32, 2) for _ in range(LAYERS))
    context, timestep_proj = torch.randn(2, 3, DIM), torch.randn(2, 1, 6, DIM)
    x = torch.randn(2, len(layout), DIM)

    def outputs_at_queries(x: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            x = block(x, context, timestep_proj, self_attn_mask=mask)
        return x[:, queries]

    with torch.no_grad():
        before = outputs_at_queries(x)
        hidden_changed, seen_changed = x.clone(), x.clone()
        hidden_changed[:, hidden] += 100 * torch.randn_like(x[:, hidden])
        seen_changed[:, seen] += torch.randn_like(x[:, seen])
        assert torch.equal(outputs_at_queries(hidden_changed), before)
        assert not torch.allclose(outputs_at_queries(seen_changed), before)  # so the first check can fail


def test_rules_round_trip_from_a_yaml_list():
    config = [{"kind": "full"}, {"kind": "block_causal"}, {"kind": "block_causal", "streams": ["video"]},
              {"kind": "hide", "query": ["video"], "key": ["action"]},
              {"kind": "only_frames", "query": ["action"], "key": ["video"], "frames": "current"},
              {"kind": "only_frames", "query": ["action"], "key": ["video"], "frames": [0]},
              {"kind": "teacher_forcing"}]
    adapter = TypeAdapter(list[MaskRule])
    rules = adapter.validate_python(config)
    assert [type(rule) for rule in rules] == [Full, BlockCausal, BlockCausal, Hide, OnlyFrames, OnlyFrames,
                                              TeacherForcing]
    assert rules[5].frames == [0] and rules[2].streams == ["video"]
    assert adapter.validate_python(adapter.dump_python(rules)) == rules


@pytest.mark.parametrize("bad", [
    {"kind": "cross_attention"},
    {"kind": "hide", "query": ["video"]},
    {"kind": "hide", "query": ["video"], "key": ["action"], "both_ways": True},
    {"kind": "only_frames", "query": ["action"], "key": ["video"], "frames": "next"},
], ids=["unknown_kind", "missing_field", "unknown_field", "bad_frames"])
def test_a_malformed_rule_is_a_validation_error(bad):
    with pytest.raises(ValidationError):
        TypeAdapter(list[MaskRule]).validate_python([bad])
