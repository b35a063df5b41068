import math

import pytest
import torch

from wamforge.model_zoo.common.attention import attention, blockwise_causal_mask
from wamforge.model_zoo.trunks.wan.sizes import WAN_SIZES


def reference(q, k, v, allowed):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def test_blockwise_causal_mask_layout():
    mask = blockwise_causal_mask([2, 1, 3])
    expected = torch.tensor([[1, 1, 0, 0, 0, 0]] * 2 + [[1, 1, 1, 0, 0, 0]] + [[1] * 6] * 3, dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_masks_combine_with_key_padding():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 8) for _ in range(3))
    causal = blockwise_causal_mask([2, 2, 2])
    padding = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out = attention(q, k, v, key_padding_mask=padding, attn_mask=causal)
    allowed = causal[None, None] & padding[:, None, None, :]
    torch.testing.assert_close(out, reference(q, k, v, allowed), rtol=1e-5, atol=1e-6)


def wan_tiny():
    torch.manual_seed(0)
    trunk = WAN_SIZES["tiny"].build()
    for p in trunk.parameters():  # zero-initialised heads would hide any leak
        p.data.normal_(0, 0.05)
    return trunk


@pytest.mark.parametrize("causal", [True, False])
def test_frame_causal_mask_keeps_the_past_blind_to_the_future(causal):
    trunk, frames, tokens_per_frame = wan_tiny(), 3, 4 * 4
    latents = torch.randn(1, 16, frames, 8, 8)
    text = torch.randn(1, 5, 32)
    mask = blockwise_causal_mask([tokens_per_frame] * frames) if causal else None
    before, _ = trunk(latents, torch.tensor([500.0]), text, self_attn_mask=mask)
    changed = latents.clone()
    changed[:, :, 2] += 1.0  # only the last frame changes
    after, _ = trunk(changed, torch.tensor([500.0]), text, self_attn_mask=mask)
    past_moved = (after[:, :, :2] - before[:, :, :2]).abs().max().item()
    assert (past_moved < 1e-6) if causal else (past_moved > 1e-4)


def test_action_block_cannot_see_future_video():
    torch.manual_seed(1)
    sizes = [4, 2, 4]  # current frame, action tokens, future frame
    q, k, v = (torch.randn(1, 2, sum(sizes), 8) for _ in range(3))
    mask = blockwise_causal_mask(sizes)
    out = attention(q, k, v, attn_mask=mask)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 6:] += 3.0
    v2[:, :, 6:] -= 3.0
    out2 = attention(q, k2, v2, attn_mask=mask)
    torch.testing.assert_close(out[:, :, :6], out2[:, :, :6])  # frame 0 and actions unchanged
    assert not torch.allclose(out[:, :, 6:], out2[:, :, 6:])


def rule_layouts():
    """The mask builder's patterns on a small typed sequence: 3 frames of 40 video tokens, 6 actions
    tied to frame 0, a proprio token, 3 registers and, for teacher forcing, a clean copy of the frames."""
    from wamforge.model_zoo.common.masks import Layout, Span

    video = [Span("video", 40, frame=f) for f in range(3)]
    others = [Span("action", 6, frame=0), Span("proprio", 1), Span("register", 3)]
    clean = [Span("video", 40, frame=f, clean=True) for f in range(3)]
    return {"block_causal": (Layout(video + others), [{"kind": "block_causal"}]),
            "teacher_forcing": (Layout(clean + video + others), [{"kind": "teacher_forcing"}]),
            "hide_video_from_actions": (Layout(video + others), [{"kind": "hide", "query": ["video"],
                                                                  "key": ["action", "proprio"]}]),
            "actions_see_the_first_frame_only": (Layout(video + others), [
                {"kind": "only_frames", "query": ["action"], "key": ["video"], "frames": [0]},
                {"kind": "hide", "query": ["video"], "key": ["action"]}])}


@pytest.mark.parametrize("pattern", list(rule_layouts()))
def test_flex_attention_with_a_block_mask_equals_sdpa_with_the_dense_mask(pattern):
    from pydantic import TypeAdapter

    from wamforge.model_zoo.common.attention import as_block_mask
    from wamforge.model_zoo.common.masks import MaskRule, build_mask

    layout, rules = rule_layouts()[pattern]
    dense = build_mask(layout, [TypeAdapter(MaskRule).validate_python(r) for r in rules])
    assert not dense.all()  # a real restriction
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, len(layout), 16) for _ in range(3))
    flex = attention(q, k, v, attn_mask=as_block_mask(dense, block_size=32))
    torch.testing.assert_close(flex, attention(q, k, v, attn_mask=dense), rtol=1e-5, atol=1e-5)


def test_the_wan_trunk_gives_the_same_velocity_with_flex_and_with_sdpa():
    from wamforge.model_zoo.common.attention import set_masked_attention

    trunk = wan_tiny()
    latents, text = torch.randn(1, 16, 3, 8, 8), torch.randn(1, 5, 32)
    frame_t = torch.tensor([[0.0, 0.5, 0.5]])
    tokens = trunk.grid(latents)[1] * trunk.grid(latents)[2]
    mask = blockwise_causal_mask([tokens] * 3)
    outputs = {}
    try:
        for backend in ("sdpa", "flex"):
            set_masked_attention(backend)
            with torch.no_grad():  # FlexAttention has no backward on CPU; on CUDA it has
                outputs[backend] = trunk.predict(latents, frame_t, text, self_attn_mask=mask)[0]
    finally:
        set_masked_attention("auto")
    torch.testing.assert_close(outputs["flex"], outputs["sdpa"], rtol=1e-4, atol=1e-5)


def sdpa_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    """flash_attn_varlen_func's contract, one SDPA call per [cu[i], cu[i + 1]) segment."""
    import torch.nn.functional as F

    for cu, packed, longest in ((cu_seqlens_q, q, max_seqlen_q), (cu_seqlens_k, k, max_seqlen_k)):
        assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == len(packed)
        assert longest == cu.diff().max()
    out = torch.empty_like(q)
    for i in range(len(cu_seqlens_q) - 1):
        qs, ks = slice(cu_seqlens_q[i], cu_seqlens_q[i + 1]), slice(cu_seqlens_k[i], cu_seqlens_k[i + 1])
        heads_first = (t.transpose(0, 1) for t in (q[qs], k[ks], v[ks]))  # [L, heads, d] -> [heads, L, d]
        out[qs] = F.scaled_dot_product_attention(*heads_first).transpose(0, 1)
    return out


def test_varlen_packing_equals_sdpa_with_the_dense_mask_forward_and_backward():
    import torch.nn.functional as F

    from wamforge.model_zoo.common.attention import varlen_attention

    torch.manual_seed(0)
    real = torch.tensor([7, 1, 4])  # no padding, a single real token, a caption in between
    padding = torch.arange(7) < real[:, None]
    q = torch.randn(3, 2, 5, 8, requires_grad=True)  # 5 queries per sample, 7 caption slots
    k, v = (torch.randn(3, 2, 7, 8, requires_grad=True) for _ in range(2))
    packed = varlen_attention(q, k, v, padding, kernel=sdpa_varlen)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=padding[:, None, None, :])
    torch.testing.assert_close(packed, dense, rtol=1e-5, atol=1e-6)
    grads = [torch.autograd.grad(out.square().sum(), (q, k, v)) for out in (packed, dense)]
    for ours, expected in zip(*grads):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_padded_attention_selector():
    import importlib.util

    from wamforge.model_zoo.common import attention as attention_module

    q, k, v = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    padding = torch.arange(6) < torch.tensor([[6], [3]])
    assert attention_module.padded_backend(q) == "sdpa"  # auto on CPU
    allowed = padding[:, None, None, :].expand(-1, -1, 5, -1)
    torch.testing.assert_close(attention(q, k, v, key_padding_mask=padding), reference(q, k, v, allowed))
    with pytest.raises(ValueError, match="unknown padded attention backend 'flash'"):
        attention_module.set_padded_attention("flash")
    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(RuntimeError, match="^flash_varlen attention needs the flash-attn package, which is not"):
            attention_module.set_padded_attention("flash_varlen")
    assert attention_module.padded_backend(q) == "sdpa"  # a refused choice changes nothing


def cosmos_tiny():
    from wamforge.model_zoo.trunks.cosmos.sizes import COSMOS_SIZES

    torch.manual_seed(0)
    trunk = COSMOS_SIZES["tiny"].build()
    for p in trunk.parameters():
        p.data.normal_(0, 0.05)
    return trunk


def test_both_trunks_attend_to_padded_captions_through_the_varlen_packing(monkeypatch):
    """With the reference kernel standing in for flash-attn, the trunks' caption cross-attention
    takes the varlen path and predicts what SDPA with the dense mask predicts."""
    from wamforge.model_zoo.common import attention as attention_module

    calls = []

    def kernel(*args):
        calls.append(len(args[3]) - 1)  # the samples in the call, from cu_seqlens_q
        return sdpa_varlen(*args)
    monkeypatch.setattr(attention_module, "_flash_attn_varlen_func", lambda: kernel)
    monkeypatch.setattr(attention_module, "_flash_varlen_unavailable", lambda q: None)
    torch.manual_seed(0)
    latents, text = torch.randn(2, 16, 2, 8, 8), torch.randn(2, 6, 32)
    text_mask = torch.arange(6) < torch.tensor([[5], [2]])
    runs = {"wan": lambda: wan_tiny()(latents, torch.tensor([500.0, 20.0]), text, text_mask=text_mask)[0],
            "cosmos": lambda: cosmos_tiny()(latents, torch.tensor([0.5, 0.1]), text, text_mask=text_mask,
                                            condition_mask=torch.zeros(2, 1, 2, 8, 8))[0]}
    try:
        for name, run in runs.items():
            outputs = {}
            for backend in ("sdpa", "flash_varlen"):
                attention_module.set_padded_attention(backend)
                calls.clear()
                with torch.no_grad():
                    outputs[backend] = run()
            assert calls == [2, 2], name  # one packed call of both samples per block (2 blocks)
            torch.testing.assert_close(outputs["flash_varlen"], outputs["sdpa"], rtol=1e-4, atol=1e-5)
    finally:
        attention_module.set_padded_attention("auto")
