"""World Action Model: a Wan-style video DiT trunk with a feature-tap flow-matching action expert.

Both the video and the actions use rectified flow in Wan's convention:
    x_t = (1 - t) * x0 + t * noise,   target velocity v = noise - x0,   t in [0, 1].
The current observation (with any past context frames before it) makes the first latent frames;
they are always clean (timestep 0 on their tokens, as in Wan2.2 TI2V) and only the future latent
frames are noised and scored.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from wamforge.config.schema import ModelConfig, TextConfig, TimestepConfig
from wamforge.data_pipeline.schema import Batch
from wamforge.data_pipeline.video import pixels_to_unit
from wamforge.model_zoo.heads import ActionExpert, EmbodimentBank
from wamforge.model_zoo.encoders.byte_text import ByteTextEncoder
from wamforge.model_zoo.common.timesteps import sample_timesteps
from wamforge.model_zoo.trunks import WanDiT
from wamforge.model_zoo.vae import encode_views, make_vae

NUM_TRAIN_TIMESTEPS = 1000  # the DiT and the expert take t * 1000, Wan's timestep scale
PURE_NOISE_PROB = 0.25  # joint objective: share of samples whose future video is pure noise
OBJECTIVES = ("video", "joint", "action")


def frozen_text_encoder(cfg: TextConfig) -> nn.Module:
    from wamforge.model_zoo.encoders.t5 import T5TextEncoder
    from wamforge.model_zoo.encoders.text_cache import CachedTextEncoder

    encoder = T5TextEncoder(cfg.path, cfg.max_tokens)
    if encoder.dim != cfg.dim:
        raise ValueError(f"text.dim is {cfg.dim} but the checkpoint in {cfg.path} has d_model {encoder.dim}")
    return CachedTextEncoder(encoder, cfg.cache_dir) if cfg.cache_dir else encoder


class WorldActionModel(nn.Module):
    def __init__(self, cfg: ModelConfig, num_embodiments: int, clip_frames: int,
                 resolution: tuple[int, int], views: int = 1, context_frames: int = 0,
                 partitioned: AbstractContextManager = nullcontext()):
        """`partitioned`: the context the trunk and the action expert, the parts that grow to
        billions of weights, are built in (ZeRO-3's `zero.Init`: each rank allocates its share only)."""
        super().__init__()
        trunk = cfg.trunk
        if trunk.patch[0] != 1:
            raise ValueError("the clean current frame needs tokens of its own: trunk.patch[0] must be 1")
        height, width = resolution
        cell_h, cell_w = cfg.vae.spatial * trunk.patch[1], cfg.vae.spatial * trunk.patch[2]
        if height % cell_h or (views * width) % cell_w:
            raise ValueError(f"resolution {height}x{width} with {views} view(s) tiled along width must be "
                             f"divisible by VAE stride x patch = {cell_h}x{cell_w}")
        self.tap_layer = trunk.tap_layer
        self.flow_shift = cfg.flow_shift
        self.horizon = cfg.action_expert.horizon

        self.vae = make_vae(cfg.vae)
        self.latent_frames = self.vae.latent_frames(clip_frames)
        self.clean_latents = self.vae.latent_frames(context_frames + 1)  # context + current frame
        if cfg.text.encoder == "t5":
            # frozen and outside the module tree: never trained, sharded, cast or checkpointed
            self.__dict__["frozen_text_encoder"] = frozen_text_encoder(cfg.text)
        else:
            self.text_encoder = ByteTextEncoder(cfg.text.dim, cfg.text.max_tokens)
        with partitioned:
            self.trunk = WanDiT(self.vae.latent_channels, trunk.dim, trunk.layers, trunk.heads, trunk.ffn_dim,
                                text_dim=cfg.text.dim, patch=trunk.patch, qk_norm=trunk.qk_norm)
            self.action_expert = ActionExpert(cfg.action_expert, context_dim=trunk.dim)
        self.trunk.gradient_checkpointing = trunk.activation_checkpointing
        self.embodiments = EmbodimentBank(num_embodiments, cfg.max_action_dim, cfg.max_proprio_dim,
                                          cfg.action_expert.dim)

    @classmethod
    def for_experiment(cls, cfg, num_embodiments: int,
                       partitioned: AbstractContextManager = nullcontext()) -> "WorldActionModel":
        """The model an experiment config (its model and data sections) describes."""
        return cls(cfg.model, num_embodiments, clip_frames=cfg.data.clip_frames,
                   resolution=tuple(cfg.data.resolution), context_frames=cfg.data.context_frames,
                   partitioned=partitioned)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """[B, T, V, 3, H, W], uint8 pixels or float in [-1, 1] -> latents [B, C, F, h, w]."""
        return encode_views(self.vae, pixels_to_unit(video).to(self.trunk.patch_embedding.weight.dtype))

    def _sample_time(self, modality: str, batch: int, device, timesteps: dict | None) -> torch.Tensor:
        default = TimestepConfig(kind="shifted", shift=self.flow_shift) if modality == "video" else TimestepConfig()
        return sample_timesteps((timesteps or {}).get(modality, default), batch, device)

    def _run_trunk(self, latents: torch.Tensor, future_t: torch.Tensor, text: list[str],
                   tap_layer: int | None, stop_at_tap: bool):
        """Per-token timesteps: 0 on the context and current frames' tokens, future_t [B] on the rest."""
        frames, height, width = latents.shape[2:]
        frame_t = future_t[:, None].repeat(1, frames)
        frame_t[:, : self.clean_latents] = 0.0
        tokens_per_frame = (height // self.trunk.patch_size[1]) * (width // self.trunk.patch_size[2])
        timestep = frame_t.repeat_interleave(tokens_per_frame, dim=1) * NUM_TRAIN_TIMESTEPS
        text_emb, text_mask = self.encode_text(text, latents.device)
        return self.trunk(latents, timestep, text_emb, text_mask, tap_layer=tap_layer, stop_at_tap=stop_at_tap)

    def encode_text(self, text: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        frozen = self.__dict__.get("frozen_text_encoder")
        if frozen is None:
            return self.text_encoder(text)
        if next(frozen.parameters()).device != device:
            frozen.to(device)
        embeddings, mask = frozen(text)
        return embeddings.to(device, self.trunk.patch_embedding.weight.dtype), mask.to(device)

    def _action_velocity(self, noisy_actions, action_mask, t, features, proprio, proprio_mask, embodiment_id):
        tokens = self.embodiments.embed_actions(noisy_actions, action_mask, embodiment_id)
        proprio_token = self.embodiments.embed_proprio(proprio, proprio_mask, embodiment_id)
        hidden = self.action_expert(tokens, proprio_token, t * NUM_TRAIN_TIMESTEPS, features)
        return self.embodiments.project_actions(hidden, embodiment_id).float()

    def _action_loss(self, batch: Batch, features: torch.Tensor, timesteps: dict | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss over every real action entry, per-sample squared-error sums [B], per-sample entry counts [B])."""
        x0 = batch.actions.float()
        real = batch.action_mask & batch.has_actions[:, None, None]
        if self.training:
            self.embodiments.record_action_dims(real, batch.embodiment_id)
        mask = real.float()
        t = self._sample_time("action", len(x0), x0.device, timesteps)[:, None, None]  # independent of the video's
        noise = torch.randn_like(x0)
        velocity = self._action_velocity((1 - t) * x0 + t * noise, mask, t[:, 0, 0], features,
                                         batch.proprio, batch.proprio_mask, batch.embodiment_id)
        squared = (velocity - (noise - x0)) ** 2 * mask
        # with no real entries this is an exact 0 that still reaches every expert weight (DeepSpeed needs that)
        return squared.sum() / mask.sum().clamp(min=1), squared.detach().sum((1, 2)), mask.sum((1, 2))

    def forward(self, batch: Batch, objective: str, loss_weights: dict[str, float],
                timesteps: dict | None = None) -> dict[str, torch.Tensor]:
        """Training engines call the module: its forward is the loss."""
        return self.loss(batch, objective, loss_weights, timesteps)

    def loss(self, batch: Batch, objective: str, loss_weights: dict[str, float],
             timesteps: dict | None = None) -> dict[str, torch.Tensor]:
        """objective: "video" (video flow loss), "joint" (video + action, independent timesteps) or
        "action" (future video is pure noise, trunk run only to the tap, action loss only).

        Besides the scalar losses, `per_sample` holds what per-source metrics need: each sample's
        video loss, and its action squared-error sum and count of real action entries."""
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective '{objective}'; expected one of {OBJECTIVES}")
        x0 = batch.latents if batch.latents is not None else self.encode_video(batch.video)
        batch_size = len(x0)
        if objective == "action":
            future_t = torch.ones(batch_size, device=x0.device)
        else:
            future_t = self._sample_time("video", batch_size, x0.device, timesteps)
        if objective == "joint":  # also learn to act from the pure-noise future seen at inference
            pure_noise = torch.rand(batch_size, device=x0.device) < PURE_NOISE_PROB
            future_t = torch.where(pure_noise, 1.0, future_t)

        # not randn_like: noise must not depend on whether x0 came strided from the VAE or contiguous from a cache
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype)
        t = future_t[:, None, None, None, None]
        c = self.clean_latents
        x_t = torch.cat([x0[:, :, :c], ((1 - t) * x0[:, :, c:] + t * noise[:, :, c:]).to(x0.dtype)], dim=2)
        prediction, features = self._run_trunk(
            x_t, future_t, batch.text, tap_layer=None if objective == "video" else self.tap_layer,
            stop_at_tap=objective == "action")

        zero, zeros = torch.zeros((), device=x0.device), torch.zeros(batch_size, device=x0.device)
        video_loss, video_per_sample = zero, zeros
        if prediction is not None:
            squared = (prediction[:, :, c:].float() - (noise - x0)[:, :, c:].float()) ** 2
            video_loss, video_per_sample = squared.mean(), squared.detach().flatten(1).mean(1)
        action_loss, action_sq, action_count = zero, zeros, zeros
        if features is not None:
            action_loss, action_sq, action_count = self._action_loss(batch, features, timesteps)
        weights = {"video": 1.0, "action": 1.0, **loss_weights}
        total = weights["video"] * video_loss + weights["action"] * action_loss
        return {"loss": total, "video_loss": video_loss.detach(), "action_loss": action_loss.detach(),
                "per_sample": {"video_loss": video_per_sample, "action_sq": action_sq, "action_count": action_count}}

    def video_tokens(self, batch: Batch) -> int:
        """Trunk tokens per sample of this batch (latent frames x patches of the tiled views)."""
        if batch.latents is not None:
            frames, height, width = batch.latents.shape[2:]
        else:
            _, _, views, _, pixel_h, pixel_w = batch.video.shape
            frames, height, width = self.latent_frames, pixel_h // self.vae.spatial_stride, views * pixel_w // self.vae.spatial_stride
        p_t, p_h, p_w = self.trunk.patch_size
        return (frames // p_t) * (height // p_h) * (width // p_w)

    @torch.no_grad()
    def sample_actions(self, video: torch.Tensor, proprio: torch.Tensor, proprio_mask: torch.Tensor,
                       embodiment_id: torch.Tensor, text: list[str], steps: int = 8,
                       generator: torch.Generator | None = None,
                       action_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Context and current frames [B, 1 + context_frames, V, 3, H, W] -> normalized action chunk [B, H, A_max].

        The trunk runs once, to the tap, on the clean frame plus pure-noise future frames; the
        expert then integrates its flow from t = 1 to 0 over the cached features. action_mask
        [B, A_max] marks the embodiment's real dims; by default, the dims seen in training.
        """
        current = self.encode_video(video)
        batch, channels, _, height, width = current.shape
        future = torch.randn((batch, channels, self.latent_frames - current.shape[2], height, width), generator=generator,
                             device=current.device).to(current.dtype)
        ones = torch.ones(batch, device=current.device)
        _, features = self._run_trunk(torch.cat([current, future], dim=2), ones, text,
                                      tap_layer=self.tap_layer, stop_at_tap=True)

        max_action_dim = self.embodiments.action_out.shape[-1]
        if action_mask is None:
            action_mask = self.embodiments.action_mask(embodiment_id)
        mask = action_mask[:, None, :].float()
        actions = torch.randn((batch, self.horizon, max_action_dim), generator=generator, device=current.device)
        for step in range(steps):
            t = ones * (1 - step / steps)
            actions = actions - self._action_velocity(actions, mask, t, features, proprio, proprio_mask,
                                                      embodiment_id) / steps
        return actions * mask
