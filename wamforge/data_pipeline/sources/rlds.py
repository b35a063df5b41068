"""RLDS / Open X-Embodiment episodes, read with tensorflow-datasets from a prepared dataset folder
(`<name>/<version>/` with dataset_info.json, features.json and tfrecord files), as the OXE
releases ship them. Needs the `rlds` extra (tensorflow-cpu, tensorflow-datasets).

An episode's `steps` hold `observation` (camera images and state vectors), `action` and usually
`language_instruction`. Cameras default to every image feature of the observation, state to the
fields named in `state_keys` (default `state`), the action to `action_key` (default `action`).

TensorFlow runs in a helper process of its own: loaded beside MuJoCo's EGL renderer (a Meta-World
source in the same build worker) it crashes the process.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

from wamforge.config.data import DataConfig, SourceConfig
from wamforge.data_pipeline.schema import Episode
from wamforge.data_pipeline.video import resample_indices, resize_center_crop

DEFAULT_FPS = 10.0  # OXE datasets record at 3 to 30 Hz and rarely say; set `fps` per source


@lru_cache(maxsize=1)
def _tfds():
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError("RLDS sources need tensorflow-datasets: pip install 'wamforge[rlds]'") from None
    try:  # possible only before TensorFlow first runs anything in this process
        tf.config.set_visible_devices([], "GPU")  # the reader needs no GPU; leave it to training
        tf.config.threading.set_intra_op_parallelism_threads(1)  # a build runs one task per core
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
    return tf, tfds


def _describe(root: str, split: str) -> dict:
    """(helper process) name, observation features and episode count of a prepared dataset."""
    _, tfds = _tfds()
    builder = tfds.builder_from_directory(root)
    observation = builder.info.features["steps"]["observation"]
    return {"name": builder.info.name, "count": builder.info.splits[split].num_examples,
            "images": sorted(k for k, f in observation.items() if type(f).__name__ == "Image"),
            "observation": sorted(observation)}


def _read_episode(root: str, split: str, index: int) -> dict:
    """(helper process) one episode's steps, stacked into arrays."""
    _, tfds = _tfds()
    dataset = tfds.builder_from_directory(root).as_dataset(split=f"{split}[{index}:{index + 1}]")
    episode = next(iter(tfds.as_numpy(dataset)))
    return _stacked(list(episode["steps"]))  # steps arrive one by one, as a nested dataset


@lru_cache(maxsize=1)
def _helper() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


class RLDSSource:
    def __init__(self, name: str, cfg: SourceConfig, data: DataConfig):
        self.name, self.cfg, self.data = name, cfg, data
        self.root = Path(cfg.path)
        self.split = "train"

    def episode_specs(self) -> list[dict]:
        if not (self.root / "dataset_info.json").exists():
            raise FileNotFoundError(f"source '{self.name}': {self.root} is not a prepared TFDS dataset folder "
                                    f"(no dataset_info.json; point `path` at <name>/<version>)")
        info = _helper().submit(_describe, str(self.root), self.split).result()
        cameras = self.cfg.cameras or info["images"]
        missing = [c for c in cameras if c not in info["images"]]
        if missing or not cameras:
            raise ValueError(f"source '{self.name}': cameras {missing or '(none)'} are not image features of "
                             f"the observation; it has {info['observation']}")
        return [{"index": i, "episode": f"{info['name']}_{i:06d}", "cameras": cameras} for i in range(info["count"])]

    def load(self, spec: dict) -> Episode:
        steps = _helper().submit(_read_episode, str(self.root), self.split, spec["index"]).result()
        if not steps:
            raise ValueError(f"{spec['episode']} has no steps")
        observation = steps["observation"]
        action_key = self.cfg.action_key or "action"
        state_keys = self.cfg.state_keys or (["state"] if "state" in observation else [])
        for key, where in [(action_key, steps), *[(k, observation) for k in state_keys]]:
            if key not in where:
                raise ValueError(f"{spec['episode']} has no {key!r} (has {', '.join(sorted(where))})")
        actions = np.asarray(steps[action_key], np.float32).reshape(len(steps[action_key]), -1)
        views = [np.asarray(observation[c]) for c in spec["cameras"]]
        for camera, view in zip(spec["cameras"], views):
            if len(view) != len(actions):
                raise ValueError(f"camera {camera} has {len(view)} frames but {action_key} has {len(actions)} steps")
        proprio = (np.concatenate([np.asarray(observation[k], np.float32).reshape(len(actions), -1)
                                   for k in state_keys], axis=1) if state_keys else None)
        keep = resample_indices(len(actions), self.cfg.fps or DEFAULT_FPS, self.data.fps)
        frames = np.stack([resize_center_crop(v[keep], tuple(self.data.resolution)) for v in views], axis=1)
        language = bytes(steps["language_instruction"][0]).decode("utf-8", "replace") if "language_instruction" in steps else ""
        return Episode(source=self.name, episode=spec["episode"], kind=self.cfg.kind, embodiment=self.cfg.embodiment,
                       frames=frames, fps=self.data.fps, views=list(spec["cameras"]),
                       language=language or self.cfg.language, actions=actions[keep],
                       proprio=None if proprio is None else proprio[keep], action_space=f"rlds:{self.cfg.embodiment}",
                       extra={"rlds_index": spec["index"]})


def _stacked(steps: list[dict]) -> dict:
    """A list of (nested) step dicts -> one dict of arrays stacked over steps."""
    if not steps:
        return {}
    return {key: _stacked([step[key] for step in steps]) if isinstance(steps[0][key], dict)
            else np.stack([step[key] for step in steps]) for key in steps[0]}
