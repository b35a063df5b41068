from wamforge.model_zoo.wam import WorldActionModel

__all__ = ["WorldActionModel"]
