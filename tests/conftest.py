"""Shared fixtures: a tiny experiment, and one real Ray-built dataset reused across tests."""
from __future__ import annotations

import copy
import faulthandler
import os
import types
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("MUJOCO_GL", "egl")
REPO = Path(__file__).resolve().parents[1]


def pytest_unconfigure(config):
    """Something a test left running (a loader worker, a thread) must fail the run with its stack
    a while after the summary, never keep the process from exiting."""
    faulthandler.dump_traceback_later(120, exit=True)


TINY = {
    "name": "tiny",
    "seed": 0,
    "embodiments": str(REPO / "configs" / "embodiments.yaml"),
    "data": {
        "clip_frames": 9, "clip_stride": 4, "resolution": [32, 32], "fps": 10, "build_workers": 2,
        "sources": {
            "sim": {"format": "metaworld", "kind": "sim", "embodiment": "sawyer", "tasks": ["reach-v3"],
                    "episodes_per_task": 8, "max_steps": 30, "camera": "corner", "seed": 0},
            "web": {"format": "video_folder", "kind": "synthetic", "embodiment": "none",
                    "generate": {"videos": 8, "frames": 24}},
        },
    },
    "model": {"substrate": {"kind": "feature.tap", "layer": 1},
              "trunk": {"kind": "wan", "dim": 32, "layers": 2, "heads": 2, "ffn_dim": 64},
              "text": {"dim": 32, "max_tokens": 16},
              "coupling": {"kind": "post_prediction_head", "head": {"kind": "cross_attention", "dim": 32, "layers": 1,
                                                                    "heads": 2}},
              "regime": {"kind": "chunked", "horizon": 4}},
    "training": {"world_size": 2, "micro_batch_per_rank": 2, "checkpoint_every": 3, "loader_workers": 2,
                 "shuffle_buffer_mb": 0.02},
    "stages": [
        {"name": "pretrain_video", "objective": "video", "steps": 4, "lr": 1e-3,
         "mixture": {"weights": {"web": 1.0, "sim": 1.0}}},
        {"name": "align_embodiment", "objective": "joint", "steps": 8, "lr": 1e-3,
         "mixture": {"weights": {"web": 1.0, "sim": 1.0}}},
        {"name": "finetune_action", "objective": "action", "steps": 6, "lr": 1e-3,
         "trainable": ["action_expert.*", "embodiments.*"], "mixture": {"weights": {"sim": 1.0}}},
    ],
    "eval": {"suite": {"kind": "metaworld", "tasks": ["reach-v3"]}, "episodes": 1, "max_steps": 12, "execute_steps": 4,
             "flow_steps": 2, "videos": 1, "future_windows": 1},
}


def tiny_config(root: Path, **changes) -> dict:
    """The tiny experiment rooted in `root` (runs under root/runs, raw video under root/raw)."""
    raw = copy.deepcopy(TINY)
    raw["run_dir"] = str(root / "runs")
    raw["data"]["sources"]["web"]["path"] = str(root / "raw" / "web")
    for key, value in changes.items():
        raw[key] = value
    return raw


def write_config(raw: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """(config, manifest) of one real build, shared by the data, loader and training tests."""
    from wamforge.config import validate
    from wamforge.data_pipeline.build.pipeline import build_dataset

    root = tmp_path_factory.mktemp("built")
    cfg = validate(tiny_config(root))
    manifest = build_dataset(cfg)
    return cfg, manifest


@pytest.fixture
def nearest_resize_without_torchvision(monkeypatch):
    """diffusers resizes the padding mask with torchvision, which this venv lacks; torchvision's
    NEAREST resize of a tensor is torch.nn.functional.interpolate(mode="nearest"), so stand that in."""
    transformer_cosmos = pytest.importorskip("diffusers.models.transformers.transformer_cosmos")
    if getattr(transformer_cosmos, "transforms", None) is None:
        shim = types.SimpleNamespace(
            InterpolationMode=types.SimpleNamespace(NEAREST="nearest"),
            functional=types.SimpleNamespace(resize=lambda image, size, interpolation: torch.nn.functional.interpolate(
                image, size=tuple(size), mode=interpolation)))
        monkeypatch.setattr(transformer_cosmos, "transforms", shim, raising=False)
