"""ResNet-18 and its residual block, as torchvision builds them."""

from __future__ import annotations

import torch
from torch import nn

from runtime.zoo.base import Block, Layer, ZooModel, leaves, sequential_layers


class BasicBlock(Block):
    """torchvision's ResNet BasicBlock: two 3x3 convs plus identity or 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def branches(self) -> list[list[nn.Module]]:
        main = [self.conv1, self.bn1, self.relu, self.conv2, self.bn2]
        shortcut = [] if self.downsample is None else leaves(self.downsample)
        return [main, shortcut]

    def merge(self) -> list[nn.Module]:
        return [self.relu]


class ResNet18(ZooModel):
    """torchvision's resnet18, module for module."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def units(self) -> list[Layer]:
        stem = ("conv1", "bn1", "relu", "maxpool")
        stages = ("layer1", "layer2", "layer3", "layer4")
        return [
            *[(name, [getattr(self, name)]) for name in stem],
            *[u for name in stages for u in sequential_layers(getattr(self, name), name)],
            ("avgpool", [self.avgpool]),
            ("flatten", [nn.Flatten()]),
            ("fc", [self.fc]),
        ]
