"""`eval`: the closed-loop evaluation and the inference controller's knobs."""
from __future__ import annotations

from pydantic import Field

from wamforge.config.base import Strict


class EvalConfig(Strict):
    tasks: list[str] = []
    episodes: int = Field(3, ge=1)
    max_steps: int = Field(150, ge=1)
    execute_steps: int = Field(4, ge=1)  # K: actions executed per chunk
    # the inference controller's knobs (model_zoo/inference.py), recorded in the report
    flow_steps: int = Field(8, ge=1, description="Euler steps of the action stream")
    video_steps: int = Field(8, ge=1, description="Euler steps of the video stream, whenever the future is denoised")
    render_future: bool = Field(False, description="denoise the future to t = 0 before acting")
    guidance: float = Field(1.0, ge=0, description="classifier-free guidance on the caption (1: none)")
    seed: int = 1000
    embodiment: str = "sawyer"
    source: str = "sim"  # the data source whose camera and resolution the policy sees

    def inference(self):
        from wamforge.model_zoo.inference import Inference

        return Inference(action_steps=self.flow_steps, video_steps=self.video_steps,
                         render_future=self.render_future, guidance=self.guidance)
