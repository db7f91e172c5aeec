"""A small, fast test model with every construct the partitioner handles."""

from __future__ import annotations

import torch
from torch import nn

from runtime.zoo.base import Layer, ZooModel
from runtime.zoo.mobilenet import InvertedResidual
from runtime.zoo.resnet import BasicBlock


class TinyNet(ZooModel):
    """A small, fast CNN covering every construct the partitioner handles.

    Padded conv, stride-2 conv, padded maxpool, a residual block with a 1x1 stride-2 shortcut, an
    inverted-residual block with identity shortcut (dilated depthwise conv), then a flat head.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.res = BasicBlock(32, 64, stride=2)
        self.inv = InvertedResidual(64, 64, stride=1, expand=2, dilation=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 32)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool(self.relu2(self.bn2(self.conv2(x))))
        x = self.flatten(self.avgpool(self.inv(self.res(x))))
        return self.fc2(self.relu3(self.fc1(x)))

    def units(self) -> list[Layer]:
        return [(name, [module]) for name, module in self.named_children()]
