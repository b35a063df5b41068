"""Diffusion Policy (Chi et al., "Diffusion Policy: Visuomotor Policy Learning via Action Diffusion",
RSS 2023, arXiv 2303.04137), the CNN-based image variant: the no-future baseline WAMs are compared to.

It predicts no video. The observed frames (past context and the current frame) of every camera view go
through a ResNet-18-style encoder each (`image_encoder.py`), proprio through the embodiment bank, and
the concatenation conditions a 1-D U-Net over the action chunk (`unet1d.py`) by FiLM, with the
diffusion step. Training is DDPM with epsilon targets on a squared-cosine schedule of 100 steps;
acting runs DDIM (eta 0) in `Inference.action_steps` steps, so the chunk depends on the initial
noise alone. diffusers' DDPMScheduler and DDIMScheduler hold the schedule and the update rule.

Per-embodiment action spaces: as in the WAMs, actions are zero-padded to `max_action_dim` and masked;
the bank's per-embodiment action projections are the U-Net's first and last 1x1 convolutions.
Every parameter trains from scratch: there is no trunk, VAE or text encoder, and captions are unused
(Chi et al.'s policy is not language-conditioned).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from wamforge.config.base import Strict
from wamforge.data_pipeline.schema import Batch
from wamforge.data_pipeline.video import pixels_to_unit
from wamforge.model_zoo.baselines.image_encoder import GROUP_CHANNELS, ImageEncoder, crop
from wamforge.model_zoo.baselines.unet1d import ConditionalUnet1D
from wamforge.model_zoo.census import BaselineDesign
from wamforge.model_zoo.common.timesteps import TimestepConfig, sample_timesteps
from wamforge.model_zoo.couplings.base import Capabilities
from wamforge.model_zoo.heads import EmbodimentBank
from wamforge.model_zoo.inference import Inference
from wamforge.model_zoo.wam import Geometry, WorldActionModel


class DiffusionPolicyConfig(Strict):
    """Tiny sizes by default; Chi et al.'s own are in each description."""
    kind: Literal["diffusion_policy"] = "diffusion_policy"
    views: int = Field(1, ge=1, description="camera views; each has an image encoder of its own, as in Chi et al.")
    widths: tuple[int, ...] = Field((16, 32, 64, 128), min_length=1,
                                    description="channels of the ResNet stages (ResNet-18: 64, 128, 256, 512)")
    blocks_per_stage: int = Field(2, ge=1, description="basic residual blocks per stage (ResNet-18: 2)")
    stem_stride: Literal[1, 2, 4] = Field(1, description="4: ResNet's 7x7/2 conv and 3x3/2 max-pool; 2: the conv "
                                                         "alone; 1: neither, so small images keep a keypoint map")
    keypoints: int = Field(16, ge=1, description="spatial-softmax keypoints per image (Chi et al.: 32)")
    image_features: int = Field(32, ge=1, description="features per image after the keypoints (Chi et al.: 64)")
    crop: float = Field(0.9, gt=0, le=1, description="side of the random training crop (center crop when acting) "
                                                     "as a share of the image's (Chi et al.: 76 of 84 px)")
    down_dims: tuple[int, ...] = Field((32, 64, 128), min_length=1,
                                       description="U-Net channels per level (Chi et al.: 256, 512, 1024)")
    kernel_size: int = Field(5, ge=1, description="U-Net convolution length along the chunk (Chi et al.: 5)")
    groups: int = Field(8, ge=1, description="GroupNorm groups of the U-Net (Chi et al.: 8)")
    step_embedding: int = Field(32, ge=4, description="width of the diffusion step embedding (Chi et al.: 256)")
    train_timesteps: int = Field(100, ge=2, description="DDPM steps of the noise schedule (Chi et al.: 100)")
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    clip_sample: float | None = Field(None, gt=0, description="clip each step's predicted clean chunk to this "
                                                              "bound; Chi et al. clip to 1 on min-max scaled actions")

    @model_validator(mode="after")
    def _shapes_fit(self):
        if any(w % GROUP_CHANNELS for w in self.widths):
            raise ValueError(f"widths {list(self.widths)} must be multiples of {GROUP_CHANNELS}: the image encoder's "
                             f"GroupNorm takes groups of {GROUP_CHANNELS} channels")
        if any(d % self.groups for d in self.down_dims):
            raise ValueError(f"down_dims {list(self.down_dims)} must be multiples of groups {self.groups}")
        if self.kernel_size % 2 == 0 or self.step_embedding % 2:
            raise ValueError("kernel_size must be odd (the chunk keeps its length) and step_embedding even "
                             "(sine and cosine halves)")
        return self

    @property
    def horizon_multiple(self) -> int:
        """The U-Net halves the chunk once per level but the last: H must divide by this."""
        return 2 ** (len(self.down_dims) - 1)

    def check_fits(self, model_cfg) -> None:
        """Refuse the model settings this baseline cannot honour, before launch."""
        horizon = model_cfg.regime.horizon
        if horizon % self.horizon_multiple:
            raise ValueError(f"diffusion_policy's U-Net halves the chunk {len(self.down_dims) - 1} times, so "
                             f"model.regime.horizon {horizon} must divide by {self.horizon_multiple}; change the "
                             f"horizon or use fewer down_dims")
        if model_cfg.condition_dropout > 0:
            raise ValueError("diffusion_policy reads no caption, so there is nothing to drop: set "
                             "model.condition_dropout to 0")


class DiffusionPolicy(nn.Module):
    """The baseline as the trainer, the policy, export and plan use a WorldActionModel."""
    label = "Diffusion Policy"

    def __init__(self, cfg, geometry: Geometry, num_embodiments: int,
                 partitioned: AbstractContextManager = nullcontext()):
        """`cfg`: the model config, its `baseline` block set. `partitioned`: the context the image
        encoders and the U-Net are built in (ZeRO-3's `zero.Init`)."""
        super().__init__()
        spec: DiffusionPolicyConfig = cfg.baseline
        self.spec = spec
        self.horizon, self.max_action_dim = cfg.regime.horizon, cfg.max_action_dim
        self.condition_dropout = 0.0  # no captions: check_fits refuses any other value
        self.observed_frames = geometry.context_frames + 1
        width = spec.down_dims[0]  # the bank's action and proprio tokens enter the U-Net at its first width
        cond_dim = spec.views * self.observed_frames * spec.image_features + width
        with partitioned:
            self.obs_encoder = nn.ModuleList(
                ImageEncoder(spec.widths, spec.blocks_per_stage, spec.stem_stride, spec.keypoints, spec.image_features)
                for _ in range(spec.views))
            self.noise_predictor = ConditionalUnet1D(width, spec.down_dims, cond_dim, spec.kernel_size, spec.groups,
                                                     spec.step_embedding)
        self.embodiments = EmbodimentBank(num_embodiments, cfg.max_action_dim, cfg.max_proprio_dim, width)
        self._schedulers: dict[str, object] = {}  # diffusers' DDPM and DDIM, made when first needed

    @classmethod
    def check_experiment(cls, cfg) -> None:
        """Refuse, before building, what the trainer would otherwise ask of a trunk or a VAE."""
        if cfg.training.sequence_parallel > 1:
            raise ValueError("diffusion_policy has no trunk sequence to shard across ranks: set "
                             "training.sequence_parallel to 1")
        if "vae" in cfg.data.caches:
            raise ValueError("diffusion_policy encodes pixels with its own ResNets, but data.caches 'vae' makes "
                             "training read VAE latents instead of video: remove 'vae' from data.caches")

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(objectives=("action",), horizon=self.horizon, kv_cache=False,
                            partition_units=("obs_encoder", "noise_predictor"), samples=("policy",))

    @property
    def design(self) -> BaselineDesign:
        """Not the survey's 4-tuple: a baseline predicts no future, so it names itself instead."""
        return BaselineDesign(self.label)

    zero_losses = staticmethod(WorldActionModel.zero_losses)

    # --- the noise schedule ---

    def scheduler(self, name: Literal["ddpm", "ddim"]):
        """diffusers' scheduler of this config, imported and made on first use: building the model for
        a parameter count or a model card needs neither."""
        if name not in self._schedulers:
            from diffusers import DDIMScheduler, DDPMScheduler

            spec = self.spec
            common = dict(num_train_timesteps=spec.train_timesteps, beta_schedule=spec.beta_schedule,
                          prediction_type="epsilon", clip_sample=spec.clip_sample is not None,
                          clip_sample_range=spec.clip_sample or 1.0)
            with torch.device("cpu"):  # the schedule's own tensors, whatever device context builds the model
                self._schedulers["ddpm"] = DDPMScheduler(**common, variance_type="fixed_small")
                # trailing: the first of few steps starts from pure noise (step T - 1), as the sample does
                self._schedulers["ddim"] = DDIMScheduler(**common, set_alpha_to_one=True, steps_offset=0,
                                                         timestep_spacing="trailing")
        return self._schedulers[name]

    def training_steps(self, batch_size: int, device, timesteps: dict | None) -> torch.Tensor:
        """DDPM steps [B] in [0, T): the stage's action-time sampler (uniform by default, so uniform
        steps as in DDPM) drawn on [0, 1], where 1 is pure noise as for the WAMs, scaled to T steps."""
        u = sample_timesteps((timesteps or {}).get("action", TimestepConfig()), batch_size, device)
        total = self.spec.train_timesteps
        return (u * total).long().clamp(0, total - 1)

    # --- networks ---

    def observe(self, video: torch.Tensor, proprio: torch.Tensor, proprio_mask: torch.Tensor,
                embodiment_id: torch.Tensor) -> torch.Tensor:
        """Observed frames [B, T_obs, V, 3, H, W] (uint8, or float in [-1, 1]) and proprio [B, P_max]
        -> the U-Net's condition [B, V * T_obs * image_features + width]."""
        batch, frames, views = video.shape[:3]
        if frames != self.observed_frames:
            raise ValueError(f"diffusion_policy was built for {self.observed_frames} observed frame(s) "
                             f"(data.context_frames + 1) but got {frames}")
        if views != self.spec.views:
            raise ValueError(f"diffusion_policy was built for {self.spec.views} camera view(s) but the video has "
                             f"{views}: set model.baseline.views to {views}")
        weight = self.embodiments.action_in
        pixels = pixels_to_unit(video).to(weight.device, weight.dtype)
        features = []
        for view, encoder in enumerate(self.obs_encoder):
            images = crop(pixels[:, :, view].flatten(0, 1), self.spec.crop, random=self.training)
            features.append(encoder(images).reshape(batch, -1))  # the frames of one view side by side
        features.append(self.embodiments.embed_proprio(proprio, proprio_mask, embodiment_id)[:, 0])
        return torch.cat(features, dim=-1)

    def predict_noise(self, noisy: torch.Tensor, step: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor,
                      embodiment_id: torch.Tensor) -> torch.Tensor:
        """Noisy chunk [B, H, A_max] (padding masked on the way in) -> predicted noise [B, H, A_max], fp32."""
        tokens = self.embodiments.embed_actions(noisy, mask, embodiment_id)  # [B, H, width]
        hidden = self.noise_predictor(tokens.transpose(1, 2), step, cond).transpose(1, 2)
        return self.embodiments.project_actions(hidden, embodiment_id).float()

    # --- training ---

    def forward(self, batch: Batch, objective: str, loss_weights: dict[str, float],
                timesteps: dict | None = None) -> dict[str, torch.Tensor]:
        """Training engines call the module: its forward is the loss."""
        return self.loss(batch, objective, loss_weights, timesteps)

    def loss(self, batch: Batch, objective: str, loss_weights: dict[str, float],
             timesteps: dict | None = None) -> dict[str, torch.Tensor]:
        """DDPM's epsilon loss over the real action entries, as WorldActionModel.loss reports it: the
        video loss is an exact zero (there is no video), `per_sample` feeds the per-source metrics."""
        if objective not in self.capabilities.objectives:
            raise ValueError(f"unknown objective '{objective}'; {self.label} trains action only, since it "
                             f"predicts no video")
        if batch.video is None:
            raise ValueError("diffusion_policy needs the batch's video pixels, but it holds VAE latents: build the "
                             "data without the 'vae' cache")
        real = batch.action_mask & batch.has_actions[:, None, None]
        if self.training:
            self.embodiments.record_action_dims(real, batch.embodiment_id)
        mask = real.float()
        x0 = batch.actions.float() * mask
        cond = self.observe(batch.video[:, : self.observed_frames], batch.proprio, batch.proprio_mask,
                            batch.embodiment_id)
        steps = self.training_steps(len(x0), x0.device, timesteps)
        noise = torch.randn_like(x0)
        noisy = self.scheduler("ddpm").add_noise(x0, noise, steps)
        squared = (self.predict_noise(noisy, steps, cond, mask, batch.embodiment_id) - noise) ** 2 * mask
        out = self.zero_losses(len(x0), x0.device)
        # with no real entries this is an exact 0 that still reaches every weight (DeepSpeed needs that)
        out["action"] = squared.sum() / mask.sum().clamp(min=1)
        out["per_sample"].update(action_sq=squared.detach().sum((1, 2)), action_count=mask.sum((1, 2)))
        weights = {"video": 1.0, "action": 1.0, **loss_weights}
        total = weights["video"] * out["video"] + weights["action"] * out["action"]
        return {"loss": total, "video_loss": out["video"].detach(), "action_loss": out["action"].detach(),
                "per_sample": out["per_sample"]}

    def video_tokens(self, batch: Batch) -> int:
        """Video tokens modelled per sample: none, since no video is predicted (the metrics' video
        throughput of a baseline is 0)."""
        return 0

    # --- inference ---

    @torch.no_grad()
    def sample_actions(self, video: torch.Tensor, proprio: torch.Tensor, proprio_mask: torch.Tensor,
                       embodiment_id: torch.Tensor, text: list[str], inference: Inference = Inference(),
                       generator: torch.Generator | None = None,
                       action_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Context and current frames [B, 1 + context_frames, V, 3, H, W] -> normalized action chunk
        [B, H, A_max], zero outside action_mask [B, A_max] (by default, the dims seen in training).
        The observation is encoded once; DDIM then runs `inference.action_steps` U-Net passes."""
        if inference.guidance != 1.0:
            raise ValueError(f"{self.label} reads no caption, so there is nothing to guide: set eval.guidance to 1")
        if inference.render_future:
            raise ValueError(f"{self.label} predicts no future video to render: set eval.render_future to false")
        steps, total = inference.action_steps, self.spec.train_timesteps
        if not 1 <= steps <= total:
            raise ValueError(f"eval.flow_steps {steps} must lie in 1..{total}, the DDPM steps it was trained with")
        cond = self.observe(video, proprio, proprio_mask, embodiment_id)
        mask = (self.embodiments.action_mask(embodiment_id) if action_mask is None else action_mask)[:, None].float()
        actions = torch.randn((len(cond), self.horizon, self.max_action_dim), generator=generator, device=cond.device)
        ddim = self.scheduler("ddim")
        ddim.set_timesteps(steps)  # on the CPU, where the schedule lives: each step indexes it
        for step in ddim.timesteps.tolist():
            noise = self.predict_noise(actions, torch.full((len(cond),), step, device=cond.device), cond, mask,
                                       embodiment_id)
            actions = ddim.step(noise, step, actions, eta=0.0).prev_sample
        return actions * mask
