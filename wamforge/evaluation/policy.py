"""`load_policy(dir)`: an exported WAM as a policy, with no DeepSpeed in sight."""
from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from wamforge.config import validate
from wamforge.data_pipeline.loader.collate import Normalizer, stats_hash
from wamforge.data_pipeline.video import resize_center_crop, video_to_tensor
from wamforge.data_pipeline.embodiments import EmbodimentRegistry
from wamforge.model_zoo import regimes
from wamforge.model_zoo.build import build_model
from wamforge.model_zoo.inference import Inference
from wamforge.model_zoo.wam import WorldActionModel


class Policy:
    def __init__(self, model: WorldActionModel, cfg, registry: EmbodimentRegistry, stats: dict,
                 device: torch.device, inference: Inference):
        self.model, self.cfg, self.registry = model.eval(), cfg, registry
        self.normalizer = Normalizer(stats, registry, cfg.model.normalization)
        self.device, self.inference = device, inference
        self.resolution = tuple(cfg.data.resolution)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        # past context as in training: every frame_stride-th step back from the current frame
        self.context, self.stride = cfg.data.context_frames, cfg.data.frame_stride
        self.history: deque[np.ndarray] = deque(maxlen=self.context * self.stride + 1)
        # the robot it acts for unless told otherwise: eval.embodiment, else the evaluated source's
        source = cfg.data.sources.get(cfg.eval.source)
        self.embodiment = cfg.eval.embodiment or (source.embodiment if source else None)
        self.regime = regimes.REGISTRY[cfg.model.regime.kind](cfg.model.regime)
        # the interactive regime's state between calls: the episode's frames in the trunk's KV cache
        self.session = self.regime.session(model) if hasattr(self.regime, "session") else None

    @property
    def needs_history(self) -> bool:
        return self.context > 0

    def reset(self, seed: int | None = None) -> None:
        """Call at each episode's start: its past context begins empty (padded with its first frame);
        `seed` reseeds the sampler's noise, so an episode's chunks depend on that episode alone."""
        self.history.clear()
        if self.session is not None:
            self.session.reset()
        if seed is not None:
            self.generator.manual_seed(seed)

    def observe(self, observation: dict) -> None:
        """Record a step's camera image without acting, so later chunks see it as past context."""
        image = np.asarray(observation["image"], dtype=np.uint8)
        self.history.append(resize_center_crop(image[None] if image.ndim == 3 else image, self.resolution))

    @property
    def horizon(self) -> int:
        return self.model.capabilities.horizon

    @torch.no_grad()
    def act(self, observation: dict, instruction: str, embodiment: str | None = None,
            inference: Inference | None = None) -> np.ndarray:
        """observation = {"image": uint8 [V,H,W,3] or [H,W,3], "proprio": float [P]} -> [H, A] raw units.
        `inference` overrides the policy's knobs (steps, render the future, guidance) for this call."""
        emb = self.registry[embodiment or self.embodiment]
        self.observe(observation)
        last = len(self.history) - 1
        frames = np.stack([self.history[max(0, last - (self.context - i) * self.stride)]
                           for i in range(self.context + 1)])
        video, *rest = self._inputs(frames, observation.get("proprio"), emb)
        inference = inference or self.inference
        if self.session is not None:  # the past is in the cache: only the current frame is encoded
            actions = self.session.act(self.model.encode_video(video[:, -1:]), *rest, [instruction], inference,
                                       self.generator)
        else:
            actions = self.model.sample_actions(video, *rest, [instruction], inference=inference,
                                                generator=self.generator)
        chunk = actions[0, :, : emb.action_dim].float().cpu().numpy()
        chunk = self.normalizer.denormalize(emb.name, "actions", chunk)
        if emb.action_low is not None:
            chunk = np.clip(chunk, emb.action_low, emb.action_high)
        return chunk.astype(np.float32)

    @torch.no_grad()
    def imagine(self, frames: np.ndarray, proprio, instruction: str, embodiment: str | None = None,
                inference: Inference | None = None) -> np.ndarray | None:
        """The observed frames (context and current, uint8 [1 + context, V, H, W, 3] at the policy's
        resolution) -> the future the model predicts, uint8 [T_future, V, H, W, 3]; None when its
        design predicts no future."""
        emb = self.registry[embodiment or self.embodiment]
        future = self.model.imagine(*self._inputs(frames, proprio, emb), [instruction],
                                    inference=inference or self.inference, generator=self.generator)
        if future is None:
            return None
        pixels = ((future[0].float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(0, 1, 3, 4, 2).numpy()  # [T, V, H, W, 3]

    def _inputs(self, frames: np.ndarray, proprio, emb) -> tuple[torch.Tensor, ...]:
        """Model inputs: video [1, 1 + context, V, 3, H, W], normalized proprio and its mask, embodiment id."""
        video = video_to_tensor(frames).unsqueeze(0).to(self.device)
        p_max = self.cfg.model.max_proprio_dim
        values, mask = np.zeros(p_max, np.float32), np.zeros(p_max, bool)
        if proprio is not None and emb.proprio_dim:
            raw = np.asarray(proprio, np.float32)[: emb.proprio_dim]
            values[: len(raw)] = self.normalizer.normalize(emb.name, "proprio", raw)
            mask[: len(raw)] = True
        return (video, torch.from_numpy(values)[None].to(self.device), torch.from_numpy(mask)[None].to(self.device),
                torch.tensor([emb.id], device=self.device))


def load_policy(directory: str | Path, device: str | None = None, inference: Inference | None = None) -> Policy:
    """An exported run as a Policy; `inference` (default: the run's eval knobs) sets its steps,
    render-the-future and guidance."""
    directory = Path(directory)
    meta = json.loads((directory / "config.json").read_text())
    cfg = validate(meta["experiment"], directory / "config.json")
    registry = EmbodimentRegistry.from_dict(json.loads((directory / "embodiments.json").read_text()))
    stats = json.loads((directory / "stats.json").read_text())
    if stats_hash(stats) != meta["stats_hash"]:
        raise ValueError(f"{directory / 'stats.json'} is not the statistics this policy was trained with "
                         f"(hash {stats_hash(stats)}, expected {meta['stats_hash']}); re-export the run")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(cfg, len(registry))
    _load_weights(model, directory, meta.get("format", "policy"), cfg.model.trunk.kind)
    return Policy(model.to(dev), cfg, registry, stats, dev, inference or cfg.eval.inference())


def _load_weights(model, directory: Path, format: str, trunk_kind: str) -> None:
    """The exported weights, strictly: one model.safetensors, or a trunk release folder beside the
    WAM's own parts (training/export.py)."""
    from wamforge.training.export import TRUNK_DIR, WAM_PARTS

    own = model.state_dict()
    file = directory / ("model.safetensors" if format == "policy" else WAM_PARTS)
    weights = load_file(str(file))
    if format != "policy":
        from wamforge.model_zoo.trunks.pretrained import PretrainedTrunk, load_pretrained_trunk

        init = PretrainedTrunk(format="diffusers" if format == "diffusers" else trunk_kind,
                               path=str(directory / TRUNK_DIR))
        try:
            load_pretrained_trunk(model.trunk, trunk_kind, init)
        except KeyError as err:
            raise ValueError(f"{directory / TRUNK_DIR} does not fit the trunk its config.json describes: "
                             f"{err.args[0]}; export the run again") from None
        own = {k: v for k, v in own.items() if not k.startswith("trunk.")}
    misfit = sorted(k for k in own if k not in weights or weights[k].shape != own[k].shape)
    if misfit or set(weights) - set(own):
        raise ValueError(f"{file} does not fit the model its config.json describes "
                         f"(first misfit: {(misfit or sorted(set(weights) - set(own)))[0]}); export the run again")
    model.load_state_dict(weights, strict=format == "policy")
