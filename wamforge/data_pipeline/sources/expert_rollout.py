"""What the simulator sources share: a scripted expert's rollout recorded as an Episode."""
from __future__ import annotations

import numpy as np

from wamforge.data_pipeline.schema import Episode

SUCCESS_TAIL_STEPS = 8  # keep a few settled frames after success, then stop instead of idling


def expert_episode(source, spec: dict, seed: int, views: list[str], language: str, action_space: str,
                   frames: list, actions: list, proprio: list, success_step: int | None) -> Episode:
    """Frame t is what the expert saw before taking action t; a failed rollout is kept, flagged."""
    return Episode(
        source=source.name,
        episode=f"{spec['task']}_{spec['index']:04d}",
        kind=source.cfg.kind,
        embodiment=source.cfg.embodiment,
        frames=np.stack(frames),
        fps=source.data.fps,
        views=views,
        language=language,
        actions=np.stack(actions),
        proprio=np.stack(proprio),
        action_space=action_space,
        extra={"task": spec["task"], "seed": seed, "success": success_step is not None,
               "success_step": success_step},
    )
