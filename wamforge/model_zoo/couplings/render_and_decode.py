"""Render-and-Decode (survey §3.1, §4.2.1 decoded observation futures, §4.3.3 post-prediction
decoding): the trunk denoises the whole future, the VAE decodes it to frames, and an inverse-dynamics
model reads consecutive decoded frames to produce the actions. UniPi plans a video from the first
frame and the caption and maps each pair of consecutive frames to the action between them with a
task-specific IDM; VLP plans the same way and replans every chunk.

`post_prediction_head.py` calls this procedure when its substrate `decodes_pixels`:
  video  - the trunk's flow loss on the future latents, the observed frames clean;
  action - the IDM on real consecutive frames of the clip (the batch's pixels when it carries them,
           as UniPi trains its IDM on real video; else decoded from the clean latents) against the
           real actions, MSE on the real entries; the trunk never runs;
  joint  - both, which meet nowhere: the IDM never reads the trunk's output in training.
To act: the future is denoised from t = 1 to 0 in `video_steps` Euler steps, [observed | future] is
decoded, and the IDM reads the pairs (current, f1), (f1, f2), ..., one action each, H in all.
Action k is the one taken at frame k of the chunk, so one control step must lie between two frames
(data.frame_stride 1).
"""
from __future__ import annotations

import torch

from wamforge.data_pipeline.video import pixels_to_unit


def current_frame(model, observed_latents: int) -> int:
    """Index of the current frame among the frames decoded from `observed_latents` latent frames."""
    return model.vae.temporal_stride * (observed_latents - 1)


def tile_views(video: torch.Tensor) -> torch.Tensor:
    """[B, T, V, 3, H, W] -> [B, T, 3, H, V * W] in [-1, 1]: the views side by side, as the VAE sees them."""
    b, t, v, c, h, w = video.shape
    return pixels_to_unit(video).permute(0, 1, 3, 4, 2, 5).reshape(b, t, c, h, v * w)


def actions_from_frames(model, frames: torch.Tensor, embodiment_id: torch.Tensor) -> torch.Tensor:
    """H + 1 consecutive frames [B, H + 1, 3, H_px, W_px] -> the H actions between them [B, H, A_max]."""
    hidden = model.action_expert(model.substrate.context(frames=frames))
    return model.embodiments.project_actions(hidden, embodiment_id).float()


def loss(coupling, model, batch, x0: torch.Tensor, objective: str, timesteps) -> dict:
    out = model.zero_losses(len(x0), x0.device)
    if objective != "action":
        text = model.encode_text(batch.text, x0.device)
        out["video"], out["per_sample"]["video_loss"] = coupling.video_flow_loss(model, x0, text, timesteps)
    if objective != "video":
        _regression_loss(model, batch, x0, out)
    return out


def _regression_loss(model, batch, x0: torch.Tensor, out: dict) -> None:
    if batch.video is not None:
        frames = tile_views(batch.video.to(x0.device))
    else:  # latents served from a cache: their decoding is the nearest thing to the clip's pixels
        with torch.no_grad():
            frames = model.vae.decode(x0).clamp(-1, 1)
    start = current_frame(model, model.clean_latents)
    actions = batch.actions.float()
    real = batch.action_mask & batch.has_actions[:, None, None]
    if model.training:
        model.embodiments.record_action_dims(real, batch.embodiment_id)
    mask = real.float()
    predicted = actions_from_frames(model, frames[:, start:start + model.horizon + 1], batch.embodiment_id)
    squared = (predicted - actions) ** 2 * mask
    # the IDM reads no action or proprio input, yet DeepSpeed needs a gradient on every bank weight: an exact zero
    unread = (model.embodiments.embed_actions(actions, mask, batch.embodiment_id).sum()
              + model.embodiments.embed_proprio(batch.proprio, batch.proprio_mask, batch.embodiment_id).sum())
    out["action"] = squared.sum() / mask.sum().clamp(min=1) + 0 * unread
    out["per_sample"].update(action_sq=squared.detach().sum((1, 2)), action_count=mask.sum((1, 2)))


def imagine(coupling, model, observed: torch.Tensor, text: list[str], inference, generator=None) -> torch.Tensor:
    """Observed latents [B, C, c, h, w] -> the future latents denoised to t = 0, guided by the caption
    when `inference.guidance` is not 1."""
    batch, channels, clean, height, width = observed.shape
    future = torch.randn((batch, channels, model.latent_frames - clean, height, width), generator=generator,
                         device=observed.device).to(observed.dtype)
    uncond = None if inference.guidance == 1.0 else model.encode_text([""] * batch, observed.device)
    return coupling.denoise(model, observed, future, model.encode_text(text, observed.device), 0.0,
                            inference.video_steps, inference.guidance, uncond)[0]


def act(coupling, model, observed: torch.Tensor, embodiment_id, text: list[str], inference, generator=None,
        action_mask=None) -> torch.Tensor:
    """Render the future, decode [observed | future] to frames, read one action per consecutive pair from
    the current frame on -> [B, H, A_max], zero outside the action mask."""
    future = imagine(coupling, model, observed, text, inference, generator)
    frames = model.vae.decode(torch.cat([observed, future], dim=2)).clamp(-1, 1)
    start = current_frame(model, observed.shape[2])
    actions = actions_from_frames(model, frames[:, start:start + model.horizon + 1], embodiment_id)
    mask = model.embodiments.action_mask(embodiment_id) if action_mask is None else action_mask
    return actions * mask[:, None].float()
