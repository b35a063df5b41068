"""Raw shard samples -> model tensors: decode video, cut the action chunk, normalize, pad, mask."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import torch

from wamforge.data_pipeline.schema import Batch
from wamforge.data_pipeline.video import decode_clip
from wamforge.data_pipeline.embodiments import EmbodimentRegistry

EPS = 1e-6


def stats_hash(stats: dict) -> str:
    """Names the statistics a model was trained with; checkpoints and exports record it."""
    return hashlib.sha256(json.dumps(stats, sort_keys=True).encode()).hexdigest()[:16]


class Normalizer:
    """Per-embodiment (x - center) / scale; dims marked `normalize: false` pass through raw.

    mode "mean_std": center = mean, scale = std; "quantile": q01..q99 maps onto -1..1.
    """

    def __init__(self, stats: dict, registry: EmbodimentRegistry, mode: str = "mean_std"):
        if mode not in ("mean_std", "quantile"):
            raise ValueError(f"unknown normalization '{mode}'; expected mean_std or quantile")
        self.stats, self.registry, self.mode = stats, registry, mode
        self.stats_hash = stats_hash(stats)

    def _center_scale(self, embodiment: str, field: str, width: int):
        s = self.stats.get(embodiment, {}).get(field)
        if s is None:
            return np.zeros(width, np.float32), np.ones(width, np.float32)
        if self.mode == "quantile":
            low, high = np.asarray(s["q01"], np.float32), np.asarray(s["q99"], np.float32)
            center, scale = (high + low) / 2, (high - low) / 2
        else:
            center, scale = np.asarray(s["mean"], np.float32), np.asarray(s["std"], np.float32)
        scale = np.maximum(scale, EPS)
        if field == "actions":
            keep_raw = ~np.asarray(self.registry[embodiment].normalize, bool)
            center, scale = np.where(keep_raw, 0.0, center), np.where(keep_raw, 1.0, scale)
        return center.astype(np.float32), scale.astype(np.float32)

    def normalize(self, embodiment: str, field: str, values: np.ndarray) -> np.ndarray:
        center, scale = self._center_scale(embodiment, field, values.shape[-1])
        return (values - center) / scale

    def denormalize(self, embodiment: str, field: str, values: np.ndarray) -> np.ndarray:
        center, scale = self._center_scale(embodiment, field, values.shape[-1])
        return values * scale + center


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class Collator:
    """`latents`: the model VAE's cache id (encoder@version); windows whose shard holds latents under
    that id are served as latents, skipping decode and encode. A batch mixing cached and uncached
    windows is served as pixels. `decode_device`: where clips are decoded (a CUDA device: on its
    NVDEC, in the trainer's process)."""

    def __init__(self, normalizer: Normalizer, registry: EmbodimentRegistry, source_ids: dict[str, int],
                 horizon: int, max_action_dim: int, max_proprio_dim: int, latents: str | None = None,
                 decode_device: str = "cpu"):
        self.normalizer, self.registry, self.source_ids = normalizer, registry, source_ids
        self.decode_device = decode_device
        self.horizon, self.a_max, self.p_max = horizon, max_action_dim, max_proprio_dim
        self.latent_field = f"latents.{latents}.npy" if latents else None
        self.cache_ids = [latents] if latents else []  # the encoder caches a loader should merge in

    @classmethod
    def for_experiment(cls, cfg, stats: dict, registry: EmbodimentRegistry, decode_device: str = "cpu") -> "Collator":
        """The collator an experiment trains with: its sources, chunk, maxima, normalization, and its
        VAE's latent cache."""
        from wamforge.model_zoo.vae import cache_id

        m = cfg.model
        return cls(Normalizer(stats, registry, m.normalization), registry,
                   source_ids={n: i for i, n in enumerate(cfg.data.sources)}, horizon=m.regime.horizon,
                   max_action_dim=m.max_action_dim, max_proprio_dim=m.max_proprio_dim, latents=cache_id(m.vae),
                   decode_device=decode_device)

    def frames(self, item: dict) -> torch.Tensor:
        # uint8 across the worker boundary; the model scales to [-1, 1] on its device
        return decode_clip(item["mp4"], len(item["meta"]["views"]), self.decode_device)

    def decode(self, raw: dict) -> dict:
        meta = json.loads(raw["json"])
        item = {"key": raw["__key__"], "meta": meta, "mp4": raw["mp4"], "video": None, "latents": None}
        if self.latent_field in raw:
            item["latents"] = torch.from_numpy(load_npy(raw[self.latent_field]))
        else:
            item["video"] = self.frames(item)
        item["video_pad"] = np.arange(meta["frames"]) < meta["video_pad"]  # context before the episode's start
        emb = meta["embodiment"]
        actions = np.zeros((self.horizon, self.a_max), np.float32)
        action_mask = np.zeros((self.horizon, self.a_max), bool)
        if "actions.npy" in raw:
            chunk = load_npy(raw["actions.npy"])[: self.horizon]
            if len(chunk) < self.horizon and meta["current"] + len(chunk) < meta["episode_length"]:
                raise ValueError(f"the window stores {len(chunk)} action rows but the model's horizon is "
                                 f"{self.horizon}; rebuild with data.action_frames >= {self.horizon}")
            if not np.isfinite(chunk).all():
                raise ValueError("actions contain NaN or infinite values")
            a = chunk.shape[1]
            actions[: len(chunk), :a] = self.normalizer.normalize(emb, "actions", chunk)
            action_mask[: len(chunk), :a] = True  # rows past the episode's end stay padding (is_pad)
        proprio = np.zeros(self.p_max, np.float32)
        proprio_mask = np.zeros(self.p_max, bool)
        if "proprio.npy" in raw:
            first = load_npy(raw["proprio.npy"])[0]
            proprio[: len(first)] = self.normalizer.normalize(emb, "proprio", first)
            proprio_mask[: len(first)] = True
        item.update(actions=actions, action_mask=action_mask, has_actions=bool(action_mask.any()),
                    proprio=proprio, proprio_mask=proprio_mask)
        return item

    def collate(self, items: list[dict]) -> Batch:
        cached = all(i["latents"] is not None for i in items)
        return Batch(
            video=None if cached else torch.stack([self.frames(i) if i["video"] is None else i["video"] for i in items]),
            latents=torch.stack([i["latents"] for i in items]) if cached else None,
            video_pad=torch.from_numpy(np.stack([i["video_pad"] for i in items])),
            actions=torch.from_numpy(np.stack([i["actions"] for i in items])),
            action_mask=torch.from_numpy(np.stack([i["action_mask"] for i in items])),
            has_actions=torch.tensor([i["has_actions"] for i in items]),
            proprio=torch.from_numpy(np.stack([i["proprio"] for i in items])),
            proprio_mask=torch.from_numpy(np.stack([i["proprio_mask"] for i in items])),
            embodiment_id=torch.tensor([self.registry[i["meta"]["embodiment"]].id for i in items]),
            source_id=torch.tensor([self.source_ids[i["meta"]["source"]] for i in items]),
            text=[i["meta"].get("language", "") for i in items],
            keys=[i["key"] for i in items],
            steps_to_go=torch.tensor([i["meta"]["episode_length"] - 1 - i["meta"]["current"] for i in items]),
            success=torch.tensor([float("nan") if i["meta"].get("success") is None else float(i["meta"]["success"])
                                  for i in items]),
        )
