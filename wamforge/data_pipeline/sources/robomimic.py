"""robomimic and LIBERO demonstrations in HDF5: `data/demo_N/{actions, obs/<camera>_image,
obs/robot0_*}`, with the environment in `data.attrs["env_args"]` (robomimic) and the instruction in
`data.attrs["problem_info"]` (LIBERO). `path` is one .hdf5 file or a folder of them.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from wamforge.config.data import DataConfig, SourceConfig
from wamforge.data_pipeline.schema import Episode
from wamforge.data_pipeline.video import resample_indices, resize_center_crop

DEFAULT_STATE = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]
DEFAULT_FPS = 20.0  # robomimic and LIBERO control rate


class RobomimicSource:
    def __init__(self, name: str, cfg: SourceConfig, data: DataConfig):
        self.name, self.cfg, self.data = name, cfg, data
        self.root = Path(cfg.path)
        self.state_keys = cfg.state_keys or DEFAULT_STATE
        self.action_key = cfg.action_key or "actions"
        self.fps = cfg.fps or DEFAULT_FPS

    def files(self) -> list[Path]:
        if self.root.is_file():
            return [self.root]
        found = sorted(self.root.rglob("*.hdf5")) + sorted(self.root.rglob("*.h5"))
        if not found:
            raise FileNotFoundError(f"source '{self.name}': no .hdf5 files at {self.root}")
        return found

    def episode_specs(self) -> list[dict]:
        import h5py

        specs = []
        for path in self.files():
            with h5py.File(path, "r") as f:
                demos = sorted(f["data"].keys(), key=lambda d: int(re.sub(r"\D", "", d) or 0))
            specs += [{"file": str(path), "demo": d, "episode": f"{path.stem}_{d}"} for d in demos]
        return specs

    def load(self, spec: dict) -> Episode:
        import h5py

        with h5py.File(spec["file"], "r") as f:
            data = f["data"]
            demo = data[spec["demo"]]
            if "obs" not in demo or self.action_key not in demo:
                raise ValueError(f"{spec['demo']} has no {'obs' if 'obs' not in demo else self.action_key!r} "
                               f"group or dataset (members: {', '.join(demo.keys())})")
            if len(demo[self.action_key]) == 0:
                raise ValueError(f"{spec['demo']} is empty (0 steps)")
            obs = demo["obs"]
            cameras = self.cfg.cameras or sorted(k[: -len("_image")] for k in obs if k.endswith("_image"))
            missing = [c for c in cameras if f"{c}_image" not in obs]
            if missing or not cameras:
                raise ValueError(f"{spec['demo']} has no camera {missing or '(none at all)'}; obs holds {', '.join(obs)}")
            views = [_image(obs, c, tuple(self.data.resolution)) for c in cameras]
            actions = demo[self.action_key][()].astype(np.float32)
            proprio = np.concatenate([obs[k][()].reshape(len(actions), -1) for k in self.state_keys], axis=1)
            language = self.cfg.language or _instruction(data.attrs)
        for camera, view in zip(cameras, views):
            if len(view) != len(actions):
                raise ValueError(f"camera {camera} has {len(view)} frames but {self.action_key} has {len(actions)} steps")
        keep = resample_indices(len(actions), self.fps, self.data.fps)
        return Episode(source=self.name, episode=spec["episode"], kind=self.cfg.kind, embodiment=self.cfg.embodiment,
                       frames=np.stack(views, axis=1)[keep], fps=self.data.fps, views=cameras, language=language,
                       actions=actions[keep], proprio=proprio.astype(np.float32)[keep],
                       action_space=f"robomimic:{self.cfg.embodiment}", extra={"file": Path(spec["file"]).name})


def _image(obs, camera: str, resolution: tuple[int, int]) -> np.ndarray:
    images = obs[f"{camera}_image"]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"camera {camera}: images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    return resize_center_crop(images[()], resolution)


def _instruction(attrs) -> str:
    """LIBERO's language instruction, else robomimic's environment name."""
    if "problem_info" in attrs:
        return json.loads(attrs["problem_info"]).get("language_instruction", "")
    if "env_args" in attrs:
        return json.loads(attrs["env_args"]).get("env_name", "")
    return ""
