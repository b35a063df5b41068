"""`data`: sources, windows, resolution and the build's caches."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from wamforge.config.base import Strict


class ProceduralVideo(Strict):
    """Procedural motion clips: an action-free stand-in for internet video, labelled as such."""
    videos: int = Field(24, ge=1)
    frames: int = Field(48, ge=5)
    seed: int = 0


SIMULATORS = ("metaworld", "aloha")  # sources that generate episodes from named tasks, not read a path


class SourceConfig(Strict):
    format: Literal["metaworld", "aloha", "video_folder", "egocentric", "lerobot", "robomimic", "rlds"]
    kind: Literal["internet", "egocentric", "teleop", "sim", "synthetic"]
    embodiment: str
    description: str = ""
    # simulators: metaworld (tasks such as reach-v3) and aloha (tasks transfer-cube, insertion)
    tasks: list[str] = []
    episodes_per_task: int = Field(4, ge=1)
    max_steps: int = Field(120, ge=8)  # aloha, when unset: 400, its experts' plan length (they finish by ~380)
    camera: str = "corner"  # aloha, when unset: top
    seed: int = 0
    # the few-demo protocol keeps a demo only when the expert succeeds: a failed rollout is redrawn
    # from the next seed, up to `attempts` times, and quarantined after that
    successful_only: bool = False
    attempts: int = Field(5, ge=1)
    # video_folder
    path: str | None = None
    generate: ProceduralVideo | None = None
    caption_file: str = "captions.jsonl"  # .jsonl or .csv: video (or path, videoid), caption (or name), start, end
    clip_seconds: float | None = Field(None, gt=0)  # split long videos into clips of at most this long
    cut_threshold: float | None = Field(None, gt=0)  # split at shot cuts (histogram distance 0..2); None: no cuts
    reject_static_blank: bool = True  # quarantine clips with almost no motion or no contrast
    # recorded robot data (lerobot, robomimic): which cameras, state fields and action field to read;
    # empty means the format's usual names (all cameras; observation.state / robot0_eef_* ; action(s))
    cameras: list[str] = []
    state_keys: list[str] = []
    action_key: str | None = None
    language: str = ""  # the instruction when the data has none
    fps: float | None = Field(None, gt=0)  # the recording rate, where the files do not state it (robomimic: 20)

    @model_validator(mode="after")
    def _format_fields(self):
        if self.format in SIMULATORS and not self.tasks:
            example = "reach-v3" if self.format == "metaworld" else "transfer-cube, insertion"
            raise ValueError(f"a source of format {self.format} needs at least one task in 'tasks' (e.g. {example})")
        if self.format not in SIMULATORS and not self.path:
            raise ValueError(f"a {self.format} source needs 'path'")
        if self.format == "aloha":  # the shared defaults above are Meta-World's
            if "max_steps" not in self.model_fields_set:
                self.max_steps = 400
            if "camera" not in self.model_fields_set:
                self.camera = "top"
        return self


class DataConfig(Strict):
    out_dir: str | None = None  # default: <run_dir>/data
    clip_frames: int = Field(9, ge=1)
    clip_stride: int = Field(4, ge=1)  # control steps between the current frames of neighbouring windows
    # multi-rate windows: video frames every frame_stride control steps, actions at every step
    frame_stride: int = Field(1, ge=1)
    # past context: video frames before the current one (clean conditioning, a multiple of the VAE's
    # temporal stride 4); at an episode's start they repeat its first frame and are marked as padding
    context_frames: int = Field(0, ge=0)
    action_frames: int = Field(32, ge=1)  # action/proprio rows stored from the current frame on (>= horizon)
    # encoder caches built after the shards, by Ray actors: "vae" (the model's video VAE: latents,
    # which training then reads instead of decoding and encoding video) and "teacher" (features)
    caches: list[Literal["vae", "teacher"]] = []
    teacher: str | None = None  # a local Hugging Face vision checkpoint (e.g. DINOv2, SigLIP) for "teacher"
    cache_actors: int = Field(1, ge=1)  # encoder actors; each takes a GPU where there is one
    resolution: tuple[int, int] = (64, 64)
    fps: float = Field(10.0, gt=0)
    episodes_per_task: int = Field(4, ge=1)  # episodes per build task: the unit of parallel (and resumed) work
    shard_mb: float = Field(256.0, gt=0)  # a task rolls over to a new shard file past this size
    build_workers: int = Field(2, ge=1)
    sources: dict[str, SourceConfig]

    @field_validator("clip_frames")
    @classmethod
    def _wan_aligned(cls, t: int) -> int:
        if (t - 1) % 4:
            raise ValueError(f"clip_frames must be 1 + 4k to match the video VAE's temporal stride; got {t}")
        return t

    @model_validator(mode="after")
    def _teacher_named(self):
        if "teacher" in self.caches and not self.teacher:
            raise ValueError("data.caches names 'teacher' but data.teacher (a local checkpoint folder) is not set")
        return self

    @model_validator(mode="after")
    def _context_fits(self):
        if self.context_frames % 4 or self.context_frames >= self.clip_frames - 1:
            raise ValueError(f"context_frames must be a multiple of 4 below clip_frames - 1 = {self.clip_frames - 1} "
                             f"(whole latent frames of context, at least one future latent); got {self.context_frames}")
        return self
