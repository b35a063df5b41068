"""The image encoder of Diffusion Policy (Chi et al., RSS 2023): a ResNet-18-style network trained from
scratch, with GroupNorm in place of BatchNorm and spatial-softmax keypoints in place of global average
pooling, and the random crop it is trained with.

Why these choices: BatchNorm's running statistics drift under the EMA of weights that diffusion
policies are trained with, so Chi et al. replace every BatchNorm by GroupNorm of 16 channels a group.
Average pooling throws away where things are in the image; spatial softmax keeps, per heat map, the
expected (x, y) position, which is what a manipulation policy needs.
"""
from __future__ import annotations

import torch
from torch import nn

GROUP_CHANNELS = 16  # channels per GroupNorm group, as Chi et al. replace BatchNorm


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, channels // GROUP_CHANNELS), channels)


class BasicBlock(nn.Module):
    """ResNet's basic residual block: two 3x3 convolutions, the first strided, and a projected shortcut
    where the shape changes."""

    def __init__(self, channels_in: int, channels_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.norm2 = group_norm(channels_out)
        self.act = nn.ReLU()
        self.shortcut = nn.Identity() if stride == 1 and channels_in == channels_out else nn.Sequential(
            nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False), group_norm(channels_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(h)) + self.shortcut(x))


class SpatialSoftmax(nn.Module):
    """Feature map [N, C, h, w] -> K keypoints [N, 2K]: a 1x1 convolution makes K heat maps, a softmax
    over positions makes each a distribution, and its mean (x, y) in [-1, 1] is the keypoint."""

    def __init__(self, channels: int, keypoints: int):
        super().__init__()
        self.to_heatmaps = nn.Conv2d(channels, keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        weights = self.to_heatmaps(x).flatten(2).float().softmax(dim=-1)  # [N, K, h * w], in fp32
        ys = torch.linspace(-1.0, 1.0, height, device=x.device)
        xs = torch.linspace(-1.0, 1.0, width, device=x.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        keypoints = torch.stack([(weights * grid_x.flatten()).sum(-1), (weights * grid_y.flatten()).sum(-1)], dim=-1)
        return keypoints.flatten(1).to(x.dtype)


class ImageEncoder(nn.Module):
    """Image [N, 3, H, W] in [-1, 1] -> features [N, features]: stem, stages of basic blocks (the first
    at full width, each later one halving the map), spatial-softmax keypoints, then a linear layer."""

    def __init__(self, widths: tuple[int, ...], blocks_per_stage: int, stem_stride: int, keypoints: int,
                 features: int):
        super().__init__()
        stem = [nn.Conv2d(3, widths[0], 7, stride=1 if stem_stride == 1 else 2, padding=3, bias=False),
                group_norm(widths[0]), nn.ReLU()]
        if stem_stride == 4:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        blocks, channels = [], widths[0]
        for stage, width in enumerate(widths):
            for index in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, width, stride=2 if stage > 0 and index == 0 else 1))
                channels = width
        self.stages = nn.Sequential(*blocks)
        self.keypoints = SpatialSoftmax(channels, keypoints)
        self.project = nn.Linear(2 * keypoints, features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.keypoints(self.stages(self.stem(images))))


def crop(images: torch.Tensor, share: float, random: bool) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, h, w] with h, w = share of H, W: a random crop per image in training
    (Chi et al.'s augmentation), the center crop at inference, so both see images of one size."""
    n, _, height, width = images.shape
    size_h, size_w = max(1, int(height * share)), max(1, int(width * share))
    if (size_h, size_w) == (height, width):
        return images
    if not random:
        top, left = (height - size_h) // 2, (width - size_w) // 2
        return images[:, :, top: top + size_h, left: left + size_w]
    top = torch.randint(0, height - size_h + 1, (n, 1, 1), device=images.device)
    left = torch.randint(0, width - size_w + 1, (n, 1, 1), device=images.device)
    rows = top + torch.arange(size_h, device=images.device)[None, :, None]  # [N, h, 1]
    cols = left + torch.arange(size_w, device=images.device)[None, None, :]  # [N, 1, w]
    sample = torch.arange(n, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[sample, rows, cols].permute(0, 3, 1, 2)
