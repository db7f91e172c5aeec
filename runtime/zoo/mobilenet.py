"""MobileNetV2 and its inverted-residual block, as torchvision builds them."""

from __future__ import annotations

import torch
from torch import nn

from runtime.zoo.base import Block, Layer, ZooModel, leaves, sequential_layers


def conv_bn_act(
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    dilation: int = 1,
) -> nn.Sequential:
    """Conv (same padding, no bias) + BN + ReLU6, laid out like torchvision's
    Conv2dNormActivation so state_dict keys match (``.0`` conv, ``.1`` bn)."""
    padding = (kernel - 1) // 2 * dilation
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    )


class InvertedResidual(Block):
    """torchvision's MobileNetV2 block (expand 1x1, depthwise 3x3, project 1x1).

    Without a residual connection (stride 2 or channel change) it is a single-branch block.
    ``dilation`` (not in torchvision) lets the test model exercise dilated depthwise convs.
    """

    def __init__(self, cin: int, cout: int, stride: int, expand: int, dilation: int = 1) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_act(cin, hidden, 1))
        layers += [
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden, dilation=dilation),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def branches(self) -> list[list[nn.Module]]:
        main = leaves(self.conv)
        return [main, []] if self.use_res_connect else [main]

    def merge(self) -> list[nn.Module]:
        return []


class MobileNetV2(ZooModel):
    """torchvision's mobilenet_v2 (width 1.0), module for module."""

    # expansion t, output channels c, repeats n, first stride s
    _SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        features: list[nn.Module] = [conv_bn_act(3, 32, 3, stride=2)]
        cin = 32
        for t, c, n, s in self._SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(conv_bn_act(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))

    def units(self) -> list[Layer]:
        return [
            *sequential_layers(self.features, "features"),
            ("avgpool", [nn.AdaptiveAvgPool2d((1, 1))]),
            ("flatten", [nn.Flatten()]),
            *sequential_layers(self.classifier, "classifier"),
        ]
