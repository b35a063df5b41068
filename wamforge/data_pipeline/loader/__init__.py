from wamforge.data_pipeline.loader.loader import MixtureLoader

__all__ = ["MixtureLoader"]
