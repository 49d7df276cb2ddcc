"""tiny_cnn: a first-class test fixture (two conv-bn-relu blocks, a residual, a linear head), for 16x16 inputs."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from harden.ingest.models.registry import register_arch


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 4, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(x)))
        h = F.relu(self.bn3(self.conv3(h)) + h)  # residual: conv2 and conv3 are one coupled group
        return self.head(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


@register_arch("tiny_cnn", "test fixture: 3 convs with BN and one residual, 16x16 input; model_args: width (8)")
def tiny_cnn(num_classes: int = 4, width: int = 8) -> nn.Module:
    return TinyCNN(num_classes, width)
