"""Encoder caches: after the shards exist, Ray actors (one GPU each where there are GPUs) run the
model's video VAE and a frozen teacher over every window and write, per shard and encoder, a
sidecar `<shard>.<encoder@version>.tar` holding `<key>.latents.npy` or `<key>.features.npy` in the
shard's own order. A changed encoder has another id, so it never serves stale outputs; a sidecar
appears whole (renamed into place) and an interrupted cache build redoes only missing ones. The
loader merges a sidecar into its shard's samples as `latents.<id>.npy` / `features.<id>.npy`.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from wamforge.data_pipeline.video import decode_mp4, untile_views, video_to_tensor

OUTPUTS = {"vae": "latents", "teacher": "features"}


class EncoderActor:
    """Built once per actor: holds one encoder; each call encodes one shard into its sidecar."""

    def __init__(self, kind: str, vae_cfg: dict | None = None, teacher: str | None = None):
        self.kind, self.device = kind, torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if kind == "vae":
            from pydantic import TypeAdapter

            from wamforge.model_zoo.vae import VAEConfig, make_vae
            self.encoder = make_vae(TypeAdapter(VAEConfig).validate_python(vae_cfg)).to(self.device)
        else:
            from wamforge.model_zoo.encoders.teacher import VisionTeacher
            self.encoder = VisionTeacher(teacher).to(self.device)
        self.cache_id = self.encoder.cache_id

    def __call__(self, batch: dict) -> dict:
        summaries = [self.encode_shard(Path(shard)) for shard in batch["shard"]]
        return {"summary": np.array([json.dumps(s) for s in summaries])}

    @torch.no_grad()
    def encode_shard(self, shard: Path) -> dict:
        out = sidecar_path(shard, self.cache_id)
        if out.exists():
            return {"shard": shard.name, "sidecar": out.name, "skipped": True}
        tmp = out.with_name(out.name + ".tmp")
        field, count = f"{OUTPUTS[self.kind]}.npy", 0
        with wds.TarWriter(str(tmp), mtime=0) as sink:
            for sample in wds.WebDataset(str(shard), shardshuffle=False, empty_check=False):
                views = len(json.loads(sample["json"])["views"])
                frames = untile_views(decode_mp4(sample["mp4"]), views)  # [T, V, H, W, 3]
                sink.write({"__key__": sample["__key__"], field: _npy(self.encode(frames))})
                count += 1
        os.replace(tmp, out)
        return {"shard": shard.name, "sidecar": out.name, "samples": count}

    def encode(self, frames: np.ndarray) -> np.ndarray:
        if self.kind == "vae":
            from wamforge.model_zoo.vae import encode_views
            video = video_to_tensor(frames)[None].to(self.device)
            return encode_views(self.encoder, video)[0].float().cpu().numpy()
        t, v = frames.shape[:2]
        features = self.encoder(torch.from_numpy(frames.reshape(t * v, *frames.shape[2:])))
        return features.reshape(t, v, *features.shape[1:]).numpy()


def cache_id(kind: str, cfg) -> str:
    if kind == "vae":
        from wamforge.model_zoo.vae import cache_id as vae_cache_id
        return vae_cache_id(cfg.model.vae)
    from wamforge.model_zoo.encoders.teacher import teacher_id
    return teacher_id(cfg.data.teacher)


def sidecar_path(shard: Path, cache_id: str) -> Path:
    return shard.with_name(f"{shard.stem}.{cache_id}.tar")


def build_caches(cfg, out: Path, manifest: dict, ray_address: str | None = None) -> dict[str, dict]:
    """Run every configured encoder over every shard; returns {cache_id: {"output", "sidecars"}}."""
    import ray

    shards = [str(out / s["path"]) for s in manifest["shards"]]
    caches = {}
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=ray_address or "local", num_cpus=None if ray_address else cfg.data.build_workers,
                 include_dashboard=False, logging_level="warning", configure_logging=True)
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        for kind in cfg.data.caches:
            args = {"kind": kind, "vae_cfg": cfg.model.vae.model_dump(mode="json"), "teacher": cfg.data.teacher}
            ds = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=max(1, len(shards)))
            rows = ds.map_batches(EncoderActor, fn_constructor_kwargs=args, batch_size=1, num_gpus=gpus,
                                  num_cpus=0 if gpus else 1,
                                  compute=ray.data.ActorPoolStrategy(size=cfg.data.cache_actors)).take_all()
            summaries = [json.loads(r["summary"]) for r in rows]
            caches[cache_id(kind, cfg)] = {"output": OUTPUTS[kind], "sidecars": {
                f"shards/{s['shard']}": f"shards/{s['sidecar']}" for s in summaries}}
    finally:
        if started_here:
            ray.shutdown()
    return caches


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()
