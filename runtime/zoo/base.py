"""The partitioning protocol every zoo model follows, and the module kinds the runtime can split.

A zoo model (``ZooModel``) exposes ``units()``: the network as an ordered list of named layers, each a list
of modules applied in order, so a partitioner can cut between layers and split rows inside them without
knowing the model. Residual structure is expressed by ``Block`` (parallel branches summed, then pointwise
``merge`` modules), which is the only non-sequential construct the runtime has to handle.
runtime/models.py checks a model's layers against the module kinds listed here.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

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
            y = apply(branch, x)
            out = y if out is None else out + y
        if out is None:
            raise ModelError(f"{type(self).__name__} has no branches")
        return apply(self.merge(), out)


class ZooModel(nn.Module, abc.ABC):
    """A model that describes itself as an ordered list of layers for partitioning."""

    @abc.abstractmethod
    def units(self) -> list[Layer]:
        """Named layers whose module lists, applied in order, compute ``self(x)`` exactly."""


def apply(modules: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``modules`` applied to ``x`` in order."""
    for module in modules:
        x = module(x)
    return x


def leaves(seq: nn.Sequential) -> list[nn.Module]:
    """The modules of a (possibly nested) Sequential, flattened in execution order."""
    out: list[nn.Module] = []
    for child in seq:
        out.extend(leaves(child) if isinstance(child, nn.Sequential) else [child])
    return out


def sequential_layers(seq: nn.Sequential, prefix: str) -> list[Layer]:
    """One layer per child of ``seq``, recursing into nested Sequentials, named by dotted path."""
    out: list[Layer] = []
    for name, child in seq.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            out.extend(sequential_layers(child, path))
        else:
            out.append((path, [child]))
    return out
