"""The `aloha` source: ALOHA sim episodes (transfer-cube, insertion) recorded from the scripted
experts, as 14-D joint-position actions at 50 Hz, seen by the `top` camera unless configured."""
from __future__ import annotations

from wamforge.config.data import DataConfig, SourceConfig
from wamforge.data_pipeline.schema import Episode
from wamforge.data_pipeline.sources.expert_rollout import SUCCESS_TAIL_STEPS, expert_episode
from wamforge.data_pipeline.sources import aloha_env as aloha

SOURCE_FORMAT = "aloha"


class AlohaSource:
    def __init__(self, name: str, cfg: SourceConfig, data: DataConfig):
        unknown = [t for t in cfg.tasks if t not in aloha.TASKS]
        if unknown:  # before any worker starts on it
            raise ValueError(f"source '{name}': unknown ALOHA task '{unknown[0]}'; known: {', '.join(aloha.TASKS)}")
        self.name, self.cfg, self.data = name, cfg, data

    def episode_specs(self) -> list[dict]:
        """One small JSON-able spec per episode, in a fixed order; the seed fixes the layout."""
        return [{"task": task, "index": index, "seed": aloha.episode_seed(self.cfg.seed, task, index)}
                for task in self.cfg.tasks for index in range(self.cfg.episodes_per_task)]

    def load(self, spec: dict) -> Episode:
        """Replay the expert; frame t is what it saw before taking action t. Failures are kept."""
        task, seed = spec["task"], spec["seed"]
        cameras = self.cfg.cameras or [self.cfg.camera]
        expert = aloha.expert_actions(task, seed, self.cfg.max_steps)
        sim = aloha.AlohaSim(task, tuple(cameras), tuple(self.data.resolution))
        frames, actions, proprio = [], [], []
        success_step = None  # index of the first frame that shows the task solved
        try:
            sim.reset(seed)
            for action in expert:
                frames.append(sim.render())
                actions.append(action)
                proprio.append(sim.proprio())
                sim.step(action)
                if success_step is None and sim.success:
                    success_step = len(actions)
                if success_step is not None and len(actions) >= success_step + SUCCESS_TAIL_STEPS:
                    break
        finally:
            sim.close()
        return expert_episode(self, spec, seed, cameras, aloha.instruction(task), aloha.ACTION_SPACE, frames, actions,
                              proprio, success_step)
