from wamforge.model_zoo.trunks.cosmos_dit import CosmosDiT
from wamforge.model_zoo.trunks.wan_dit import WanDiT

__all__ = ["CosmosDiT", "WanDiT"]
