"""KVCache: the cached interactive path against one full block-causal forward of a real tiny WanDiT."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from wamforge.model_zoo.common.attention import attention, blockwise_causal_mask
from wamforge.model_zoo.common.layers import LayerCache, TransformerBlock, apply_rotary
from wamforge.model_zoo.trunks.kv_cache import KVCache
from wamforge.model_zoo.trunks.wan.model import NUM_TRAIN_TIMESTEPS, WanDiT

TOL = dict(atol=1e-5, rtol=1e-5)
TOKENS_PER_FRAME = 4  # latents [1, 4, 4, 4, 4] with patch (1, 2, 2): 4 frames of 2 x 2 tokens


@pytest.fixture(scope="module")
def trunk() -> WanDiT:
    torch.manual_seed(0)
    model = WanDiT(4, 32, 2, 2, 64, text_dim=16, patch=(1, 2, 2), qk_norm=True).float().eval()
    nn.init.normal_(model.proj_out.weight, std=0.1)  # Wan zero-inits it: the velocity would be trivially 0
    return model


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 4, 4, 4, generator=generator)
    real_frame = torch.randn(1, 4, 1, 4, 4, generator=generator)
    text_emb = torch.randn(1, 3, 16, generator=generator)
    return latents, real_frame, text_emb


def full_forward(trunk: WanDiT, latents: torch.Tensor, frame_t: torch.Tensor, text_emb: torch.Tensor):
    """One block-causal forward of every frame through run_blocks, per-token timesteps: (velocity, hidden)."""
    grid = trunk.grid(latents)
    tokens_per_frame = grid[1] * grid[2]
    timestep = frame_t.repeat_interleave(tokens_per_frame, dim=1) * NUM_TRAIN_TIMESTEPS
    temb, timestep_proj, context = trunk.condition(timestep, text_emb)
    mask = blockwise_causal_mask([tokens_per_frame] * grid[0])
    x, _ = trunk.run_blocks(trunk.embed(latents), context, timestep_proj, trunk.rope(*grid, latents.device),
                            self_attn_mask=mask)
    return trunk.head(x, temb, grid), x


@torch.no_grad()
def test_prefill_then_append_matches_one_full_block_causal_forward(trunk, inputs):
    latents, _, text_emb = inputs
    frame_t = torch.tensor([[0.0, 0.0, 0.6, 0.3]])
    velocity, hidden = full_forward(trunk, latents, frame_t, text_emb)

    cache = KVCache()
    cache.prefill(trunk, latents[:, :, :2], text_emb)
    step = cache.append(trunk, latents[:, :, 2:], frame_t[:, 2:], text_emb)

    torch.testing.assert_close(step.hidden, hidden[:, 2 * TOKENS_PER_FRAME:], **TOL)
    torch.testing.assert_close(step.velocity, velocity[:, :, 2:], **TOL)
    assert step.velocity.abs().max() > 1e-2  # a real prediction, not the zero-init head
    # the cached frames matter: frames 2..3 alone predict something else
    alone, _ = full_forward(trunk, latents[:, :, 2:], frame_t[:, 2:], text_emb)
    assert not torch.allclose(alone, step.velocity, atol=1e-3)
    assert cache.frames == 4 and cache.observed == [True, True, False, False]
    assert cache.layers[0].k.shape == (1, 2, 4 * TOKENS_PER_FRAME, 16)


@torch.no_grad()
def test_appending_one_frame_at_a_time_equals_appending_them_together(trunk, inputs):
    latents, _, text_emb = inputs
    frame_t = torch.tensor([[0.0, 0.2, 0.5, 0.9]])
    together = KVCache().append(trunk, latents, frame_t, text_emb)

    cache = KVCache()
    steps = [cache.append(trunk, latents[:, :, f:f + 1], frame_t[:, f:f + 1], text_emb) for f in range(4)]

    torch.testing.assert_close(torch.cat([s.hidden for s in steps], dim=1), together.hidden, **TOL)
    torch.testing.assert_close(torch.cat([s.velocity for s in steps], dim=2), together.velocity, **TOL)


@torch.no_grad()
def test_replacing_the_predicted_frame_by_the_real_one_matches_a_forward_on_the_real_frame(trunk, inputs):
    latents, real_frame, text_emb = inputs
    cache = KVCache()
    cache.prefill(trunk, latents[:, :, :2], text_emb)
    cache.append(trunk, latents[:, :, 2:3], torch.tensor([[0.7]]), text_emb)  # the predicted frame 2, noisy
    assert cache.predicted_frames == [2]
    cache.replace(trunk, -1, real_frame, text_emb)
    assert cache.predicted_frames == [] and cache.frames == 3
    step = cache.append(trunk, latents[:, :, 3:], torch.tensor([[0.4]]), text_emb)

    episode = torch.cat([latents[:, :, :2], real_frame, latents[:, :, 3:]], dim=2)
    velocity, hidden = full_forward(trunk, episode, torch.tensor([[0.0, 0.0, 0.0, 0.4]]), text_emb)
    torch.testing.assert_close(step.hidden, hidden[:, 3 * TOKENS_PER_FRAME:], **TOL)
    torch.testing.assert_close(step.velocity, velocity[:, :, 3:], **TOL)
    # without the replacement frame 3 would have seen the noisy prediction
    stale, _ = full_forward(trunk, latents, torch.tensor([[0.0, 0.0, 0.7, 0.4]]), text_emb)
    assert not torch.allclose(stale[:, :, 3:], step.velocity, atol=1e-3)


@torch.no_grad()
def test_replacing_a_frame_that_later_frames_attended_to_raises(trunk, inputs):
    latents, real_frame, text_emb = inputs
    cache = KVCache()
    cache.prefill(trunk, latents[:, :, :3], text_emb)
    with pytest.raises(ValueError, match="last cached frame"):
        cache.replace(trunk, 1, real_frame, text_emb)
    assert cache.frames == 3 and cache.layers[0].tokens == 3 * TOKENS_PER_FRAME  # left as it was


@torch.no_grad()
def test_a_read_only_append_leaves_the_cache_unchanged(trunk, inputs):
    latents, _, text_emb = inputs
    cache = KVCache()
    cache.prefill(trunk, latents[:, :, :2], text_emb)
    keys = cache.layers[1].k.clone()
    first = cache.append(trunk, latents[:, :, 2:3], 0.5, text_emb, store=False)
    second = cache.append(trunk, latents[:, :, 2:3], 0.5, text_emb, store=False)  # same query, same answer
    torch.testing.assert_close(first.velocity, second.velocity, atol=0, rtol=0)
    assert cache.frames == 2 and torch.equal(cache.layers[1].k, keys)


@torch.no_grad()
def test_tokens_computed_per_append_stay_flat_while_a_full_recompute_grows(trunk, inputs):
    latents, _, text_emb = inputs
    cache = KVCache()
    full_recompute = []
    for f in range(4):
        cache.append(trunk, latents[:, :, f:f + 1], 0.0, text_emb, observed=True)
        _, hidden = full_forward(trunk, latents[:, :, :f + 1], torch.zeros(1, f + 1), text_emb)
        full_recompute.append(hidden.shape[1])
    assert cache.tokens_per_call == [TOKENS_PER_FRAME] * 4
    assert full_recompute == [TOKENS_PER_FRAME * n for n in (1, 2, 3, 4)]
    assert cache.tokens_computed == 4 * TOKENS_PER_FRAME and cache.layers[0].tokens == 4 * TOKENS_PER_FRAME


def _old_attention(attn, x, context=None, rotary=None, context_mask=None, attn_mask=None):
    """Attention.forward as it was before kv_cache (no image tokens), from the module's own weights."""
    context = x if context is None else context
    q, k, v = attn.norm_q(attn.to_q(x)), attn.norm_k(attn.to_k(context)), attn.to_v(context)
    q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))
    if rotary is not None:
        q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
    out = attention(q, k, v, key_padding_mask=context_mask, attn_mask=attn_mask)
    return attn.to_out[0](out.transpose(1, 2).flatten(2))


def _old_block(block, x, context, timestep_proj, rotary, context_mask, self_attn_mask):
    """TransformerBlock.forward as it was before kv_cache."""
    shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
        block.scale_shift_table.float() + timestep_proj.float()).unbind(dim=2)
    h = (block.norm1(x) * (1 + scale_msa) + shift_msa).type_as(x)
    x = (x.float() + _old_attention(block.attn1, h, rotary=rotary, attn_mask=self_attn_mask).float()
         * gate_msa).type_as(x)
    x = x + _old_attention(block.attn2, block.norm2(x).type_as(x), context, context_mask=context_mask)
    h = (block.norm3(x) * (1 + c_scale_msa) + c_shift_msa).type_as(x)
    return (x.float() + block.ffn(h).float() * c_gate_msa).type_as(x)


@torch.no_grad()
def test_no_kv_cache_keeps_transformer_block_outputs_bit_identical(trunk):
    blocks = []
    for _ in range(2):  # two blocks built the same way
        torch.manual_seed(3)
        blocks.append(TransformerBlock(32, 64, 2))
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(1, 8, 32, generator=generator)
    context = torch.randn(1, 3, 32, generator=generator)
    timestep_proj = torch.randn(1, 8, 6, 32, generator=generator)
    context_mask = torch.tensor([[True, True, False]])
    rotary = trunk.rope(2, 2, 2, x.device)
    mask = blockwise_causal_mask([4, 4])

    before = _old_block(blocks[0], x, context, timestep_proj, rotary, context_mask, mask)
    positional = blocks[0](x, context, timestep_proj, rotary, context_mask, mask, None)
    explicit_none = blocks[1](x, context, timestep_proj, rotary, context_mask, mask, None, kv_cache=None)
    empty_read_only = blocks[1](x, context, timestep_proj, rotary, context_mask, mask, kv_cache=LayerCache(write=False))
    for out in (positional, explicit_none, empty_read_only):
        assert torch.equal(out, before)
    assert not torch.equal(before, blocks[0](x, context, timestep_proj, rotary, context_mask, None))  # mask matters
