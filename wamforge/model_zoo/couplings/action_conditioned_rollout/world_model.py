"""Action-conditioned rollout (survey §4.3.1): a world model p(s' | c, a) on the shared trunk, and a
planner that acts through it. The action is an input to the predictor, never its output: candidate
chunks are proposed before the reverse chain begins (DreamAvoid), each one's future is denoised
conditioned on the observed frames and the chunk, and the chunk whose future scores best is executed
(V-JEPA 2-AC's CEM, PointWorld's MPPI, Cosmos-Policy's and DreamAvoid's best-of-N).

How the chunk enters the trunk (`action_entry`):
  adaln  - Cosmos-Predict2's action conditioning: the chunk's tokens (from the embodiment bank) and the
           proprio token go through an MLP into one offset per future latent frame of the trunk's
           timestep embedding and of its AdaLN modulation (Wan: `temb` and `timestep_proj`; Cosmos:
           the embedded timestep and the shared modulation bias). The last layer starts at zero, so a
           pretrained video trunk starts unchanged;
  tokens - the action and proprio tokens are appended to the wan trunk's sequence, clean at t = 0,
           with learned positions (as joint_generation builds its sequence).
A sample without actions gets learned "no action" tokens in their place, so action-free video trains
the same network as a plain video predictor.

Objectives (the video slot is the world model's flow loss on the future latents, the action slot is
the value loss):
  video  - action-free prediction: every sample's actions dropped; no value loss;
  joint  - the world model, with the actions of the samples that have them, plus the value loss;
  action - the value head alone (the trunk does not run).
The value head reads the future as the substrate gives it: the latents (`pixel.latent`) or the
decoded pixels (`pixel.decoded`). It trains on the clean future x0 plus a little Gaussian noise
(`value_noise`), standing in for the imperfect futures it scores at inference, and regresses the
discounted return (`couplings/value.py`), masked where the episode's outcome is unknown.

Acting: the planner's candidates are scored in one batch. Each one's future is denoised from the same
noise (common random numbers: candidates differ by their actions alone) in `inference.video_steps`
Euler steps and scored by the value head or, once `set_goal` is given goal latents, by
-L1(the predicted future's last latent frame, the goal), as V-JEPA 2-AC scores against a goal image.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from wamforge.config.base import Strict
from wamforge.model_zoo.couplings.action_conditioned_rollout.planners import CEMConfig, PlannerConfig, build_planner
from wamforge.model_zoo.couplings.action_conditioned_rollout.value import ValueHead
from wamforge.model_zoo.couplings.base import Coupling
from wamforge.model_zoo.couplings.value import discounted_return
from wamforge.model_zoo.inference import Inference, guided
from wamforge.model_zoo.trunks.wan.model import NUM_TRAIN_TIMESTEPS

SAMPLES = ("policy", "forward_dynamics")


class ActionConditionedRolloutConfig(Strict):
    kind: Literal["action_conditioned_rollout"] = "action_conditioned_rollout"
    action_entry: Literal["adaln", "tokens"] = Field("adaln", description="adaln: the chunk modulates the future "
                                                     "frames; tokens: clean action tokens in the wan sequence")
    planner: PlannerConfig = CEMConfig()
    gamma: float = Field(0.99, gt=0, le=1, description="discount of the value target")
    value_dim: int = Field(64, ge=1, description="width of the value head")
    value_noise: float = Field(0.05, ge=0, description="std of the noise on the clean future the value trains on")

    def check_fits(self, model_cfg) -> None:
        if model_cfg.substrate.kind not in ("pixel.latent", "pixel.decoded"):
            raise ValueError("the action-conditioned rollout denoises the future latents themselves: use substrate "
                             "pixel.latent, or pixel.decoded for a value that reads decoded pixels")
        if self.action_entry == "tokens" and model_cfg.trunk.kind != "wan":
            raise ValueError("action_entry tokens appends the actions to the trunk's own sequence, which the wan "
                             "trunk serves; use trunk kind wan, or action_entry adaln on the cosmos trunk")


class ActionModulation(nn.Module):
    """Conditioning tokens [B, T, d] -> (offset of the timestep embedding [B, F_f, dim], offset of the
    AdaLN modulation [B, F_f, chunks, dim]), one per future latent frame; the whole chunk feeds each
    frame, since H actions need not align with the latent frames."""

    def __init__(self, tokens: int, token_dim: int, dim: int, chunks: int, frames: int):
        super().__init__()
        self.shape = (frames, 1 + chunks, dim)
        hidden = 4 * dim  # Cosmos-Predict2's action embedder width
        self.mlp = nn.Sequential(nn.Linear(tokens * token_dim, hidden), nn.SiLU(),
                                 nn.Linear(hidden, frames * (1 + chunks) * dim))
        nn.init.zeros_(self.mlp[-1].weight)  # starts as the plain video model
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.mlp(tokens.flatten(1).to(self.mlp[0].weight.dtype)).unflatten(-1, self.shape)
        return out[:, :, 0], out[:, :, 1:]


class RolloutNetworks(nn.Module):
    """The rollout's own weights: the no-action tokens, the action entry and the value head."""

    def __init__(self, horizon: int, token_dim: int, action_entry: nn.Module | None, value: ValueHead):
        super().__init__()
        self.no_action = nn.Parameter(torch.randn(1, horizon, token_dim) * 0.02)
        self.value = value
        if action_entry is None:  # tokens: learned absolute positions of the H action tokens and the proprio token
            self.positions = nn.Parameter(torch.randn(1, horizon + 1, token_dim) * 0.02)
        else:
            self.modulation = action_entry


class ActionConditionedRollout(Coupling):
    label = "Cond. rollout"
    samples = SAMPLES

    def __init__(self, cfg: ActionConditionedRolloutConfig):
        self.cfg = cfg
        self.planner = build_planner(cfg.planner)
        self.goal: torch.Tensor | None = None

    def set_goal(self, latents: torch.Tensor | None) -> None:
        """Goal latents [B or 1, C, F, h, w] (a goal image through `model.encode_video`): from now on `act`
        scores candidates by -L1 of their predicted last frame to the goal's last frame. None: the value."""
        if latents is not None and latents.ndim != 5:
            raise ValueError(f"goal latents must be [B, C, F, h, w], got {list(latents.shape)}")
        self.goal = None if latents is None else latents[:, :, -1:]

    def build(self, model, partitioned) -> int:
        trunk, tokens = model.trunk, self.cfg.action_entry == "tokens"
        self.token_services = hasattr(trunk, "run_blocks")
        if tokens and not self.token_services:
            raise ValueError("action_entry tokens appends the actions to the trunk's own sequence, which the wan "
                             "trunk serves; use trunk kind wan, or action_entry adaln")
        self.decodes = getattr(model.substrate, "decodes_pixels", False)
        if self.decodes:  # the value reads pixels: one patch per latent patch of the trunk
            stride = model.vae.spatial_stride
            channels, patch = 3, (1, stride * trunk.patch_size[1], stride * trunk.patch_size[2])
        else:
            channels, patch = model.vae.latent_channels, trunk.patch_size
        entry = None if tokens else ActionModulation(
            model.horizon + 1, trunk.dim, trunk.dim, chunks=6 if self.token_services else 3,  # Wan's 6 / Cosmos' 3
            frames=model.latent_frames - model.clean_latents)
        model.rollout = RolloutNetworks(model.horizon, trunk.dim, entry, ValueHead(channels, patch, self.cfg.value_dim))
        return trunk.dim

    # --- the world model ---

    @staticmethod
    def conditioning(model, actions, action_dims, with_actions, proprio, proprio_mask, embodiment_id):
        """[B, H + 1, d]: the embedded chunk (the learned no-action tokens where `with_actions` [B] is
        False, so no gradient reaches the action projections from those samples) and the proprio token."""
        embedded = model.embodiments.embed_actions(actions, action_dims, embodiment_id)
        embedded = torch.where(with_actions[:, None, None], embedded, model.rollout.no_action.to(embedded.dtype))
        return torch.cat([embedded, model.embodiments.embed_proprio(proprio, proprio_mask, embodiment_id)], dim=1)

    def velocity(self, model, observed, future, t, conditioning, text):
        """The future's velocity [B, C, F_f, h, w] at flow time t [B], given the observed latents and the
        conditioning tokens [B, H + 1, d]."""
        clean = observed.shape[2]
        latents = torch.cat([observed, future], dim=2)
        frame_t = model.frame_times(t, latents.shape[2])
        offsets = None
        if self.cfg.action_entry == "adaln":  # no offset on the observed frames
            offsets = tuple(torch.cat([x.new_zeros(len(x), clean, *x.shape[2:]), x], dim=1)
                            for x in model.rollout.modulation(conditioning))
        if not self.token_services:
            return self._cosmos_velocity(model, latents, frame_t, text, offsets)[:, :, clean:]
        return self._wan_velocity(model, latents, frame_t, text, conditioning, offsets)[:, :, clean:]

    @staticmethod
    def _wan_velocity(model, latents, frame_t, text, conditioning, offsets):
        trunk = model.trunk
        grid = trunk.grid(latents)
        per_frame = grid[1] * grid[2]
        x = trunk.embed(latents)
        video_tokens = x.shape[1]
        timestep = frame_t.repeat_interleave(per_frame, dim=1)
        cos, sin = trunk.rope(*grid, latents.device)
        if offsets is None:  # tokens: appended clean (t = 0), learned positions and no rotation
            extra = (conditioning + model.rollout.positions).to(x.dtype)
            x = torch.cat([x, extra], dim=1)
            timestep = torch.cat([timestep, timestep.new_zeros(len(x), extra.shape[1])], dim=1)
            cos = torch.cat([cos, cos.new_ones(extra.shape[1], cos.shape[1])])
            sin = torch.cat([sin, sin.new_zeros(extra.shape[1], sin.shape[1])])
        temb, timestep_proj, context = trunk.condition(timestep * NUM_TRAIN_TIMESTEPS, text[0])
        if offsets is not None:  # each future frame's tokens get their frame's action offset
            embedding, modulation = (o.repeat_interleave(per_frame, dim=1) for o in offsets)
            temb = temb + embedding.to(temb.dtype)
            timestep_proj = timestep_proj + modulation.to(timestep_proj.dtype)
        out, _ = trunk.run_blocks(x, context, timestep_proj, (cos, sin), text[1])
        return trunk.head(out[:, :video_tokens], temb[:, :video_tokens], grid)

    @staticmethod
    def _cosmos_velocity(model, latents, frame_t, text, offsets):
        """Cosmos modulates per latent frame: the offsets are added to its time embedding's two outputs
        (the shared modulation bias and the embedded timestep, one row per sample and frame)."""
        embedding, modulation = (o.flatten(0, 1) for o in offsets)

        def add_actions(module, args, output):
            temb, embedded_timestep = output
            return (temb + modulation.flatten(1).to(temb.dtype),
                    embedded_timestep + embedding.to(embedded_timestep.dtype))

        hook = model.trunk.time_embed.register_forward_hook(add_actions)
        try:
            velocity, _ = model.trunk.predict(latents, frame_t, *text)
        finally:
            hook.remove()
        return velocity

    # --- the value ---

    def value_input(self, model, observed, future):
        """What the value reads of a future [B, C, F_f, h, w]: the latents, or (pixel.decoded) the future's
        decoded frames [B, 3, T_f, H, W]."""
        if not self.decodes:
            return future
        with torch.no_grad():  # the VAE is frozen, and the frames are the value's input, not a trained output
            frames = model.vae.decode(torch.cat([observed, future], dim=2))  # [B, T, 3, H, W]
        return frames[:, -model.vae.temporal_stride * future.shape[2]:].transpose(1, 2)

    def score(self, model, observed, future, goal=None) -> torch.Tensor:
        """Higher is better, one per future [N]: -L1 of the last frame to the goal latents, or the value."""
        if goal is not None:
            return -(future[:, :, -1:].float() - goal.to(future.device).float()).abs().flatten(1).mean(1)
        return model.rollout.value(self.value_input(model, observed.expand(len(future), -1, -1, -1, -1), future))

    # --- training ---

    def loss(self, model, batch, x0, objective, timesteps):
        flow, clean = model.backbone, model.clean_latents
        batch_size, device = len(x0), x0.device
        out = model.zero_losses(batch_size, device)
        if model.training and objective != "video":
            model.embodiments.record_action_dims(batch.action_mask & batch.has_actions[:, None, None],
                                                 batch.embodiment_id)
        if objective != "action":
            with_actions = (batch.has_actions.to(device) if objective == "joint"
                            else torch.zeros(batch_size, dtype=torch.bool, device=device))
            t = flow.sample_time("video", batch_size, device, timesteps)
            noise = torch.randn(x0.shape, device=device, dtype=x0.dtype)
            future = flow.noised(x0[:, :, clean:], noise[:, :, clean:], t[:, None, None, None, None])
            # embedded through the embodiment's own dims on every row, as acting embeds them
            dims = batch.action_mask.any(dim=1, keepdim=True).float()
            conditioning = self.conditioning(model, batch.actions.float(), dims, with_actions, batch.proprio,
                                             batch.proprio_mask, batch.embodiment_id)
            velocity = self.velocity(model, x0[:, :, :clean], future, t, conditioning,
                                     model.encode_text(batch.text, device))
            squared = (velocity.float() - flow.target(x0, noise)[:, :, clean:].float()) ** 2
            out["video"], out["per_sample"]["video_loss"] = squared.mean(), squared.detach().flatten(1).mean(1)
        if objective != "video":
            target, known = discounted_return(batch, model.horizon, self.cfg.gamma)
            future = x0[:, :, clean:] + self.cfg.value_noise * torch.randn(x0[:, :, clean:].shape, device=device,
                                                                           dtype=x0.dtype)
            value = model.rollout.value(self.value_input(model, x0[:, :, :clean], future))
            squared = (value - target.to(device)) ** 2 * known.to(device)
            out["action"] = squared.sum() / known.sum().clamp(min=1)
            out["per_sample"].update(action_sq=squared.detach(), action_count=known.float())
        # exact zeros, because DeepSpeed needs a gradient on every trainable weight whichever objective runs: a
        # world model never uses the bank's action projection, and the value objective never runs the trunk
        untouched = (model,) if objective == "action" else (model.rollout, model.embodiments)
        out["action"] = out["action"] + sum(p.sum() * 0 for m in untouched for p in m.parameters() if p.requires_grad)
        return out

    # --- inference ---

    def act(self, model, observed, proprio, proprio_mask, embodiment_id, text, inference: Inference,
            generator=None, action_mask=None):
        return self.sample(model, "policy", observed, proprio, proprio_mask, embodiment_id, text, inference,
                           generator, action_mask)[0]

    def imagine(self, model, observed, proprio, proprio_mask, embodiment_id, text, inference: Inference,
                generator=None):
        """The future the world model predicts for the chunk the planner chose."""
        return self.sample(model, "policy", observed, proprio, proprio_mask, embodiment_id, text, inference,
                           generator)[1]

    @torch.no_grad()
    def sample(self, model, mode: str, observed, proprio, proprio_mask, embodiment_id, text, inference: Inference,
               generator=None, action_mask=None, actions=None):
        """-> (normalized chunk [B, H, A_max], its predicted future [B, C, F_f, h, w]). `policy` plans the
        chunk; `forward_dynamics` predicts the future of the given `actions`."""
        if mode not in SAMPLES:
            raise ValueError(f"unknown sample mode '{mode}'; one of {', '.join(SAMPLES)}")
        if mode == "forward_dynamics" and actions is None:
            raise ValueError("sample mode 'forward_dynamics' predicts the future of given actions: pass them")
        batch, channels, clean, height, width = observed.shape
        device = observed.device
        mask = (model.embodiments.action_mask(embodiment_id) if action_mask is None else action_mask)[:, None].float()
        chunks, predicted = [], []
        for b in range(batch):
            one = slice(b, b + 1)
            noise = torch.randn((1, channels, model.latent_frames - clean, height, width), generator=generator,
                                device=device).to(observed.dtype)
            captions = tuple(model.encode_text(caption, device) for caption in ([text[b]], [""]))

            def predict(candidates):
                return self.futures(model, observed[one], candidates * mask[b], mask[b], proprio[one],
                                    proprio_mask[one], embodiment_id[one], captions, inference, noise)

            if mode == "policy":
                goal = self._goal_of(b)
                chunk = self.planner.plan(lambda c: self.score(model, observed[one], predict(c), goal),
                                          (model.horizon, model.max_action_dim), generator, device)
            else:
                chunk = actions[b].float()
            chunks.append(chunk * mask[b])
            predicted.append(predict(chunks[-1][None]))
        return torch.stack(chunks), torch.cat(predicted)

    def _goal_of(self, index: int) -> torch.Tensor | None:
        """Observation `index`'s goal latents [1, C, 1, h, w]: its own, or the one goal all share."""
        if self.goal is None:
            return None
        return self.goal[index:index + 1] if len(self.goal) > 1 else self.goal[:1]

    def futures(self, model, observed, candidates, action_dims, proprio, proprio_mask, embodiment_id, captions,
                inference: Inference, noise):
        """One observation [1, C, c, h, w], N candidate chunks [N, H, A] -> their futures [N, C, F_f, h, w],
        all denoised in one batch from the same noise [1, C, F_f, h, w]."""
        n, flow = len(candidates), model.backbone

        def expand(x):
            return x.expand(n, *x.shape[1:])
        conditioning = self.conditioning(model, candidates, action_dims, torch.ones(n, dtype=torch.bool,
                                         device=observed.device), expand(proprio), expand(proprio_mask),
                                         expand(embodiment_id))
        texts = [tuple(expand(x) for x in caption) for caption in captions]
        future, observed = expand(noise), expand(observed)
        times = flow.schedule(inference.video_steps)
        for t, t_next in zip(times, times[1:]):
            t_batch = torch.full((n,), t, device=observed.device)
            velocity = guided(lambda text: self.velocity(model, observed, future, t_batch, conditioning, text),
                              inference.guidance, *texts)
            future = flow.euler(future, velocity, t, t_next)
        return future
