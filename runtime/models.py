"""Model zoo and the partitioning protocol the graph builder and executor consume.

Every zoo model exposes ``units()``: the network as an ordered list of named layers, each a list of
modules applied in order, so a partitioner can cut between layers and split rows inside them without
knowing the model. Residual structure is expressed by ``Block`` (parallel branches summed, then
pointwise ``merge`` modules), which is the only non-sequential construct the runtime has to handle.

Weights are seeded random by default (nothing is downloaded) or loaded from a state_dict file.
``vgg16_bn``, ``resnet18`` and ``mobilenet_v2`` use torchvision's module names, so torchvision
state_dicts load unchanged. Unlike torchvision, no activation is in-place: the executor runs units
on received or sliced buffers, which must never be mutated behind the caller's back.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

Layer = tuple[str, list[nn.Module]]

# Modules that act on (N, C, H, W) tensors row-locally, so they can be split into row bands.
SPATIAL_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Dropout,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.ZeroPad2d,
)
# Modules allowed after a block's branch sum: they must be elementwise.
POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Dropout,
    nn.Identity,
)
# Modules of the classifier head; they need the whole tensor and split by output features.
FLAT_MODULES: tuple[type[nn.Module], ...] = (
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Linear,
    nn.ReLU,
    nn.ReLU6,
    nn.Dropout,
    nn.Identity,
)


class ModelError(ValueError):
    """A model name, checkpoint or module structure the runtime cannot use."""


class Block(nn.Module, abc.ABC):
    """A layer made of parallel branches whose outputs are summed, then passed through ``merge``.

    ``forward`` is defined here once from ``branches`` and ``merge`` so that the executor, which
    runs the same lists on row bands, computes exactly what the model computes.
    """

    @abc.abstractmethod
    def branches(self) -> list[list[nn.Module]]:
        """Parallel branches of spatial primitives; an empty list is the identity shortcut."""

    @abc.abstractmethod
    def merge(self) -> list[nn.Module]:
        """Pointwise modules applied to the sum of the branches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor | None = None
        for branch in self.branches():
            y = _apply(branch, x)
            out = y if out is None else out + y
        if out is None:
            raise ModelError(f"{type(self).__name__} has no branches")
        return _apply(self.merge(), out)


class ZooModel(nn.Module, abc.ABC):
    """A model that describes itself as an ordered list of layers for partitioning."""

    @abc.abstractmethod
    def units(self) -> list[Layer]:
        """Named layers whose module lists, applied in order, compute ``self(x)`` exactly."""


def _apply(modules: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for module in modules:
        x = module(x)
    return x


def _leaves(seq: nn.Sequential) -> list[nn.Module]:
    """The modules of a (possibly nested) Sequential, flattened in execution order."""
    out: list[nn.Module] = []
    for child in seq:
        out.extend(_leaves(child) if isinstance(child, nn.Sequential) else [child])
    return out


def _sequential_layers(seq: nn.Sequential, prefix: str) -> list[Layer]:
    """One layer per child of ``seq``, recursing into nested Sequentials, named by dotted path."""
    out: list[Layer] = []
    for name, child in seq.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            out.extend(_sequential_layers(child, path))
        else:
            out.append((path, [child]))
    return out


def _conv_bn_act(
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


# ---------------------------------------------------------------- blocks


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
        shortcut = [] if self.downsample is None else _leaves(self.downsample)
        return [main, shortcut]

    def merge(self) -> list[nn.Module]:
        return [self.relu]


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
            layers.append(_conv_bn_act(cin, hidden, 1))
        layers += [
            _conv_bn_act(hidden, hidden, 3, stride, groups=hidden, dilation=dilation),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def branches(self) -> list[list[nn.Module]]:
        main = _leaves(self.conv)
        return [main, []] if self.use_res_connect else [main]

    def merge(self) -> list[nn.Module]:
        return []


# ---------------------------------------------------------------- models


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
            *_sequential_layers(self.features, "features"),
            ("avgpool", [self.avgpool]),
            ("flatten", [nn.Flatten()]),
            *_sequential_layers(self.classifier, "classifier"),
        ]


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
            *[u for name in stages for u in _sequential_layers(getattr(self, name), name)],
            ("avgpool", [self.avgpool]),
            ("flatten", [nn.Flatten()]),
            ("fc", [self.fc]),
        ]


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
        features: list[nn.Module] = [_conv_bn_act(3, 32, 3, stride=2)]
        cin = 32
        for t, c, n, s in self._SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(_conv_bn_act(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))

    def units(self) -> list[Layer]:
        return [
            *_sequential_layers(self.features, "features"),
            ("avgpool", [nn.AdaptiveAvgPool2d((1, 1))]),
            ("flatten", [nn.Flatten()]),
            *_sequential_layers(self.classifier, "classifier"),
        ]


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
        return _sequential_layers(self.features, "features")


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


# ---------------------------------------------------------------- registry and loading


def _init_weights(model: nn.Module, linear_std: float | None, conv_mode: str) -> None:
    """Initialise every parameter and buffer of a model whose storage is uninitialised.

    torchvision's scheme: Kaiming-normal convs, unit BN, N(0, std) linears (or torch's default).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            m.reset_parameters()
        elif (
            next(m.parameters(recurse=False), None) is not None
            or next(m.buffers(recurse=False), None) is not None
        ):
            raise ModelError(f"no initialiser for {type(m).__name__}")


@dataclass(frozen=True)
class _Spec:
    factory: Callable[[], ZooModel]
    input_shape: tuple[int, int, int]
    linear_std: float | None
    conv_mode: str = "fan_out"  # darknet scales conv init by fan-in


_ZOO: dict[str, _Spec] = {
    "vgg16_bn": _Spec(VGG16BN, (3, 224, 224), 0.01),
    "resnet18": _Spec(ResNet18, (3, 224, 224), None),
    "mobilenet_v2": _Spec(MobileNetV2, (3, 224, 224), 0.01),
    "yolov2_tiny": _Spec(YoloV2Tiny, (3, 416, 416), None, "fan_in"),
    "tiny": _Spec(TinyNet, (3, 32, 32), None),
}
MODEL_NAMES: tuple[str, ...] = tuple(_ZOO)


def _spec(name: str) -> _Spec:
    try:
        return _ZOO[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}") from None


def input_shape(name: str) -> tuple[int, int, int]:
    """The (C, H, W) input the named model is defined for."""
    return _spec(name).input_shape


def build(name: str, *, seed: int = 0, checkpoint: str | Path | None = None) -> nn.Module:
    """Build a zoo model in eval mode: seeded random weights, or a state_dict from ``checkpoint``.

    Random weights use torchvision's init with BN statistics calibrated on one seeded random input
    (see ``_calibrate_batchnorm``). The global torch RNG is left untouched, so building a model
    never perturbs other seeded code.
    """
    spec = _spec(name)
    with torch.device("meta"):  # no storage and no default init: every tensor is set below
        model = spec.factory()
    model.to_empty(device="cpu")
    if checkpoint is not None:
        _load_checkpoint(model, name, Path(checkpoint))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _init_weights(model, spec.linear_std, spec.conv_mode)
            _calibrate_batchnorm(model, spec.input_shape)
    return model.eval()


def skeleton(name: str) -> nn.Module:
    """The named model in eval mode on the meta device: its structure and shapes, no weight storage.

    ``LayerGraph.from_model`` works on it, and a worker loads into it only the units it runs.
    """
    with torch.device("meta"):
        model = _spec(name).factory()
    return model.eval()


def export_checkpoint(name: str, path: str | Path, *, seed: int = 0) -> Path:
    """Save the seeded model's state_dict to ``path`` (what ``build(name, seed=seed)`` computes with)."""
    path = Path(path)
    torch.save(build(name, seed=seed).state_dict(), path)
    return path


def _calibrate_batchnorm(model: nn.Module, shape: tuple[int, int, int]) -> None:
    """Set BN running statistics from one seeded random batch.

    With torchvision's init and fresh running stats (mean 0, var 1), eval-mode activations of
    untrained nets drift by orders of magnitude (mobilenet_v2 ends near 1e-9), which would make
    absolute-tolerance equality checks of partitioned runs vacuous. Calibrated BN keeps every
    layer's output near unit scale. Runs single-threaded so the weights are bitwise identical
    whatever the caller's thread setting.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch sets the statistics exactly
    c, h, w = shape
    x = torch.randn(1, c, h, w)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            model.train()(x)
    finally:
        torch.set_num_threads(threads)
        for bn in bns:
            bn.momentum = 0.1


def _shape_of(value: object) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _load_checkpoint(model: nn.Module, name: str, path: Path) -> None:
    """Load a state_dict file into ``model``, naming the file and the offending keys on misfit."""
    if not path.is_file():
        raise ModelError(f"checkpoint file {path} for model {name!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for unreadable files
        raise ModelError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {path} holds a {type(state).__name__}, not a state_dict")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {_shape_of(state[k])} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and _shape_of(state[k]) != tuple(v.shape)
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        raise ModelError(f"checkpoint {path} does not fit model {name!r}: " + "; ".join(problems))
    model.load_state_dict(state)


# ---------------------------------------------------------------- partitioning view


def _check_modules(where: str, modules: Sequence[nn.Module], allowed: tuple[type, ...]) -> None:
    for m in modules:
        if not isinstance(m, allowed):
            raise ModelError(f"layer {where}: {type(m).__name__} is not supported here")
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and m.ceil_mode:
            raise ModelError(f"layer {where}: pooling with ceil_mode=True is not supported")
        if isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
            raise ModelError(f"layer {where}: conv needs explicit zero padding")


def _check_layer(name: str, modules: Sequence[nn.Module]) -> None:
    for m in modules:
        if isinstance(m, Block):
            for branch in m.branches():
                _check_modules(f"{name} (branch)", branch, SPATIAL_MODULES)
            _check_modules(f"{name} (merge)", m.merge(), POINTWISE_MODULES)
        else:
            _check_modules(name, [m], SPATIAL_MODULES + FLAT_MODULES)


def layers(model: nn.Module) -> list[Layer]:
    """The model as named layers for partitioning: ``units()`` of a zoo model, or the children of a
    plain ``nn.Sequential`` (nested Sequentials flattened, names are dotted paths).

    Raises ModelError when a module is of a kind the runtime cannot split.
    """
    if isinstance(model, ZooModel):
        out = model.units()
    elif isinstance(model, nn.Sequential):
        out = _sequential_layers(model, "")
    else:
        raise ModelError(
            f"cannot partition a {type(model).__name__}: use a zoo model (ZooModel with units()) "
            "or an nn.Sequential of supported layers"
        )
    for name, modules in out:
        _check_layer(name, modules)
    return out
