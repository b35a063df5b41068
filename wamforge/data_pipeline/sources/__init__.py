"""Source adapters: one module per on-disk or generated format, each yielding `Episode`s.

An adapter has `episode_specs() -> list[dict]` (small, JSON-able, deterministic) and
`load(spec) -> Episode`; `prepare()` is optional. Adapters are built inside Ray workers, so
they are imported lazily by format name.
"""
from __future__ import annotations

from importlib import import_module

from wamforge.config.data import DataConfig, SourceConfig

ADAPTERS = {
    "metaworld": "wamforge.data_pipeline.sources.metaworld:MetaWorldSource",
    "aloha": "wamforge.data_pipeline.sources.aloha:AlohaSource",
    "video_folder": "wamforge.data_pipeline.sources.video_folder:VideoFolderSource",
    "egocentric": "wamforge.data_pipeline.sources.egocentric:EgocentricSource",
    "lerobot": "wamforge.data_pipeline.sources.lerobot:LeRobotSource",
    "robomimic": "wamforge.data_pipeline.sources.robomimic:RobomimicSource",
    "rlds": "wamforge.data_pipeline.sources.rlds:RLDSSource",
}


def make_source(name: str, cfg: SourceConfig, data: DataConfig):
    module, cls = ADAPTERS[cfg.format].split(":")
    return getattr(import_module(module), cls)(name, cfg, data)
