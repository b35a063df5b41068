"""A frozen teacher feature model: any local Hugging Face vision transformer (DINOv2, SigLIP's
vision tower, ViT), read from a folder with `from_pretrained` (safetensors only, nothing fetched).
It turns each video frame into its patch features, the substrate of feature-space WAMs (survey:
feature.teacher)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VisionTeacher(torch.nn.Module):
    def __init__(self, path: str | Path):
        super().__init__()
        from transformers import AutoModel

        self.cache_id = teacher_id(path)
        model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
        self.model = getattr(model, "vision_model", model).eval().requires_grad_(False)  # SigLIP/CLIP: the vision tower
        self.image_size = self.model.config.image_size

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> patch features [T, tokens, dim] (float16)."""
        device = next(self.model.parameters()).device
        x = frames.to(device).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
        return self.model(pixel_values=(x - mean) / std).last_hidden_state.half().cpu()


def teacher_id(path: str | Path) -> str:
    """encoder@version of a checkpoint folder, from its config and weights, without loading it."""
    path = Path(path)
    weights = sorted(path.glob("*.safetensors"))
    if not weights or not (path / "config.json").exists():
        raise FileNotFoundError(f"teacher checkpoint {path} needs config.json and .safetensors weights "
                                f"(pickled weights are refused)")
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for w in weights:
        with open(w, "rb") as f:
            digest.update(f.read(1 << 20))  # the header and first MiB name the weights cheaply
        digest.update(str(w.stat().st_size).encode())
    model_type = json.loads((path / "config.json").read_text()).get("model_type", "vision")
    return f"{model_type}-{digest.hexdigest()[:10]}@1"
