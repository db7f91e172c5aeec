"""Models of a user's own, outside the zoo: what ``--model user_models:StripNet`` names in the tests."""

from __future__ import annotations

import torch
from torch import nn

from runtime.zoo.base import Layer, ZooModel, sequential_layers


class StripNet(ZooModel):
    """A small CNN on a non-square input: padded and unpadded convs, a pool, then a flat head."""

    input_shape = (3, 40, 36)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 5),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def units(self) -> list[Layer]:
        return sequential_layers(self.features, "features") + sequential_layers(self.head, "head")


class NoShape(StripNet):
    """Says nothing of its input."""

    input_shape = None


class NotAModel(nn.Module):
    """A torch module that does not describe itself as layers."""
