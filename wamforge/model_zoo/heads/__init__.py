from wamforge.model_zoo.heads.action_expert import ActionExpert
from wamforge.model_zoo.heads.embodiment_bank import EmbodimentBank

__all__ = ["ActionExpert", "EmbodimentBank"]
