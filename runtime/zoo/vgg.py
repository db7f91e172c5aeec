"""VGG-16 with batch norm, as torchvision builds it."""

from __future__ import annotations

import torch
from torch import nn

from runtime.zoo.base import Layer, ZooModel, sequential_layers


class VGG16BN(ZooModel):
    """torchvision's vgg16_bn, module for module."""

    _CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        features: list[nn.Module] = []
        cin = 3
        for v in self._CFG:
            if v == "M":
                features.append(nn.MaxPool2d(2, 2))
            else:
                features += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def units(self) -> list[Layer]:
        return [
            *sequential_layers(self.features, "features"),
            ("avgpool", [self.avgpool]),
            ("flatten", [nn.Flatten()]),
            *sequential_layers(self.classifier, "classifier"),
        ]
