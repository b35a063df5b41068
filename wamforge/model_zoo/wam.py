"""A World Action Model: the survey's 4-tuple composed on one shared trunk.

The networks: a video VAE, a caption encoder, the trunk, the coupling's heads and the
per-embodiment bank. The procedures, chosen by name from the model config: the substrate (what
the future is and what the action reads), the backbone (how it is denoised), the coupling (how
action enters and leaves: the losses and the action chunk) and the regime (how chunks meet the
control loop). Build one with `model_zoo.build.build_model`.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

import torch
from torch import nn

from wamforge.data_pipeline.schema import Batch
from wamforge.data_pipeline.video import pixels_to_unit
from wamforge.model_zoo import backbones, couplings, regimes, substrates
from wamforge.model_zoo.couplings.base import Capabilities
from wamforge.model_zoo.encoders import build_text_encoder
from wamforge.model_zoo.heads import EmbodimentBank
from wamforge.model_zoo.inference import Inference
from wamforge.model_zoo.trunks import build_trunk
from wamforge.model_zoo.vae import encode_views, make_vae


@dataclass(frozen=True)
class Geometry:
    """What the data gives every sample: clip length, past context, resolution and camera views."""
    clip_frames: int
    resolution: tuple[int, int]
    context_frames: int = 0
    views: int = 1


class WorldActionModel(nn.Module):
    def __init__(self, cfg, geometry: Geometry, num_embodiments: int,
                 partitioned: AbstractContextManager = nullcontext()):
        """`cfg`: the model config. `partitioned`: the context the parts that grow with the trunk are
        built in (ZeRO-3's `zero.Init`: each rank allocates only its share)."""
        super().__init__()
        self.substrate = substrates.REGISTRY[cfg.substrate.kind](cfg.substrate, cfg.trunk.layers)
        self.backbone = backbones.REGISTRY[cfg.backbone.kind](cfg.backbone)
        self.regime = regimes.REGISTRY[cfg.regime.kind](cfg.regime)
        self.coupling = couplings.REGISTRY[cfg.coupling.kind](cfg.coupling)
        self.horizon, self.max_action_dim = cfg.regime.horizon, cfg.max_action_dim
        self.condition_dropout = cfg.condition_dropout

        self.vae = make_vae(cfg.vae)
        self._check_geometry(cfg, geometry)
        self.latent_frames = self.vae.latent_frames(geometry.clip_frames)
        self.clean_latents = self.vae.latent_frames(geometry.context_frames + 1)  # context + current frame
        if cfg.text.encoder == "t5":
            # frozen and outside the module tree: never trained, sharded, cast or checkpointed
            self.__dict__["frozen_text_encoder"] = build_text_encoder(cfg.text)
        else:
            self.text_encoder = build_text_encoder(cfg.text)
        with partitioned:
            self.trunk = build_trunk(cfg.trunk, self.vae.latent_channels, cfg.text.dim)
        token_dim = self.coupling.build(self, partitioned)
        self.embodiments = EmbodimentBank(num_embodiments, cfg.max_action_dim, cfg.max_proprio_dim, token_dim)

    def _check_geometry(self, cfg, geometry: Geometry) -> None:
        patch = cfg.trunk.patch
        if patch[0] != 1:
            raise ValueError("the clean current frame needs tokens of its own: trunk.patch[0] must be 1")
        height, width = geometry.resolution
        cell_h, cell_w = self.vae.spatial_stride * patch[1], self.vae.spatial_stride * patch[2]
        if height % cell_h or (geometry.views * width) % cell_w:
            raise ValueError(f"resolution {height}x{width} with {geometry.views} view(s) tiled along width must be "
                             f"divisible by VAE stride x patch = {cell_h}x{cell_w}")

    @property
    def capabilities(self) -> Capabilities:
        c = self.coupling
        return Capabilities(objectives=c.objectives, horizon=self.horizon, kv_cache=hasattr(self.trunk, "run_blocks"),
                            partition_units=c.partition_units, samples=c.samples)

    @property
    def design(self) -> tuple[str, str, str, str]:
        """The survey's 4-tuple as its census spells it: (substrate, backbone, coupling, regime)."""
        return self.substrate.label, self.backbone.label, self.coupling.label, self.regime.label

    # --- parts the couplings share ---

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """[B, T, V, 3, H, W], uint8 pixels or float in [-1, 1] -> latents [B, C, F, h, w]."""
        weight = next(self.trunk.parameters())
        return encode_views(self.vae, pixels_to_unit(video).to(weight.device, weight.dtype))

    def encode_text(self, text: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        frozen = self.__dict__.get("frozen_text_encoder")
        if frozen is None:
            return self.text_encoder(text)
        if next(frozen.parameters()).device != device:
            frozen.to(device)
        embeddings, mask = frozen(text)
        return embeddings.to(device, next(self.trunk.parameters()).dtype), mask.to(device)

    def frame_times(self, future_t: torch.Tensor, frames: int) -> torch.Tensor:
        """[B] -> per latent frame [B, frames]: 0 on the observed (context and current) frames."""
        frame_t = future_t[:, None].repeat(1, frames)
        frame_t[:, : self.clean_latents] = 0.0
        return frame_t

    @staticmethod
    def zero_losses(batch_size: int, device) -> dict:
        zero, zeros = torch.zeros((), device=device), torch.zeros(batch_size, device=device)
        return {"video": zero, "action": zero,
                "per_sample": {"video_loss": zeros, "action_sq": zeros, "action_count": zeros}}

    # --- training ---

    def forward(self, batch: Batch, objective: str, loss_weights: dict[str, float],
                timesteps: dict | None = None) -> dict[str, torch.Tensor]:
        """Training engines call the module: its forward is the loss."""
        return self.loss(batch, objective, loss_weights, timesteps)

    def loss(self, batch: Batch, objective: str, loss_weights: dict[str, float],
             timesteps: dict | None = None) -> dict[str, torch.Tensor]:
        """The coupling's losses for a stage objective ("video", "joint" or "action"), weighted.

        Besides the scalar losses, `per_sample` holds what per-source metrics need: each sample's
        video loss, and its action squared-error sum and count of real action entries."""
        if objective not in self.coupling.objectives:
            raise ValueError(f"unknown objective '{objective}'; {self.coupling.label} trains "
                             f"{', '.join(self.coupling.objectives)}")
        x0 = batch.latents if batch.latents is not None else self.encode_video(batch.video)
        if self.training and self.condition_dropout > 0:  # what classifier-free guidance needs at inference
            dropped = torch.rand(len(batch.text)) < self.condition_dropout
            batch = replace(batch, text=["" if d else t for d, t in zip(dropped.tolist(), batch.text)])
        out = self.coupling.loss(self, batch, x0, objective, timesteps)
        weights = {"video": 1.0, "action": 1.0, **loss_weights}
        total = weights["video"] * out["video"] + weights["action"] * out["action"]
        return {"loss": total, "video_loss": out["video"].detach(), "action_loss": out["action"].detach(),
                "per_sample": out["per_sample"]}

    def video_tokens(self, batch: Batch) -> int:
        """Trunk tokens per sample of this batch (latent frames x patches of the tiled views)."""
        if batch.latents is not None:
            frames, height, width = batch.latents.shape[2:]
        else:
            _, _, views, _, pixel_h, pixel_w = batch.video.shape
            stride = self.vae.spatial_stride
            frames, height, width = self.latent_frames, pixel_h // stride, views * pixel_w // stride
        p_t, p_h, p_w = self.trunk.patch_size
        return (frames // p_t) * (height // p_h) * (width // p_w)

    # --- inference ---

    @torch.no_grad()
    def sample_actions(self, video: torch.Tensor, proprio: torch.Tensor, proprio_mask: torch.Tensor,
                       embodiment_id: torch.Tensor, text: list[str], inference: Inference = Inference(),
                       generator: torch.Generator | None = None,
                       action_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Context and current frames [B, 1 + context_frames, V, 3, H, W] -> normalized action chunk
        [B, H, A_max]. action_mask [B, A_max] marks the embodiment's real dims; by default, the
        dims seen in training."""
        return self.coupling.act(self, self.encode_video(video), proprio, proprio_mask, embodiment_id, text,
                                 inference, generator, action_mask)

    @torch.no_grad()
    def imagine(self, video: torch.Tensor, proprio: torch.Tensor, proprio_mask: torch.Tensor,
                embodiment_id: torch.Tensor, text: list[str], inference: Inference = Inference(),
                generator: torch.Generator | None = None) -> torch.Tensor | None:
        """Context and current frames [B, 1 + context_frames, V, 3, H, W] -> the predicted future
        decoded to pixels [B, T_future, V, 3, H, W] in [-1, 1]; None when the design predicts none."""
        observed = self.encode_video(video)
        future = self.coupling.imagine(self, observed, proprio, proprio_mask, embodiment_id, text, inference,
                                       generator)
        if future is None:
            return None
        frames = self.vae.decode(torch.cat([observed, future], dim=2)).float()  # [B, T, 3, H, V * W]
        views = video.shape[2]
        frames = frames.unflatten(-1, (views, -1)).permute(0, 1, 4, 2, 3, 5)  # views untiled
        return frames[:, video.shape[1]:].clamp(-1, 1)
