"""VGG11 with BatchNorm for 32x32 inputs, base width as a parameter."""

from __future__ import annotations

import torch
import torch.nn as nn

from harden.ingest.models.registry import register_arch

_VGG11 = [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"]  # multiples of the base width


class CifarVGG(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG11:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                cout = int(v) * width
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_arch("cifar_vgg11_bn", "VGG11 with BatchNorm for 32x32 inputs; model_args: width (default 64)")
def cifar_vgg11_bn(num_classes: int = 10, width: int = 64) -> nn.Module:
    return CifarVGG(num_classes, width)
