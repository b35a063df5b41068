from wamforge.model_zoo.trunks.cosmos.model import CosmosDiT
from wamforge.model_zoo.trunks.wan.model import WanDiT

__all__ = ["CosmosDiT", "WanDiT"]
