"""Post-prediction head (survey §4.3.3): the trunk predicts, then a separate action head reads it.

The substrate says what the head reads: tapped trunk states at noise tau (`feature.tap`: mimic-video
with a cross-attention decoder on one layer, Genie Envisioner with one action block per layer) or
the predicted clean future latents (`pixel.latent`: DiT4DiT), or every block's keys and values of the
observed frames alone (`feature.encoder_only`: Fast-WAM's mixture of transformers). Training objectives:
  video  - the trunk's flow loss on the future latent frames only;
  joint  - video loss plus the action loss, the head reading the trunk at the sampled video time
           (a share `pure_noise` of samples at tau, the time it reads at inference);
  action - the future held at tau, the trunk run only as far as the head needs, action loss only.
The observed frames (context + current) are always clean: flow time 0 on their tokens.
With a substrate that `reads_observed_cache`, the action loss instead reads the keys/values the trunk
computes for the observed frames alone (a KVCache prefill, with gradients), the video loss is the same
flow loss on the future, and the action objective runs the trunk on the observed frames only.
With a substrate that `decodes_pixels` (`pixel.decoded`: UniPi, VLP) the head is an inverse-dynamics
model over decoded frames, and `render_and_decode.py` holds the procedure.
With `causal`, every trunk pass is block-causal by frame, so a frame sees only itself and earlier
frames, as a KV cache serves them (what the interactive regime needs to act as it trained).
"""
from __future__ import annotations

import functools
from typing import Literal

import torch
from pydantic import Field

from wamforge.config.base import Strict
from wamforge.model_zoo.common.attention import blockwise_causal_mask
from wamforge.model_zoo.couplings import render_and_decode
from wamforge.model_zoo.couplings.base import Coupling
from wamforge.model_zoo.heads import REGISTRY as HEADS
from wamforge.model_zoo.heads import ActionExpertConfig, HeadConfig
from wamforge.model_zoo.inference import Inference, guided
from wamforge.model_zoo.trunks.kv_cache import KVCache
from wamforge.model_zoo.trunks.wan.model import NUM_TRAIN_TIMESTEPS


class PostPredictionHeadConfig(Strict):
    kind: Literal["post_prediction_head"] = "post_prediction_head"
    head: HeadConfig = ActionExpertConfig()
    pure_noise: float = Field(0.25, ge=0, le=1, description="joint objective: share of samples whose future is at tau")
    causal: bool = Field(False, description="every trunk pass block-causal by frame, as a KV cache serves frames")

    def check_fits(self, model) -> None:
        if self.causal and model.trunk.kind == "cosmos":
            raise ValueError("coupling.causal masks the trunk's self-attention by frame, which the cosmos trunk does "
                             "not take; use trunk kind wan, or causal: false")
        decoded, idm = model.substrate.kind == "pixel.decoded", self.head.kind == "inverse_dynamics"
        if decoded and not idm:
            raise ValueError("substrate pixel.decoded hands the head decoded frames, which head kind inverse_dynamics "
                             "reads; use it, or substrate pixel.latent for a flow head on the predicted latents")
        if idm and not decoded:
            raise ValueError("head kind inverse_dynamics reads pairs of decoded frames: use substrate pixel.decoded")


class PostPredictionHead(Coupling):
    label = "Post-prediction head"
    partition_units = ("trunk", "action_expert")

    def __init__(self, cfg: PostPredictionHeadConfig):
        self.cfg = cfg
        self.layerwise = cfg.head.kind == "layerwise"

    def build(self, model, partitioned) -> int:
        head, substrate = self.cfg.head, model.substrate
        if _reads_observed_cache(substrate):  # a mixture head joins every block in the trunk's head space
            extra = substrate.head_space(model.trunk)
        else:
            extra = {"layers": substrate.layer} if self.layerwise else {}
        with partitioned:
            model.action_expert = HEADS[head.kind](head, context_dim=substrate.context_dim(model.trunk),
                                                  horizon=model.horizon, **extra)
        return head.dim

    def predict(self, model, latents, frame_t, text: tuple, **kwargs):
        """The trunk's `predict` as this coupling runs it: block-causal by frame when `causal`."""
        if self.cfg.causal:
            frames, height, width = model.trunk.grid(latents)
            kwargs["self_attn_mask"] = _frame_causal_mask(frames, height * width, latents.device)
        return model.trunk.predict(latents, frame_t, *text, **kwargs)

    # --- training ---

    def loss(self, model, batch, x0, objective, timesteps):
        if _decodes_pixels(model.substrate):
            return render_and_decode.loss(self, model, batch, x0, objective, timesteps)
        if _reads_observed_cache(model.substrate):
            return self._observed_only_loss(model, batch, x0, objective, timesteps)
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
        prediction, tapped = self.predict(model, x_t, frame_t, model.encode_text(batch.text, x0.device),
                                          taps=substrate.taps(self.layerwise) if needs_head else (), stop_at=stop_at)
        out = model.zero_losses(batch_size, x0.device)
        if objective != "action":
            squared = (prediction[:, :, clean:].float() - flow.target(x0, noise)[:, :, clean:].float()) ** 2
            out["video"], out["per_sample"]["video_loss"] = squared.mean(), squared.detach().flatten(1).mean(1)
        if needs_head:
            context = substrate.context(tapped=tapped, layerwise=self.layerwise, x_t=x_t, velocity=prediction,
                                        frame_t=frame_t, clean=clean, patch=model.trunk.patch_size)
            self._action_loss(model, batch, context, timesteps, out)
        return out

    def _observed_only_loss(self, model, batch, x0, objective, timesteps):
        """Encoder-only substrate: the video loss on the future as usual; the action loss reads the
        trunk's per-block keys/values of the observed frames alone (no future tokens, no tau)."""
        clean = model.clean_latents
        text = model.encode_text(batch.text, x0.device)
        out = model.zero_losses(len(x0), x0.device)
        if objective != "action":
            out["video"], out["per_sample"]["video_loss"] = self.video_flow_loss(model, x0, text, timesteps)
        if objective != "video":
            context = model.action_expert.prepare(self.observed_kv(model, x0[:, :, :clean], text))
            self._action_loss(model, batch, context, timesteps, out)
        return out

    def video_flow_loss(self, model, x0, text: tuple, timesteps) -> tuple[torch.Tensor, torch.Tensor]:
        """The trunk's flow loss on the future latent frames, the observed ones clean -> (mean, per sample [B])."""
        flow, clean, batch_size = model.backbone, model.clean_latents, len(x0)
        future_t = flow.sample_time("video", batch_size, x0.device, timesteps)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype)
        t = future_t[:, None, None, None, None]
        x_t = torch.cat([x0[:, :, :clean], flow.noised(x0[:, :, clean:], noise[:, :, clean:], t)], dim=2)
        prediction, _ = self.predict(model, x_t, model.frame_times(future_t, x0.shape[2]), text)
        squared = (prediction[:, :, clean:].float() - flow.target(x0, noise)[:, :, clean:].float()) ** 2
        return squared.mean(), squared.detach().flatten(1).mean(1)

    @staticmethod
    def observed_kv(model, observed: torch.Tensor, text: tuple) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Observed latents [B, C, c, h, w] (clean, t = 0) -> every trunk block's (keys, values) of their
        tokens. KVCache never calls no_grad, so in training the gradients reach the trunk through them."""
        cache = KVCache()
        cache.prefill(model.trunk, observed, *text)
        return model.substrate.context(cache=cache)

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
        cached context. With an encoder-only substrate the trunk runs once on the observed frames alone
        (a KVCache prefill at t = 0) and no future video exists: `render_future` is refused. With a
        substrate that decodes pixels, the future is rendered and an inverse-dynamics model reads it."""
        if _decodes_pixels(model.substrate):
            return render_and_decode.act(self, model, observed, embodiment_id, text, inference, generator, action_mask)
        substrate, clean = model.substrate, observed.shape[2]
        batch, channels, _, height, width = observed.shape
        observed_only = _reads_observed_cache(substrate)
        if observed_only and inference.render_future:
            raise ValueError("substrate feature.encoder_only never generates future video, so there is nothing to "
                             "render: set eval.render_future to false")
        if not observed_only:
            future = torch.randn((batch, channels, model.latent_frames - clean, height, width), generator=generator,
                                 device=observed.device).to(observed.dtype)
        end = 0.0 if inference.render_future else substrate.noise
        contexts = {}
        for key, captions in (("cond", text), ("uncond", [""] * batch)):
            if key == "uncond" and inference.guidance == 1.0:
                continue
            text_emb = model.encode_text(captions, observed.device)
            context = (self.observed_kv(model, observed, text_emb) if observed_only
                       else self._context(model, observed, future, text_emb, end, inference.video_steps))
            contexts[key] = model.action_expert.prepare(context)  # projected once, read at every step
        return self.integrate(model, contexts, proprio, proprio_mask, embodiment_id, inference, generator, action_mask)

    def integrate(self, model, contexts: dict, proprio, proprio_mask, embodiment_id, inference: Inference,
                  generator=None, action_mask=None) -> torch.Tensor:
        """The head's action flow from t = 1 to 0 in `inference.action_steps` Euler steps over prepared
        contexts ({"cond": ..., "uncond": ... only when guided}) -> normalized actions [B, H, A_max],
        zero outside `action_mask` [B, A_max] (by default, the dims the embodiment trained with)."""
        flow, batch, device = model.backbone, len(embodiment_id), proprio.device
        mask = (model.embodiments.action_mask(embodiment_id) if action_mask is None else action_mask)[:, None].float()
        actions = torch.randn((batch, model.horizon, model.max_action_dim), generator=generator, device=device)
        times = flow.schedule(inference.action_steps, shift=1.0)
        for t, t_next in zip(times, times[1:]):
            t_batch = torch.full((batch,), t, device=device)
            v = guided(lambda ctx: self.velocity(model, actions, mask, t_batch, ctx, proprio, proprio_mask,
                                                 embodiment_id), inference.guidance, contexts["cond"],
                       contexts.get("uncond"))
            actions = flow.euler(actions, v, t, t_next)
        return actions * mask

    def imagine(self, model, observed, proprio, proprio_mask, embodiment_id, text, inference: Inference,
                generator=None):
        """The future the trunk predicts, denoised to t = 0; None when the head reads the observed
        frames alone (no future is ever generated)."""
        if _decodes_pixels(model.substrate):
            return render_and_decode.imagine(self, model, observed, text, inference, generator)
        if _reads_observed_cache(model.substrate):
            return None
        batch, channels, clean, height, width = observed.shape
        future = torch.randn((batch, channels, model.latent_frames - clean, height, width), generator=generator,
                             device=observed.device).to(observed.dtype)
        return self.denoise(model, observed, future, model.encode_text(text, observed.device), 0.0,
                            inference.video_steps)[0]

    def denoise(self, model, observed, future, text: tuple, end: float, video_steps: int, guidance: float = 1.0,
                uncond: tuple | None = None):
        """The future from t = 1 down to `end` with the full trunk on [observed | future], each velocity
        guided by the caption against `uncond` when guidance is not 1 -> (future, the time it stopped at)."""
        flow, clean, batch = model.backbone, observed.shape[2], len(observed)
        times = flow.schedule(video_steps, end=end) if end < 1.0 else [1.0]
        for t, t_next in zip(times, times[1:]):
            x = torch.cat([observed, future], dim=2)
            frame_t = model.frame_times(torch.full((batch,), t, device=x.device), x.shape[2])
            velocity = guided(lambda caption: self.predict(model, x, frame_t, caption)[0], guidance, text, uncond)
            future = flow.euler(future, velocity[:, :, clean:], t, t_next)
        return future, times[-1]

    def _context(self, model, observed, future, text, end: float, video_steps: int):
        """Denoise the future from 1 to `end` with the full trunk, then read it as the head was trained to."""
        substrate, clean, batch = model.substrate, observed.shape[2], len(observed)
        future, t_end = self.denoise(model, observed, future, text, end, video_steps)
        x = torch.cat([observed, future], dim=2)
        frame_t = model.frame_times(torch.full((batch,), t_end, device=x.device), x.shape[2])
        prediction, tapped = self.predict(model, x, frame_t, text, taps=substrate.taps(self.layerwise),
                                          stop_at=None if substrate.reads_prediction else substrate.layer)
        return substrate.context(tapped=tapped, layerwise=self.layerwise, x_t=x, velocity=prediction,
                                 frame_t=frame_t, clean=clean, patch=model.trunk.patch_size)


def _reads_observed_cache(substrate) -> bool:
    """Whether the head reads the trunk's keys/values of the observed frames alone (a capability, not a kind)."""
    return getattr(substrate, "reads_observed_cache", False)


def _decodes_pixels(substrate) -> bool:
    """Whether the head reads frames the VAE decoded from the rendered future (a capability, not a kind)."""
    return getattr(substrate, "decodes_pixels", False)


@functools.lru_cache(maxsize=8)
def _frame_causal_mask(frames: int, tokens_per_frame: int, device) -> torch.Tensor:
    """Made once per token grid: every trunk pass of a clip shape reads the same mask."""
    return blockwise_causal_mask([tokens_per_frame] * frames, device)
