"""The model zoo by name, and the partitioning view of any model.

``build(name)`` makes a zoo model (runtime/zoo/, one module per family) in eval mode; ``input_shape(name)``
is the input it is defined for. Weights are seeded random by default (nothing is downloaded) or loaded
from a state_dict file. ``vgg16_bn``, ``resnet18`` and ``mobilenet_v2`` use torchvision's module names, so
torchvision state_dicts load unchanged. Unlike torchvision, no activation is in-place: the executor runs
units on received or sliced buffers, which must never be mutated behind the caller's back.

``layers(model)`` is what the graph builder and the executor consume: the model as named layers (the
protocol of runtime/zoo/base.py), each checked to be of a kind the runtime can split.

**Your own model.** Wherever a model is named, ``package.module:Class`` names a ``ZooModel`` subclass
of yours (importable: installed, or on ``PYTHONPATH``) with a class attribute ``input_shape = (C, H, W)``
(and optionally ``linear_std`` and ``conv_mode``, its init scales as ``_Spec`` has them). A worker
imports one only when started with ``--allow-model`` naming it (a controller cannot make a device run
code it was not given); ``LocalCluster`` does that for the cluster's model.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from runtime.zoo.base import (
    FLAT_MODULES,
    POINTWISE_MODULES,
    SPATIAL_MODULES,
    Block,
    Layer,
    ModelError,
    ZooModel,
    sequential_layers,
)
from runtime.zoo.mobilenet import MobileNetV2
from runtime.zoo.resnet import ResNet18
from runtime.zoo.tiny import TinyNet
from runtime.zoo.vgg import VGG16BN
from runtime.zoo.yolo import YoloV2Tiny

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
    """How to build one zoo model: its class, its input and torchvision's init scales for it."""

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
    if name in _ZOO:
        return _ZOO[name]
    if ":" in name:
        return _user_spec(name)
    raise ModelError(
        f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}, or your own ZooModel subclass "
        "as package.module:Class"
    )


@cache
def _user_spec(name: str) -> _Spec:
    """The spec of a user's model ``package.module:Class`` (see the module docstring)."""
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # whatever a user's module raises on import is their input's fault
        raise ModelError(
            f"model {name!r}: cannot import {module_name} ({type(exc).__name__}: {exc})"
        ) from None
    cls = getattr(module, attribute, None)
    if not (isinstance(cls, type) and issubclass(cls, ZooModel)):
        raise ModelError(f"model {name!r}: {module_name} has no ZooModel subclass {attribute}")
    shape = getattr(cls, "input_shape", None)
    if not (
        isinstance(shape, tuple) and len(shape) == 3 and all(isinstance(n, int) and n > 0 for n in shape)
    ):
        raise ModelError(
            f"model {name!r}: its class needs input_shape = (C, H, W), positive ints; got {shape!r}"
        )
    return _Spec(cls, shape, getattr(cls, "linear_std", None), getattr(cls, "conv_mode", "fan_out"))


def is_user_model(name: str) -> bool:
    """Whether ``name`` has the form of a user's model (``package.module:Class``; no zoo name has a
    colon), so a misspelt zoo name is reported as unknown, not as a model a worker may not import."""
    return ":" in name


def import_root(name: str) -> Path | None:
    """The folder a user's model is imported from (what a worker process needs on its path); None for
    a zoo model or a module without a file."""
    if not is_user_model(name):
        return None
    _spec(name)  # imports it, or says why not
    module_name = name.partition(":")[0]
    file = getattr(sys.modules[module_name], "__file__", None)
    if file is None:
        return None
    depth = module_name.count(".") + (1 if Path(file).name == "__init__.py" else 0)
    return Path(file).resolve().parents[depth]


def model_argument(name: str) -> str:
    """``--model``'s type: a zoo name or an importable user model, else the reason as a usage error."""
    try:
        _spec(name)
    except ModelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


MODEL_HELP = f"{', '.join(MODEL_NAMES)}, or your own ZooModel subclass as package.module:Class"


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
        out = sequential_layers(model, "")
    else:
        raise ModelError(
            f"cannot partition a {type(model).__name__}: use a zoo model (ZooModel with units()) "
            "or an nn.Sequential of supported layers"
        )
    for name, modules in out:
        _check_layer(name, modules)
    return out
