"""A KV cache of observed frames for a block-causal video trunk: interactive (closed-loop) inference.

What: every self-attention layer keeps the keys and values (after the q/k norm and RoPE) of the frames
seen so far, so a new frame costs only its own tokens, attending to all cached frames plus, block-causally,
to the other new frames. Frame f sees frames <= f, as under `blockwise_causal_mask([tokens_per_frame] * F)`,
so the cached path reproduces one full block-causal forward of the whole episode.

Why: prefill observed frames once; replace the predicted frame with the real observation at t = 0, as
DreamZero and LingBot-VA do after executing a chunk. The per-call cost then stays flat as an episode grows,
where recomputing the whole history would grow with it (`tokens_per_call` records this).

Usage, one control step:

    cache = KVCache()
    cache.prefill(trunk, observed_latents, text_emb)                 # once, clean frames at t = 0
    for t in schedule:                                               # denoise the next frame, read-only
        velocity, _ = cache.append(trunk, noisy, t_per_frame, text_emb, store=False)
    cache.append(trunk, predicted, t_last, text_emb)                 # optional: keep the prediction
    cache.replace(trunk, -1, real_latents, text_emb)                 # after executing: the real frame

Run it under torch.no_grad() (or inference_mode) unless gradients through the cache are wanted: stored
keys and values keep their autograd graph otherwise. The text cross-attention is recomputed per call
(cheap next to the video tokens), and sequence parallelism is not supported.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from wamforge.model_zoo.common.attention import as_block_mask, blockwise_causal_mask, masked_backend, padded_keys
from wamforge.model_zoo.common.layers import LayerCache
from wamforge.model_zoo.trunks.wan.model import NUM_TRAIN_TIMESTEPS

__all__ = ["CacheStep", "KVCache", "LayerCache"]


class CacheStep(NamedTuple):
    velocity: torch.Tensor  # [B, C, F_new, H, W], the trunk head on the new frames
    hidden: torch.Tensor  # [B, F_new * tokens_per_frame, dim], the new frames' tokens after the last block


class KVCache:
    """One LayerCache per trunk block, plus frame bookkeeping.

    Frames are token frames (the trunk's grid); `observed[i]` says whether cached slot i holds a real
    observation (True) or a prediction (False). The trunk is passed to every call (a WanDiT or any trunk
    with the same services: embed, grid, condition, rope, blocks, head) so the cache holds no module.
    """

    def __init__(self) -> None:
        self.layers: list[LayerCache] = []
        self.tokens_per_frame: int | None = None
        self.frame_shape: tuple[int, int] | None = None  # token (height, width) of a frame
        self.batch: int | None = None
        self.observed: list[bool] = []
        self.tokens_per_call: list[int] = []  # trunk tokens each call ran through the blocks

    # --- bookkeeping ---

    @property
    def frames(self) -> int:
        return len(self.observed)

    @property
    def tokens(self) -> int:
        return self.frames * (self.tokens_per_frame or 0)

    @property
    def predicted_frames(self) -> list[int]:
        return [index for index, real in enumerate(self.observed) if not real]

    @property
    def tokens_computed(self) -> int:
        """Trunk tokens computed over all calls so far."""
        return sum(self.tokens_per_call)

    def reset(self) -> None:
        """Forget every frame (a new episode); the call counter is kept."""
        self.truncate(0)
        self.tokens_per_frame = self.frame_shape = self.batch = None

    def truncate(self, frames: int) -> None:
        """Keep the first `frames` cached frames. Exact for a block-causal trunk: earlier frames never saw
        the dropped ones."""
        if not 0 <= frames <= self.frames:
            raise ValueError(f"cannot truncate a cache of {self.frames} frames to {frames}")
        for layer in self.layers:
            layer.truncate(frames * (self.tokens_per_frame or 0))
        del self.observed[frames:]

    # --- trunk calls ---

    def prefill(self, trunk: nn.Module, latents: torch.Tensor, text_emb: torch.Tensor,
                text_mask: torch.Tensor | None = None, image_emb: torch.Tensor | None = None) -> None:
        """Store observed frames latents [B, C, F, H, W] (clean, t = 0), block-causal by frame, at time
        positions after the frames already cached (none, for a fresh episode)."""
        frame_t = latents.new_zeros(latents.shape[0], trunk.grid(latents)[0], dtype=torch.float32)
        self._run(trunk, latents, frame_t, text_emb, text_mask, image_emb, store=True, observed=True, head=False)

    def append(self, trunk: nn.Module, latents: torch.Tensor, frame_t: torch.Tensor | float,
               text_emb: torch.Tensor, text_mask: torch.Tensor | None = None,
               image_emb: torch.Tensor | None = None, store: bool = True, observed: bool = False) -> CacheStep:
        """New frames latents [B, C, F_new, H, W] at flow time frame_t [B, F_new] in [0, 1] (0 clean,
        1 noise; a float for all) attend to every cached frame and block-causally to each other.

        store=False only reads the cache (the denoising steps of a chunk); store=True keeps the new frames,
        marked as predictions unless observed=True. Returns (velocity, hidden tokens) of the new frames."""
        return self._run(trunk, latents, frame_t, text_emb, text_mask, image_emb, store=store, observed=observed)

    def replace(self, trunk: nn.Module, frame_index: int, latents: torch.Tensor, text_emb: torch.Tensor,
                text_mask: torch.Tensor | None = None, image_emb: torch.Tensor | None = None) -> None:
        """Observation replacement: recompute frames frame_index.. from the real observation latents
        [B, C, F_real, H, W] at t = 0, with the frames before them as context, and overwrite their slots.

        Typically the slot is the LAST frame: the predicted frame of the chunk just executed. Only the
        last frame(s) can be replaced (frame_index + F_real == frames): every later frame attended to the
        old slot, so replacing an earlier one would leave them stale (truncate and re-append instead)."""
        index = frame_index + self.frames if frame_index < 0 else frame_index
        real_frames = trunk.grid(latents)[0]
        if not 0 <= index < self.frames or index + real_frames != self.frames:
            raise ValueError(f"replace covers the last cached frame(s) only: frames {index}..{index + real_frames - 1}"
                             f" of a cache of {self.frames}; later frames attended to the old slot, so truncate"
                             " to before it and re-append them instead")
        self.truncate(index)
        self.prefill(trunk, latents, text_emb, text_mask, image_emb)

    def _run(self, trunk: nn.Module, latents: torch.Tensor, frame_t: torch.Tensor | float,
             text_emb: torch.Tensor, text_mask: torch.Tensor | None, image_emb: torch.Tensor | None,
             store: bool, observed: bool, head: bool = True) -> CacheStep | None:
        if getattr(trunk, "sequence_shard", None) is not None:
            raise ValueError("KVCache does not support a sequence-sharded trunk")
        text_mask = padded_keys(text_mask)  # once per call, shared by every block
        grid = trunk.grid(latents)
        frames, height, width = grid
        batch = latents.shape[0]
        if self.tokens_per_frame is None:  # the first call fixes the frame layout
            self.tokens_per_frame, self.frame_shape, self.batch = height * width, (height, width), batch
            self.layers = [LayerCache() for _ in trunk.blocks]
        if (height, width) != self.frame_shape or batch != self.batch or len(self.layers) != len(trunk.blocks):
            raise ValueError(f"frames of {(height, width)} tokens, batch {batch}, {len(trunk.blocks)} blocks do not "
                             f"match the cache's {self.frame_shape}, batch {self.batch}, {len(self.layers)} layers")
        if not torch.is_tensor(frame_t):
            frame_t = torch.full((batch, frames), float(frame_t), device=latents.device)
        if frame_t.shape != (batch, frames):
            raise ValueError(f"frame_t has shape {tuple(frame_t.shape)}; expected {(batch, frames)} (per token frame)")

        per_frame, cached = self.tokens_per_frame, self.tokens
        # per-token timestep on the trunk's scale: each frame's t repeated over its tokens
        timestep = frame_t.repeat_interleave(per_frame, dim=1) * NUM_TRAIN_TIMESTEPS
        temb, timestep_proj, context = trunk.condition(timestep, text_emb)
        image_context = None
        if image_emb is not None:
            image_context = trunk.condition_embedder.image_embedder(image_emb)
        # absolute time positions: the new frames follow the cached ones (rows of a longer grid are exact)
        cos, sin = trunk.rope(self.frames + frames, height, width, latents.device)
        rotary = (cos[cached:], sin[cached:])
        # every cached frame is in the past; among the new frames, block-causal. One frame: no mask, so
        # fused unmasked kernels can serve it.
        mask = None
        if frames > 1:
            causal = blockwise_causal_mask([per_frame] * frames, device=latents.device)
            mask = torch.cat([causal.new_ones(causal.shape[0], cached), causal], dim=1)

        if mask is not None and masked_backend(latents.device) == "flex":
            mask = as_block_mask(mask)
        x = trunk.embed(latents)
        for block, layer in zip(trunk.blocks, self.layers):
            layer.write = store
            x = block(x, context, timestep_proj, rotary, text_mask, mask, image_context, kv_cache=layer)
        self.tokens_per_call.append(x.shape[1])
        if store:
            self.observed.extend([observed] * frames)
        return CacheStep(trunk.head(x, temb, grid), x) if head else None
