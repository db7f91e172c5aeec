"""YOLOv2-tiny, the DeepThings model, as darknet's yolov2-tiny-voc.cfg defines it."""

from __future__ import annotations

import torch
from torch import nn

from runtime.zoo.base import Layer, ZooModel, sequential_layers


class YoloV2Tiny(ZooModel):
    """darknet's yolov2-tiny-voc.cfg (the DeepThings model): 416x416 in, 125x13x13 out.

    darknet's size-2 stride-1 maxpool keeps 13x13 by padding right/bottom; that is modelled as
    ZeroPad2d((0, 1, 0, 1)) + MaxPool2d(2, 1).
    """

    _FILTERS = (16, 32, 64, 128, 256, 512, 1024, 1024)

    def __init__(self, num_outputs: int = 125) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate(self._FILTERS):
            layers += [
                nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.LeakyReLU(0.1),
            ]
            if i < 5:
                layers.append(nn.MaxPool2d(2, 2))
            elif i == 5:
                layers += [nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(2, 1)]
            cin = cout
        layers.append(nn.Conv2d(cin, num_outputs, 1))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def units(self) -> list[Layer]:
        return sequential_layers(self.features, "features")
