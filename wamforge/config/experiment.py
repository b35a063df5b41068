"""The experiment: one file states data, the model's 4-tuple, the stages and the launch target."""
from __future__ import annotations

from pydantic import model_validator

from wamforge.config.base import Strict
from wamforge.config.data import DataConfig
from wamforge.config.evaluation import EvalConfig
from wamforge.config.model import AXES, ModelConfig
from wamforge.config.stages import StageConfig
from wamforge.config.training import LaunchConfig, TrainingConfig


class ExperimentConfig(Strict):
    name: str
    seed: int = 0
    run_dir: str = "runs"
    embodiments: str = "configs/embodiments.yaml"
    data: DataConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    stages: list[StageConfig]
    eval: EvalConfig = EvalConfig()
    launch: LaunchConfig = LaunchConfig()

    @model_validator(mode="after")
    def _cross_checks(self):
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique; got {names}")
        for stage in self.stages:
            for table in [stage.mixture.weights, *(p.weights for p in stage.mixture.curriculum)]:
                unknown = set(table) - set(self.data.sources)
                if unknown:
                    raise ValueError(f"stage '{stage.name}' mixes unknown sources {sorted(unknown)}; "
                                     f"known: {sorted(self.data.sources)}")
        horizon = self.model.regime.horizon
        if horizon > self.data.action_frames:
            raise ValueError(f"model.regime.horizon {horizon} exceeds the {self.data.action_frames} action rows "
                             f"a window stores; raise data.action_frames")
        if self.eval.execute_steps > horizon:
            raise ValueError(f"eval.execute_steps K = {self.eval.execute_steps} exceeds the chunk H = {horizon}; "
                             f"the chunked regime executes K <= H actions per chunk")
        for axis in AXES:  # a component's rules about the data it is trained on: one sentence each
            check = getattr(getattr(self.model, axis), "check_experiment", None)
            if check is not None:
                check(self)
        t = self.training
        if t.world_size % t.sequence_parallel:
            raise ValueError(f"training.world_size {t.world_size} is not a multiple of training.sequence_parallel "
                             f"{t.sequence_parallel}")
        if t.sequence_parallel > 1 and self.model.substrate.kind == "feature.encoder_only":
            raise ValueError("the feature.encoder_only substrate reads a KV cache of the observed frames, which "
                             "serves an unsharded trunk; set training.sequence_parallel to 1")
        if t.sequence_parallel > 1 and self.model.trunk.kind != "wan":
            raise ValueError("training.sequence_parallel splits the wan trunk's sequence; the cosmos trunk has no "
                             "sequence sharding, so set it to 1")
        if self.model.trunk.heads % t.sequence_parallel:
            raise ValueError(f"model.trunk.heads {self.model.trunk.heads} must divide by training.sequence_parallel "
                             f"{t.sequence_parallel}: Ulysses gives each rank of a group whole heads")
        if self.stages and self.stages[0].init_from == "previous":
            self.stages[0].init_from = None
        return self
