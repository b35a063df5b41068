"""The interactive regime (survey §4.5.4): the WAM carries state across calls in a KV cache, so a call
computes only what is new while the episode's whole past stays in view (LingBot-VA, DreamZero's
closed loop). After each chunk the real observation re-grounds the state: its frame enters the cache
at t = 0 and, where the design predicted that frame, replaces the prediction.

The cache is the trunk's (`trunks/kv_cache.py`), served block-causally by frame, so a design acts
interactively exactly as it trained only when its trunk saw the frames block-causally in training:
Fast-WAM's encoder-only substrate (whose observed frames are a causal prefill by construction) or a
post-prediction head trained with `coupling.causal: true`. The regime refuses the others.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from wamforge.config.base import Strict
from wamforge.model_zoo.regimes.chunked import ChunkedControl
from wamforge.model_zoo.trunks.kv_cache import KVCache


class InteractiveConfig(Strict):
    kind: Literal["interactive"] = "interactive"
    horizon: int = Field(8, ge=1, description="H: actions per call; the cache carries everything before")
    max_frames: int = Field(64, ge=2, description="latent frames the cache may hold; an episode past it starts "
                                                  "a fresh cache from its current frame")

    def check_fits(self, model) -> None:
        if model.trunk.kind != "wan":
            raise ValueError("the interactive regime carries the episode in the trunk's KV cache, which the wan "
                             "trunk serves; use trunk kind wan")
        coupling, substrate = model.coupling, model.substrate.kind
        if coupling.kind != "post_prediction_head":
            raise ValueError(f"the interactive regime serves the observed frames from a KV cache, and "
                             f"{coupling.kind} computes its actions inside a sequence the cache does not hold; "
                             f"use regime chunked")
        if substrate == "feature.tap":
            raise ValueError("the interactive regime keeps keys and values of past frames, not the middle block "
                             "a feature.tap head reads; use regime chunked")
        if substrate == "pixel.decoded":
            raise ValueError("the interactive regime keeps latent frames in a KV cache, and pixel.decoded decodes a "
                             "whole clip to pixels each call; use regime chunked or open_loop")
        if substrate != "feature.encoder_only" and not getattr(coupling, "causal", False):
            raise ValueError(f"the interactive regime serves frames block-causally from a KV cache: train the "
                             f"{substrate} head with coupling.causal: true so that it sees frames as the cache does")


class Interactive:
    label = "Interactive"

    def __init__(self, cfg: InteractiveConfig):
        self.horizon, self.max_frames = cfg.horizon, cfg.max_frames

    def session(self, model, recompute: bool = False) -> InteractiveSession:
        return InteractiveSession(model, self.max_frames, recompute)

    def control(self, policy, execute_steps: int, action_dim: int) -> ChunkedControl:
        """The chunked loop; the state between calls lives in the policy's session (a KV cache)."""
        return ChunkedControl(policy, execute_steps, action_dim)


class InteractiveSession:
    """What an interactive policy carries from call to call: a KV cache of the episode's frames.

    Each call grounds the cache in the real observation (the frames the last call predicted give way
    to it, DreamZero's observation replacement), computes only the new frame's tokens, and reads the
    whole episode from the cache. `recompute=True` instead rebuilds the cache from every real frame
    before each trunk pass, as a model without a cache runs its whole history every pass: the same
    actions at a cost that grows with the episode (the benchmark's reference).
    """

    def __init__(self, model, max_frames: int, recompute: bool = False):
        self.model, self.max_frames, self.recompute = model, max_frames, recompute
        self.reset()

    def reset(self) -> None:
        self.cache, self.real, self.text, self.caption = KVCache(), [], None, None

    @property
    def future_frames(self) -> int:
        return 0 if getattr(self.model.substrate, "reads_observed_cache", False) else \
            self.model.latent_frames - self.model.clean_latents

    @torch.no_grad()
    def act(self, current: torch.Tensor, proprio, proprio_mask, embodiment_id, text: list[str], inference,
            generator=None, action_mask=None) -> torch.Tensor:
        """The current frame's latents [B, C, 1, h, w] -> normalized action chunk [B, H, A_max]."""
        model = self.model
        if inference.guidance != 1.0:
            raise ValueError("the interactive regime runs without classifier-free guidance: set eval.guidance to 1")
        if text != self.caption:  # the instruction's embedding is computed once per episode
            self.text, self.caption = model.encode_text(text, current.device), text
        self._ground(current)
        context = self._context(current, inference, generator)
        return model.coupling.integrate(model, {"cond": model.action_expert.prepare(context)}, proprio, proprio_mask,
                                        embodiment_id, inference, generator, action_mask)

    def _ground(self, current: torch.Tensor) -> None:
        """The real observation enters the cache at t = 0, replacing what was predicted for it."""
        trunk = self.model.trunk
        predicted = self.cache.predicted_frames
        if predicted:
            self.cache.truncate(predicted[0])
        if self.cache.frames + current.shape[2] + self.future_frames > self.max_frames:
            self.cache, self.real = KVCache(), []  # a fresh cache from this frame on: RoPE positions stay bounded
        if self.recompute:
            self.real.append(current)
            self._rebuild()
        else:
            self.cache.prefill(trunk, current, *self.text)

    def _rebuild(self) -> None:
        """recompute=True: the cache of the real frames, computed from scratch."""
        self.cache = KVCache()
        self.cache.prefill(self.model.trunk, torch.cat(self.real, dim=2), *self.text)

    def _context(self, current: torch.Tensor, inference, generator):
        model, substrate = self.model, self.model.substrate
        if getattr(substrate, "reads_observed_cache", False):
            return substrate.context(cache=self.cache)
        flow, trunk = model.backbone, model.trunk
        batch, channels, _, height, width = current.shape
        future = torch.randn((batch, channels, self.future_frames, height, width), generator=generator,
                             device=current.device).to(current.dtype)
        end = 0.0 if inference.render_future else substrate.noise
        times = flow.schedule(inference.video_steps, end=end) if end < 1.0 else [1.0]
        for t, t_next in zip(times, times[1:]):  # the future's tokens only, reading the cached past
            if self.recompute:
                self._rebuild()
            future = flow.euler(future, self.cache.append(trunk, future, t, *self.text, store=False).velocity,
                                t, t_next)
        t_end = times[-1]
        if self.recompute:
            self._rebuild()
        # a rendered prediction stays in the cache, as the persistent latent, until the real frame replaces it
        step = self.cache.append(trunk, future, t_end, *self.text, store=t_end == 0.0)
        frame_t = torch.full((batch, self.future_frames), t_end, device=current.device)
        return substrate.context(x_t=future, velocity=step.velocity, frame_t=frame_t, clean=0,
                                 patch=trunk.patch_size)
