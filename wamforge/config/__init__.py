from wamforge.config.load import ConfigError, apply_override, config_hash, load_config, validate
from wamforge.config.schema import ExperimentConfig, SourceConfig, StageConfig

__all__ = ["ConfigError", "ExperimentConfig", "SourceConfig", "StageConfig", "apply_override",
           "config_hash", "load_config", "validate"]
