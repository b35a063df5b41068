"""Joint generation by tiling (survey §4.3.2, §4.3.4): Cosmos-Policy (Kim et al., NVIDIA/Stanford, 2026;
arXiv 2601.16163) fine-tunes a video model with no architectural change. Every non-image modality
(proprio, the action chunk, the value) is normalized to [-1, 1], flattened and repeated until it
fills one whole latent frame (C x h x w) of the video sequence, and is read back by averaging its
copies. The trunk then sees only latent frames with a flow time each (Cosmos' frame_replace
conditioning): no action tokens, no embodiment projections, full attention.

Latent frames here, one camera and no blank frame:
    [proprio | observed (context + current) | ACTION | future | VALUE]
The frames are ranked in the order of the story they tell: condition (proprio, observed) 0,
action 1, future 2, value 3. One model is three functions, chosen per sample by which frames are
clean at t = 0 (the condition mask); a mode of rank m holds every frame of rank <= m clean and
denoises the rest at one shared flow time:
    policy       (m = 0) - denoise the action, the future and the value;
    world_model  (m = 1) - the action is given clean; denoise the future and the value;
    value        (m = 2) - everything but the value is given clean.
The value target is the discounted return after the chunk (`value.discounted_return`), masked where
the episode's outcome is unknown. Action-free samples put the action frame at pure noise, t = 1,
with its loss masked. To act: the policy denoises the action (with future and value) jointly; with
`planning`, best-of-N (the `best_of_n` planner of action_conditioned_rollout/planners.py) draws N
chunks from the policy, predicts each one's future (world_model) and value (value) in one batch and
keeps the chunk of highest value, as Cosmos-Policy plans on ALOHA.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from wamforge.config.base import Strict
from wamforge.model_zoo.couplings.action_conditioned_rollout.planners import BestOfN, BestOfNConfig
from wamforge.model_zoo.couplings.base import Coupling
from wamforge.model_zoo.couplings.value import discounted_return
from wamforge.model_zoo.inference import Inference, guided
from wamforge.model_zoo.vae import latent_geometry

SAMPLES = ("policy", "world_model", "value")  # index = the mode's rank: it holds the frames of rank <= it clean
ACTION_RANK, FUTURE_RANK, VALUE_RANK = 1, 2, 3


class SampleShares(Strict):
    """Shares of training samples per mode. Cosmos-Policy trains demos as policy samples and splits its
    rollouts 50/50 into world-model and value samples, demos and rollouts 50/50; with demos only, the
    default keeps those overall proportions on the demos themselves."""
    policy: float = Field(0.5, ge=0)
    world_model: float = Field(0.25, ge=0)
    value: float = Field(0.25, ge=0)

    @model_validator(mode="after")
    def _sum_to_one(self):
        if abs(self.policy + self.world_model + self.value - 1) > 1e-6:
            raise ValueError("the shares of policy, world_model and value samples must sum to 1")
        return self

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.policy, self.world_model, self.value])


class TiledJointGenerationConfig(Strict):
    kind: Literal["tiled_joint_generation"] = "tiled_joint_generation"
    shares: SampleShares = SampleShares()
    gamma: float = Field(0.99, gt=0, le=1, description="discount of the value target (Cosmos-Policy: 0.99)")
    planning: BestOfNConfig | None = Field(None, description="best-of-N over policy samples, ranked by value")

    def check_experiment(self, cfg) -> None:
        """The action chunk must fit one latent frame of the data's resolution."""
        channels, _, stride = latent_geometry(cfg.model.vae)
        height, width = cfg.data.resolution
        volume = channels * (height // stride) * (width // stride)
        count = cfg.model.regime.horizon * cfg.model.max_action_dim
        if count > volume:
            raise ValueError(f"tiled_joint_generation tiles H x max_action_dim = {count} action values into one latent "
                             f"frame of {volume}: raise data.resolution, or shorten model.regime.horizon or "
                             f"model.max_action_dim")

    def check_fits(self, model_cfg) -> None:
        if model_cfg.substrate.kind != "pixel.latent":
            raise ValueError("tiled_joint_generation denoises latent frames (the future, and the actions and value "
                             "tiled into frames of their own): use substrate pixel.latent")


def tile(values: torch.Tensor, frame_shape: tuple[int, int, int]) -> torch.Tensor:
    """values [B, n] -> one latent frame [B, C, h, w] holding them end to end, over and over (value i at
    every flat position p with p % n == i), as Cosmos-Policy fills the latent volume."""
    volume, count = frame_shape[0] * frame_shape[1] * frame_shape[2], values.shape[1]
    if count > volume:
        raise ValueError(f"{count} values do not fit one latent frame of {'x'.join(map(str, frame_shape))} = "
                         f"{volume}: raise data.resolution, or shorten regime.horizon or max_action_dim")
    index = torch.arange(volume, device=values.device) % count
    return values[:, index].view(len(values), *frame_shape)


def untile(frame: torch.Tensor, count: int) -> torch.Tensor:
    """One latent frame [B, C, h, w] -> the `count` values it tiles [B, count], each the mean of its copies."""
    flat = frame.flatten(1).float()
    index = torch.arange(flat.shape[1], device=flat.device) % count
    sums = flat.new_zeros(len(flat), count).index_add(1, index, flat)
    return sums / torch.bincount(index, minlength=count).to(flat.dtype)


class TiledJointGeneration(Coupling):
    label = "Joint generation"
    samples = SAMPLES

    def __init__(self, cfg: TiledJointGenerationConfig):
        self.cfg = cfg
        self.planner = None if cfg.planning is None else BestOfN(cfg.planning)

    def build(self, model, partitioned) -> int:
        # no per-embodiment projection (Cosmos-Policy): the bank only records each embodiment's action dims,
        # so it is built at width 1
        return 1

    # --- the latent frames ---

    @staticmethod
    def ranks(model, future_frames: int, device=None) -> torch.Tensor:
        """The rank of every latent frame [F_total]: proprio and observed 0, action 1, future 2, value 3."""
        counts = (1 + model.clean_latents, 1, future_frames, 1)
        return torch.repeat_interleave(torch.arange(4, device=device), torch.tensor(counts, device=device))

    @staticmethod
    def sequence(observed, future, proprio, actions, value) -> torch.Tensor:
        """The clean latent frames [B, C, F_total, h, w]: [proprio | observed | action | future | value]."""
        shape = (observed.shape[1], *observed.shape[3:])

        def frame(values):
            return tile(values.flatten(1).float(), shape).to(observed.dtype)[:, :, None]
        return torch.cat([frame(proprio), observed, frame(actions), future, frame(value[:, None])], dim=2)

    @staticmethod
    def action_keep(observed, dims: torch.Tensor, horizon: int) -> torch.Tensor:
        """dims [B, A_max] -> [B, C, h, w]: 1 on the action frame's copies of the embodiment's dims, else 0."""
        rows = dims[:, None].expand(-1, horizon, -1).flatten(1).float()
        return tile(rows, (observed.shape[1], *observed.shape[3:])).to(observed.dtype)

    # --- training ---

    def draw_modes(self, objective: str, action_free: torch.Tensor, known_value: torch.Tensor) -> torch.Tensor:
        """Each sample's mode [B] (an index into SAMPLES): drawn by `shares` for the joint objective; the
        policy for the action and video objectives and for action-free samples, whose action frame can
        only be noise; a value sample whose return is unknown becomes a world-model sample."""
        modes = torch.zeros(len(action_free), dtype=torch.long, device=action_free.device)
        if objective == "joint":
            drawn = torch.multinomial(self.cfg.shares.as_tensor(), len(modes), replacement=True)
            modes = torch.where(action_free, 0, drawn.to(modes.device))
        return torch.where((modes == SAMPLES.index("value")) & ~known_value, SAMPLES.index("world_model"), modes)

    def loss(self, model, batch, x0, objective, timesteps):
        flow, clean = model.backbone, model.clean_latents
        batch_size, device = len(x0), x0.device
        observed, future = x0[:, :, :clean], x0[:, :, clean:]
        t = flow.sample_time("video", batch_size, device, timesteps)
        t_action = t.clone() if flow.shared else flow.sample_time("action", batch_size, device, timesteps)
        action_free = ~batch.has_actions.to(device) | (objective == "video")
        t_action = torch.where(action_free, 1.0, t_action)  # as UWM: no actions -> pure noise
        real = batch.action_mask.to(device) & ~action_free[:, None, None]
        if model.training:
            model.embodiments.record_action_dims((batch.action_mask & batch.has_actions[:, None, None]).to(device),
                                                 batch.embodiment_id.to(device))
        value, known = discounted_return(batch, model.horizon, self.cfg.gamma)
        value, known = value.to(device), known.to(device)
        modes = self.draw_modes(objective, action_free, known)

        dims = batch.action_mask.to(device).any(dim=1)  # [B, A_max]
        proprio = batch.proprio.to(device) * batch.proprio_mask.to(device)
        frames = self.sequence(observed, future, proprio, batch.actions.to(device).float() * dims[:, None], value)
        ranks = self.ranks(model, future.shape[2], device)
        denoised = ranks[None] > modes[:, None]  # [B, F_total]
        frame_t = torch.where(ranks == ACTION_RANK, t_action[:, None], t[:, None]) * denoised
        noise = torch.randn(frames.shape, device=device, dtype=frames.dtype)
        inputs = flow.noised(frames, noise, frame_t[:, None, :, None, None])
        a = clean + 1  # the action frame: its padding stays zero; an action-free one is all noise
        keep = torch.where(action_free[:, None, None, None], 1.0, self.action_keep(observed, dims, model.horizon))
        inputs = torch.cat([inputs[:, :, :a], (inputs[:, :, a] * keep)[:, :, None], inputs[:, :, a + 1:]], dim=2)

        velocity, _ = model.trunk.predict(inputs, frame_t, *model.encode_text(batch.text, device))
        squared = (velocity.float() - flow.target(frames, noise).float()) ** 2
        out = model.zero_losses(batch_size, device)

        # the video term: the denoised future frames, and the value frame where the return is known
        counted = (denoised & ((ranks == FUTURE_RANK) | ((ranks == VALUE_RANK) & known[:, None]))).float()
        per_frame = squared.mean(dim=(1, 3, 4))  # [B, F_total]
        if objective != "action":
            out["video"] = (per_frame * counted).sum() / counted.sum().clamp(min=1)
            out["per_sample"]["video_loss"] = (per_frame * counted).detach().sum(1) / counted.sum(1).clamp(min=1)
        else:  # an exact zero that still reaches the weights (DeepSpeed needs every grad)
            out["video"] = (per_frame * counted).sum() * 0
        # the action term: each real entry's squared error, averaged over its copies, on policy samples
        mask = (real & denoised[:, a, None, None]).float()
        action_sq = untile(squared[:, :, a], model.horizon * model.max_action_dim).view_as(mask) * mask
        if objective != "video":
            out["action"] = action_sq.sum() / mask.sum().clamp(min=1)
            out["per_sample"].update(action_sq=action_sq.detach().sum((1, 2)), action_count=mask.sum((1, 2)))
        else:
            out["action"] = action_sq.sum() * 0
        # the bank projects nothing here: an exact zero keeps a gradient on each of its parameters
        out["action"] = out["action"] + sum(p.sum() for p in model.embodiments.parameters()) * 0
        return out

    # --- sampling ---

    @torch.no_grad()
    def sample(self, model, mode: str, observed, proprio, proprio_mask, embodiment_id, text, inference: Inference,
               generator=None, action_mask=None, actions=None, future=None):
        """-> (normalized actions [B, H, A_max], future latents [B, C, F_f, h, w], value [B] in [-1, 1]).
        The frames a mode holds clean must be given: the actions for world_model and value, the future
        for value. The policy takes `inference.action_steps` Euler steps, the others `video_steps`."""
        if mode not in SAMPLES:
            raise ValueError(f"unknown sample mode '{mode}'; one of {', '.join(SAMPLES)}")
        rank = SAMPLES.index(mode)
        if (rank >= ACTION_RANK and actions is None) or (rank >= FUTURE_RANK and future is None):
            raise ValueError(f"sample mode '{mode}' holds the {'actions' if actions is None else 'future'} clean: "
                             f"pass them")
        flow, device = model.backbone, observed.device
        batch, channels, clean, height, width = observed.shape
        dims = model.embodiments.action_mask(embodiment_id) if action_mask is None else action_mask
        dims = dims.to(device)
        future_frames = model.latent_frames - clean
        if future is None:
            future = observed.new_zeros(batch, channels, future_frames, height, width)
        if actions is None:
            actions = torch.zeros(batch, model.horizon, model.max_action_dim, device=device)
        frames = self.sequence(observed, future, (proprio * proprio_mask).to(device), actions.float() * dims[:, None],
                               torch.zeros(batch, device=device))
        denoised = self.ranks(model, future_frames, device) > rank
        noise = torch.randn(frames.shape, generator=generator, device=device).to(frames.dtype)
        state = torch.where(denoised[None, None, :, None, None], noise, frames)
        a, keep = clean + 1, self.action_keep(observed, dims, model.horizon)
        state[:, :, a] *= keep

        steps = inference.action_steps if mode == "policy" else inference.video_steps
        schedule = flow.schedule(steps)
        text_pair = (model.encode_text(text, device), model.encode_text([""] * batch, device))
        for k in range(steps):
            frame_t = (denoised.float() * schedule[k])[None].expand(batch, -1)

            def velocity(caption):
                return model.trunk.predict(state, frame_t, *caption)[0]
            stepped = flow.euler(state, guided(velocity, inference.guidance, *text_pair), schedule[k], schedule[k + 1])
            state = torch.where(denoised[None, None, :, None, None], stepped, state)
            state[:, :, a] *= keep
        chunk = untile(state[:, :, a], model.horizon * model.max_action_dim).view_as(actions) * dims[:, None]
        return chunk, state[:, :, a + 1:-1], untile(state[:, :, -1], 1)[:, 0]

    @torch.no_grad()
    def value_of(self, model, observed, proprio, proprio_mask, embodiment_id, text, inference: Inference,
                 actions, generator=None, action_mask=None) -> torch.Tensor:
        """The predicted value [B] of executing `actions`: the world model denoises the future they lead
        to, and the value function reads it (every frame but the value clean)."""
        parts = (observed, proprio, proprio_mask, embodiment_id, text, inference, generator, action_mask)
        _, future, _ = self.sample(model, "world_model", *parts, actions=actions)
        return self.sample(model, "value", *parts, actions=actions, future=future)[2]

    def act(self, model, observed, proprio, proprio_mask, embodiment_id, text, inference: Inference,
            generator=None, action_mask=None):
        if self.cfg.planning is None:
            return self.sample(model, "policy", observed, proprio, proprio_mask, embodiment_id, text, inference,
                               generator, action_mask)[0]
        dims = model.embodiments.action_mask(embodiment_id) if action_mask is None else action_mask
        chunks = []
        for b in range(len(observed)):  # one plan per observation, its N candidates batched
            def one(n, b=b):
                return (observed[b:b + 1].expand(n, -1, -1, -1, -1), proprio[b:b + 1].expand(n, -1),
                        proprio_mask[b:b + 1].expand(n, -1), embodiment_id[b:b + 1].expand(n), [text[b]] * n)

            def propose(n, b=b):
                return self.sample(model, "policy", *one(n), inference, generator, dims[b:b + 1].expand(n, -1))[0]

            def score(candidates, b=b):
                return self.value_of(model, *one(len(candidates)), inference, candidates, generator,
                                     dims[b:b + 1].expand(len(candidates), -1))
            chunks.append(self.planner.plan(score, (model.horizon, model.max_action_dim), generator,
                                            observed.device, propose))
        return torch.stack(chunks)

    def imagine(self, model, observed, proprio, proprio_mask, embodiment_id, text, inference: Inference,
                generator=None):
        """The future denoised jointly with the policy's chunk: what the model predicts will follow it."""
        return self.sample(model, "policy", observed, proprio, proprio_mask, embodiment_id, text, inference,
                           generator)[1]
