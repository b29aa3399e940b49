"""ResNet-50 in plain PyTorch, with SCSA placed as the paper does: after conv1 (+BN+ReLU) of every
bottleneck, on the block's mid channels (64, 128, 256, 512 at 56, 28, 14, 7 for a 224 input)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..module import SCSA

RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (mid channels, blocks, first stride)
EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce -> [SCSA] -> 3x3 (stride) -> 1x1 expand, plus the (projected) shortcut."""

    def __init__(self, in_channels: int, mid_channels: int, stride: int, scsa_backend: Optional[str]):
        super().__init__()
        out_channels = mid_channels * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.scsa = SCSA(mid_channels, backend=scsa_backend) if scsa_backend else nn.Identity()
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.scsa(self.relu(self.bn1(self.conv1(x))))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """images (B, 3, S, S) -> logits (B, num_classes). ``stages``: (mid channels, blocks, first stride)
    per stage, ResNet-50's by default. ``scsa_backend=None``: no SCSA (the plain network)."""

    def __init__(self, scsa_backend: Optional[str] = "reference", stages=RESNET50_STAGES, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        blocks, in_channels = [], 64
        for mid_channels, count, stride in stages:
            for i in range(count):
                blocks.append(Bottleneck(in_channels, mid_channels, stride if i == 0 else 1, scsa_backend))
                in_channels = mid_channels * EXPANSION
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(in_channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(images))
        return self.head(features.mean(dim=(2, 3)))
