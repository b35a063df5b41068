from wamforge.model_zoo.trunks.wan_dit import WanDiT

__all__ = ["WanDiT"]
