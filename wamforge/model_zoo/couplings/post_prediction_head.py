"""Post-prediction head (survey §4.3.3): the trunk predicts, then a separate action head reads it.

The substrate says what the head reads: tapped trunk states at noise tau (`feature.tap`: mimic-video
with a cross-attention decoder on one layer, Genie Envisioner with one action block per layer) or
the predicted clean future latents (`pixel.latent`: DiT4DiT). Training objectives:
  video  - the trunk's flow loss on the future latent frames only;
  joint  - video loss plus the action loss, the head reading the trunk at the sampled video time
           (a share `pure_noise` of samples at tau, the time it reads at inference);
  action - the future held at tau, the trunk run only as far as the head needs, action loss only.
The observed frames (context + current) are always clean: flow time 0 on their tokens.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from wamforge.config.base import Strict
from wamforge.model_zoo.couplings.base import Coupling
from wamforge.model_zoo.heads import REGISTRY as HEADS
from wamforge.model_zoo.heads import ActionExpertConfig, HeadConfig
from wamforge.model_zoo.inference import Inference, guided
from wamforge.model_zoo.trunks.wan.model import NUM_TRAIN_TIMESTEPS


class PostPredictionHeadConfig(Strict):
    kind: Literal["post_prediction_head"] = "post_prediction_head"
    head: HeadConfig = ActionExpertConfig()
    pure_noise: float = Field(0.25, ge=0, le=1, description="joint objective: share of samples whose future is at tau")


class PostPredictionHead(Coupling):
    label = "Post-prediction head"
    partition_units = ("trunk", "action_expert")

    def __init__(self, cfg: PostPredictionHeadConfig):
        self.cfg = cfg
        self.layerwise = cfg.head.kind == "layerwise"

    def build(self, model, partitioned) -> int:
        head, substrate = self.cfg.head, model.substrate
        extra = {"layers": substrate.layer} if self.layerwise else {}
        with partitioned:
            model.action_expert = HEADS[head.kind](head, context_dim=substrate.context_dim(model.trunk),
                                                  horizon=model.horizon, **extra)
        return head.dim

    # --- training ---

    def loss(self, model, batch, x0, objective, timesteps):
        flow, substrate, clean = model.backbone, model.substrate, model.clean_latents
        batch_size = len(x0)
        tau = substrate.noise
        if objective == "action":
            future_t = torch.full((batch_size,), tau, device=x0.device)
        else:
            future_t = flow.sample_time("video", batch_size, x0.device, timesteps)
        if objective == "joint":  # also learn to act from the future as inference reads it
            pure_noise = torch.rand(batch_size, device=x0.device) < self.cfg.pure_noise
            future_t = torch.where(pure_noise, tau, future_t)

        # not randn_like: noise must not depend on whether x0 came strided from the VAE or contiguous from a cache
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype)
        t = future_t[:, None, None, None, None]
        x_t = torch.cat([x0[:, :, :clean], flow.noised(x0[:, :, clean:], noise[:, :, clean:], t)], dim=2)
        frame_t = model.frame_times(future_t, x0.shape[2])
        needs_head = objective != "video"
        stop_at = substrate.layer if objective == "action" and not substrate.reads_prediction else None
        prediction, tapped = model.trunk.predict(x_t, frame_t, *model.encode_text(batch.text, x0.device),
                                                 taps=substrate.taps(self.layerwise) if needs_head else (),
                                                 stop_at=stop_at)
        out = model.zero_losses(batch_size, x0.device)
        if objective != "action":
            squared = (prediction[:, :, clean:].float() - flow.target(x0, noise)[:, :, clean:].float()) ** 2
            out["video"], out["per_sample"]["video_loss"] = squared.mean(), squared.detach().flatten(1).mean(1)
        if needs_head:
            context = substrate.context(tapped=tapped, layerwise=self.layerwise, x_t=x_t, velocity=prediction,
                                        frame_t=frame_t, clean=clean, patch=model.trunk.patch_size)
            self._action_loss(model, batch, context, timesteps, out)
        return out

    def _action_loss(self, model, batch, context, timesteps, out) -> None:
        x0 = batch.actions.float()
        real = batch.action_mask & batch.has_actions[:, None, None]
        if model.training:
            model.embodiments.record_action_dims(real, batch.embodiment_id)
        mask = real.float()
        t = model.backbone.sample_time("action", len(x0), x0.device, timesteps)[:, None, None]  # its own time
        noise = torch.randn_like(x0)
        velocity = self.velocity(model, (1 - t) * x0 + t * noise, mask, t[:, 0, 0], context,
                                 batch.proprio, batch.proprio_mask, batch.embodiment_id)
        squared = (velocity - (noise - x0)) ** 2 * mask
        # with no real entries this is an exact 0 that still reaches every expert weight (DeepSpeed needs that)
        out["action"] = squared.sum() / mask.sum().clamp(min=1)
        out["per_sample"].update(action_sq=squared.detach().sum((1, 2)), action_count=mask.sum((1, 2)))

    @staticmethod
    def velocity(model, noisy_actions, action_mask, t, context, proprio, proprio_mask, embodiment_id):
        tokens = model.embodiments.embed_actions(noisy_actions, action_mask, embodiment_id)
        proprio_token = model.embodiments.embed_proprio(proprio, proprio_mask, embodiment_id)
        hidden = model.action_expert(tokens, proprio_token, t * NUM_TRAIN_TIMESTEPS, context)
        return model.embodiments.project_actions(hidden, embodiment_id).float()

    # --- inference ---

    def act(self, model, observed, proprio, proprio_mask, embodiment_id, text, inference: Inference,
            generator=None, action_mask=None):
        """The trunk runs once (after denoising the future to tau, or to 0 when rendering it) on the
        observed frames plus the future; the head then integrates its flow from t = 1 to 0 over the
        cached context."""
        flow, substrate, clean = model.backbone, model.substrate, observed.shape[2]
        batch, channels, _, height, width = observed.shape
        future = torch.randn((batch, channels, model.latent_frames - clean, height, width), generator=generator,
                             device=observed.device).to(observed.dtype)
        end = 0.0 if inference.render_future else substrate.noise
        contexts = {}
        for key, captions in (("cond", text), ("uncond", [""] * batch)):
            if key == "uncond" and inference.guidance == 1.0:
                continue
            context = self._context(model, observed, future, model.encode_text(captions, observed.device), end,
                                    inference.video_steps)
            contexts[key] = model.action_expert.prepare(context)  # projected once, read at every step

        mask = (model.embodiments.action_mask(embodiment_id) if action_mask is None else action_mask)[:, None].float()
        actions = torch.randn((batch, model.horizon, model.max_action_dim), generator=generator, device=observed.device)
        times = flow.schedule(inference.action_steps, shift=1.0)
        for t, t_next in zip(times, times[1:]):
            t_batch = torch.full((batch,), t, device=observed.device)
            v = guided(lambda ctx: self.velocity(model, actions, mask, t_batch, ctx, proprio, proprio_mask,
                                                 embodiment_id), inference.guidance, contexts["cond"],
                       contexts.get("uncond"))
            actions = flow.euler(actions, v, t, t_next)
        return actions * mask

    def _context(self, model, observed, future, text, end: float, video_steps: int):
        """Denoise the future from 1 to `end` with the full trunk, then read it as the head was trained to."""
        flow, substrate, clean = model.backbone, model.substrate, observed.shape[2]
        batch = len(observed)
        times = flow.schedule(video_steps, end=end) if end < 1.0 else [1.0]
        for t, t_next in zip(times, times[1:]):
            x = torch.cat([observed, future], dim=2)
            velocity, _ = model.trunk.predict(x, model.frame_times(torch.full((batch,), t, device=x.device),
                                                                    x.shape[2]), *text)
            future = flow.euler(future, velocity[:, :, clean:], t, t_next)
        x = torch.cat([observed, future], dim=2)
        frame_t = model.frame_times(torch.full((batch,), times[-1], device=x.device), x.shape[2])
        prediction, tapped = model.trunk.predict(
            x, frame_t, *text, taps=substrate.taps(self.layerwise),
            stop_at=None if substrate.reads_prediction else substrate.layer)
        return substrate.context(tapped=tapped, layerwise=self.layerwise, x_t=x, velocity=prediction,
                                 frame_t=frame_t, clean=clean, patch=model.trunk.patch_size)
