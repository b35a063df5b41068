"""The survey's anatomy of a World Action Model (see README.md here): build one with `build_model`."""
from __future__ import annotations


def __getattr__(name: str):
    # lazy, so that importing one component (or the census) does not build the whole zoo
    if name == "build_model":
        from wamforge.model_zoo.build import build_model

        return build_model
    if name == "WorldActionModel":
        from wamforge.model_zoo.wam import WorldActionModel

        return WorldActionModel
    raise AttributeError(name)


__all__ = ["WorldActionModel", "build_model"]
