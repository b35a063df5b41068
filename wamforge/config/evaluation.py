"""`eval`: the evaluation protocol (suite, seeds, episodes, parallelism, what is recorded) and the
inference controller's knobs."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from wamforge.config.base import Strict
from wamforge.evaluation.suites import SuiteConfig
from wamforge.evaluation.suites.metaworld import MetaWorldSuiteConfig


class EvalConfig(Strict):
    suite: SuiteConfig = MetaWorldSuiteConfig()
    episodes: int = Field(3, ge=1, description="episodes per task per seed (the few-demo protocol: 20)")
    seeds: list[int] = Field([1000], min_length=1, description="evaluation seeds; each draws its own layouts")
    max_steps: int | None = Field(None, ge=1, description="steps per episode; default: the suite's")
    execute_steps: int = Field(4, ge=1)  # K: actions executed per chunk
    # the inference controller's knobs (model_zoo/inference.py), recorded in the report
    flow_steps: int = Field(8, ge=1, description="Euler steps of the action stream")
    video_steps: int = Field(8, ge=1, description="Euler steps of the video stream, whenever the future is denoised")
    render_future: bool = Field(False, description="denoise the future to t = 0 before acting")
    guidance: float = Field(1.0, ge=0, description="classifier-free guidance on the caption (1: none)")
    references: list[Literal["expert", "random"]] = Field(
        ["expert", "random"], description="reference controllers run on the same seeds as the policy")
    workers: int = Field(1, ge=1, description="episodes in parallel, one Ray actor each (1: in this process)")
    ray_address: str | None = Field(None, description="a Ray cluster to run the episodes on (default: local)")
    videos: int = Field(2, ge=0, description="the first N policy episodes per task written as mp4")
    future_windows: int = Field(4, ge=0, description="held-out windows whose predicted futures are scored and shown")
    embodiment: str | None = Field(None, description="default: the suite's robot")
    source: str = "sim"  # the data source whose camera and resolution the policy sees

    @field_validator("suite", mode="before")
    @classmethod
    def _name_means_kind(cls, value):
        return {"kind": value} if isinstance(value, str) else value

    def inference(self):
        from wamforge.model_zoo.inference import Inference

        return Inference(action_steps=self.flow_steps, video_steps=self.video_steps,
                         render_future=self.render_future, guidance=self.guidance)
