"""Joint generation (survey §4.3.2): the future and the actions are denoised together, as one sequence.

UWM's layout on the shared trunk: `[video latent tokens | H action tokens | proprio token |
registers]`, each stream with its own per-token flow time. The observed frames (context + current)
are clean video tokens at t = 0 and the future frames noised at t_v; the actions at t_a, drawn
independently of t_v under the `hybrid` backbone (shared under `diffusion`: PAD). Action-free
samples put the action stream at pure noise, t_a = 1, as UWM's code does; their action loss is
masked (`has_actions`), because here they carry no action dimensions at all: UWM's unmasked term
would only teach the velocity of zero actions at pure noise, i.e. to copy the input noise.

Which streams are held clean picks what one trained model samples (UWM's timestep control):
  policy            - the future stays pure noise (t_v = 1), the actions are denoised;
  forward_dynamics  - the actions are given clean (t_a = 0), the future is denoised;
  inverse_dynamics  - the future is given clean (t_v = 0), the actions are denoised;
  video             - the actions stay pure noise (t_a = 1), the future is denoised;
  joint             - both are denoised together, each with its own step count.
Departures from UWM at tiny size: the current frame enters as clean latent tokens of the shared
trunk instead of a ResNet vector in AdaLN, proprio is one clean token, and the flow is rectified
flow instead of DDPM epsilon-prediction.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from wamforge.config.base import Strict
from wamforge.model_zoo.common.masks import Layout, MaskRule, Span, build_mask
from wamforge.model_zoo.common.positions import PositionScheme, stream_positions, time_band_rotary
from wamforge.model_zoo.couplings.base import Coupling
from wamforge.model_zoo.inference import Inference, guided, stream_steps
from wamforge.model_zoo.trunks.wan.model import NUM_TRAIN_TIMESTEPS

SAMPLES = ("policy", "forward_dynamics", "inverse_dynamics", "video", "joint")


class JointGenerationConfig(Strict):
    kind: Literal["joint_generation"] = "joint_generation"
    registers: int = Field(4, ge=0, description="learned register tokens appended to the sequence (UWM)")
    action_positions: PositionScheme = "learned"
    attention: list[MaskRule] = Field([], description="mask rules over the streams; none: full attention (UWM)")


class JointTokens(nn.Module):
    """The learned parts of the sequence that are neither video nor actions: registers, and the
    absolute positions of the non-video tokens when they are `learned`."""

    def __init__(self, horizon: int, registers: int, dim: int, learned_positions: bool):
        super().__init__()
        self.registers = nn.Parameter(torch.randn(1, registers, dim) * 0.02)
        rows = horizon + 1 + registers if learned_positions else 0
        self.positions = nn.Parameter(torch.randn(1, rows, dim) * 0.02) if rows else None


class JointGeneration(Coupling):
    label = "Joint generation"
    samples = SAMPLES

    def __init__(self, cfg: JointGenerationConfig):
        self.cfg = cfg

    def build(self, model, partitioned) -> int:
        if not hasattr(model.trunk, "run_blocks"):
            raise ValueError("joint_generation puts action tokens into the trunk's own sequence, which the wan "
                             "trunk serves (embed, condition, run_blocks, head); the cosmos trunk modulates per "
                             "latent frame, so use trunk kind wan")
        model.streams = JointTokens(model.horizon, self.cfg.registers, model.trunk.dim,
                                    self.cfg.action_positions == "learned")
        return model.trunk.dim

    # --- the shared forward ---

    def velocities(self, model, observed, future, t_video, actions, t_action, action_mask, proprio, proprio_mask,
                   embodiment_id, text):
        """One trunk pass over the whole sequence -> (future velocity [B, C, F_f, h, w], action velocity [B, H, A])."""
        trunk, clean = model.trunk, observed.shape[2]
        latents = torch.cat([observed, future], dim=2)
        grid = trunk.grid(latents)
        video = trunk.embed(latents)
        action_tokens = model.embodiments.embed_actions(actions, action_mask, embodiment_id)
        proprio_token = model.embodiments.embed_proprio(proprio, proprio_mask, embodiment_id)
        others = torch.cat([action_tokens, proprio_token, model.streams.registers.expand(len(video), -1, -1)], dim=1)
        if model.streams.positions is not None:
            others = others + model.streams.positions
        x = torch.cat([video, others.to(video.dtype)], dim=1)

        per_frame = grid[1] * grid[2]
        frame_t = model.frame_times(t_video, grid[0])
        timestep = torch.cat([frame_t.repeat_interleave(per_frame, dim=1), t_action[:, None].expand(-1, model.horizon),
                              torch.zeros(len(x), 1 + self.cfg.registers, device=x.device)], dim=1)
        temb, timestep_proj, context = trunk.condition(timestep * NUM_TRAIN_TIMESTEPS, text[0])
        out, _ = trunk.run_blocks(x, context, timestep_proj, self._rotary(model, grid, x.device), text[1],
                                  self_attn_mask=self._mask(model, grid, x.device))
        lv = video.shape[1]
        v_video = trunk.head(out[:, :lv], temb[:, :lv], grid)[:, :, clean:]
        v_action = model.embodiments.project_actions(out[:, lv:lv + model.horizon], embodiment_id).float()
        return v_video, v_action

    def _rotary(self, model, grid, device):
        cos, sin = model.trunk.rope(*grid, device)
        count = model.horizon + 1 + self.cfg.registers
        positions = stream_positions(self.cfg.action_positions, model.horizon, model.clean_latents,
                                     grid[0] - model.clean_latents, device)
        if positions is None:  # learned: no rotation on the non-video tokens
            other_cos, other_sin = cos.new_ones(count, cos.shape[1]), sin.new_zeros(count, sin.shape[1])
        else:  # actions rotated; proprio and registers at no rotation
            rest = torch.zeros(count - model.horizon, device=device, dtype=positions.dtype)
            other_cos, other_sin = time_band_rotary(model.trunk.rope, torch.cat([positions, rest]))
        return torch.cat([cos, other_cos]), torch.cat([sin, other_sin])

    def _mask(self, model, grid, device):
        if not self.cfg.attention:
            return None
        per_frame = grid[1] * grid[2]
        spans = [Span("video", per_frame, frame=f, clean=f < model.clean_latents) for f in range(grid[0])]
        spans += [Span("action", model.horizon, frame=model.clean_latents - 1), Span("proprio", 1),
                  Span("register", self.cfg.registers)]
        return build_mask(Layout(spans), self.cfg.attention, device)

    # --- training ---

    def loss(self, model, batch, x0, objective, timesteps):
        flow, clean = model.backbone, model.clean_latents
        batch_size, device = len(x0), x0.device
        t_video = flow.sample_time("video", batch_size, device, timesteps)
        t_action = t_video.clone() if flow.shared else flow.sample_time("action", batch_size, device, timesteps)
        if objective == "action":
            t_video = torch.ones_like(t_video)  # the policy's view: the future is pure noise
        if objective == "video":
            t_action = torch.ones_like(t_action)  # every sample action-free
        t_action = torch.where(batch.has_actions.to(device), t_action, 1.0)  # UWM: action-free -> pure noise

        noise = torch.randn(x0.shape, device=device, dtype=x0.dtype)
        future = flow.noised(x0[:, :, clean:], noise[:, :, clean:], t_video[:, None, None, None, None])
        a0 = batch.actions.float()
        real = batch.action_mask & batch.has_actions[:, None, None]
        if model.training:
            model.embodiments.record_action_dims(real, batch.embodiment_id)
        mask = real.float()
        a_noise = torch.randn_like(a0)
        noisy_actions = flow.noised(a0, a_noise, t_action[:, None, None])
        # embedded through the embodiment's own dims on every row, as `sample` embeds them; an action-free
        # sample has none, so its action tokens carry only their flow time, 1
        dims = batch.action_mask.any(dim=1, keepdim=True).float()
        v_video, v_action = self.velocities(model, x0[:, :, :clean], future, t_video, noisy_actions, t_action,
                                            dims, batch.proprio, batch.proprio_mask,
                                            batch.embodiment_id, model.encode_text(batch.text, device))
        out = model.zero_losses(batch_size, device)
        if objective != "action":
            squared = (v_video.float() - flow.target(x0, noise)[:, :, clean:].float()) ** 2
            out["video"], out["per_sample"]["video_loss"] = squared.mean(), squared.detach().flatten(1).mean(1)
        squared = (v_action - flow.target(a0, a_noise)) ** 2 * mask
        if objective != "video":
            out["action"] = squared.sum() / mask.sum().clamp(min=1)
            out["per_sample"].update(action_sq=squared.detach().sum((1, 2)), action_count=mask.sum((1, 2)))
        else:  # an exact zero that still reaches the action weights (DeepSpeed needs every grad)
            out["action"] = squared.sum() * 0
        return out

    # --- sampling ---

    def act(self, model, observed, proprio, proprio_mask, embodiment_id, text, inference: Inference,
            generator=None, action_mask=None):
        actions, _ = self.sample(model, "joint" if inference.render_future else "policy", observed, proprio,
                                 proprio_mask, embodiment_id, text, inference, generator, action_mask)
        return actions

    def imagine(self, model, observed, proprio, proprio_mask, embodiment_id, text, inference: Inference,
                generator=None):
        """The future denoised jointly with the actions: what the WAM predicts will follow them."""
        return self.sample(model, "joint", observed, proprio, proprio_mask, embodiment_id, text, inference,
                           generator)[1]

    @torch.no_grad()
    def sample(self, model, mode: str, observed, proprio, proprio_mask, embodiment_id, text, inference: Inference,
               generator=None, action_mask=None, actions=None, future=None):
        """-> (normalized actions [B, H, A_max], future latents [B, C, F_f, h, w]); the stream a mode
        holds clean must be given (actions for forward dynamics, future for inverse dynamics)."""
        if mode not in SAMPLES:
            raise ValueError(f"unknown sample mode '{mode}'; one of {', '.join(SAMPLES)}")
        flow, device = model.backbone, observed.device
        batch, channels, clean, height, width = observed.shape
        mask = (model.embodiments.action_mask(embodiment_id) if action_mask is None else action_mask)[:, None].float()
        given = {"forward_dynamics": ("action", actions), "inverse_dynamics": ("video", future)}.get(mode)
        if given is not None and given[1] is None:
            raise ValueError(f"sample mode '{mode}' holds the {given[0]} stream clean: pass it")
        denoised = {"policy": ("action",), "inverse_dynamics": ("action",), "forward_dynamics": ("video",),
                    "video": ("video",), "joint": ("action", "video")}[mode]
        state = {
            "video": future if future is not None else torch.randn(
                (batch, channels, model.latent_frames - clean, height, width), generator=generator,
                device=device).to(observed.dtype),
            "action": actions.float() * mask if actions is not None else torch.randn(
                (batch, model.horizon, model.max_action_dim), generator=generator, device=device),
        }
        held = {s: (0.0 if mode in ("forward_dynamics", "inverse_dynamics") else 1.0) for s in state}
        steps = {"action": inference.action_steps, "video": inference.video_steps}
        schedules = {"action": flow.schedule(steps["action"], shift=1.0), "video": flow.schedule(steps["video"])}
        text_pair = (model.encode_text(text, device), model.encode_text([""] * batch, device))
        for moves in stream_steps({s: steps[s] for s in denoised}):
            times = {s: schedules[s][moves[s][0]] if s in moves else held[s] for s in state}

            def velocity(caption):
                return self.velocities(model, observed, state["video"], torch.full((batch,), times["video"],
                                       device=device), state["action"], torch.full((batch,), times["action"],
                                       device=device), mask, proprio, proprio_mask, embodiment_id, caption)
            v_video, v_action = guided(velocity, inference.guidance, *text_pair)
            for s, v in (("video", v_video), ("action", v_action)):
                if s in moves and moves[s][0] != moves[s][1]:
                    state[s] = flow.euler(state[s], v, schedules[s][moves[s][0]], schedules[s][moves[s][1]])
        return state["action"] * mask, state["video"]
