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
