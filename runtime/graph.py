"""LayerGraph: a CNN as an ordered list of partitionable units.

A *unit* is one layer (a convolution, a batch norm, an activation, a pool, a linear layer) or one block
(a residual or inverted-residual block whose branches are summed). Stages of a plan cover unit ranges
``[start, end)``. A cut is allowed after a unit unless the next unit belongs to the same layer group
(batch norm, activation, dropout or flatten after their layer; a pad before its pool; global pooling and
flatten before the first linear layer); the maximal runs
between allowed cuts are the *groups* that planners reason about (VGG-16 has 21: 13 convs, 5 pools,
3 fully connected layers).

FLOPs are counted as 2 x MACs of convolutions and linear layers only (bias, batch norm, activations
and pooling are left out), which is how the published per-model figures are stated.

The boundary tensor between units ``i-1`` and ``i`` is *boundary i*: boundary 0 is the model input,
boundary ``len(units)`` the model output. A boundary's *extent* is what plans split: rows (height) of a
spatial tensor, features of a flat one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

import torch
from torch import nn

from runtime import models
from runtime.halo import LayerGeom, Rows, layer_input_rows, union
from runtime.zoo.base import POINTWISE_MODULES, Block

POINTWISE = POINTWISE_MODULES
# Modules that never start a group (no cut right before them) or never end one (no cut right after).
ATTACHED = (*POINTWISE, nn.Flatten)
PREFIX = (nn.ZeroPad2d, nn.AdaptiveAvgPool2d, nn.Flatten)


class GraphError(ValueError):
    """The model contains something the partitioner cannot split exactly."""


@dataclass(frozen=True)
class Prim:
    """One spatial primitive: its module, vertical geometry and FLOPs per output row."""

    module: nn.Module
    geom: LayerGeom
    flops_per_row: int


@dataclass(frozen=True)
class BlockOp:
    """A block: the sum of parallel primitive chains (empty chain = identity), then pointwise merge."""

    branches: tuple[tuple[Prim, ...], ...]
    merge: tuple[nn.Module, ...]


SpatialOp = Prim | BlockOp


@dataclass(frozen=True)
class Unit:
    """One partitionable unit with the figures the planners and the cost model need."""

    index: int
    name: str
    kind: str  # "spatial" (split by output rows) or "flat" (split by output features)
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    flops: int
    params: int
    param_bytes: int
    out_bytes: int
    cut_after: bool
    ops: tuple = field(repr=False)  # SpatialOp items for spatial units, modules for flat ones


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _geom(module: nn.Module, in_rows: int, out_rows: int) -> LayerGeom:
    """Vertical geometry of a spatial primitive; refuses what cannot be split exactly."""
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise GraphError(f"{module}: only explicit zero padding can be split by rows")
        k, s, p, d = module.kernel_size[0], module.stride[0], module.padding[0], module.dilation[0]
        return LayerGeom(k, s, p, p, d, in_rows, out_rows)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        if module.ceil_mode:
            raise GraphError(f"{module}: ceil_mode pooling is not supported")
        k, s, p = _pair(module.kernel_size)[0], _pair(module.stride)[0], _pair(module.padding)[0]
        d = _pair(module.dilation)[0] if isinstance(module, nn.MaxPool2d) else 1
        if isinstance(module, nn.AvgPool2d) and p and not module.count_include_pad:
            raise GraphError(f"{module}: padded average pooling must count the padding")
        return LayerGeom(k, s, p, p, d, in_rows, out_rows)
    if isinstance(module, nn.ZeroPad2d):
        _, _, top, bottom = module.padding
        return LayerGeom(1, 1, top, bottom, 1, in_rows, out_rows)
    if isinstance(module, POINTWISE):
        return LayerGeom(1, 1, 0, 0, 1, in_rows, out_rows)
    raise GraphError(f"{type(module).__name__} is not a supported spatial layer")


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return module.in_channels // module.groups * kh * kw * out[0].numel()
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


def _trace_prim(module: nn.Module, x: torch.Tensor) -> tuple[Prim, torch.Tensor]:
    out = module(x)
    geom = _geom(module, x.shape[-2], out.shape[-2])
    return Prim(module, geom, 2 * _macs(module, out) // max(1, out.shape[-2])), out


def _trace_spatial(module: nn.Module, x: torch.Tensor) -> tuple[SpatialOp, torch.Tensor]:
    """Describe one spatial module (primitive or Block) while running it on ``x``."""
    if not isinstance(module, Block):
        return _trace_prim(module, x)
    branches, total = [], None
    for chain in module.branches():
        y, prims = x, []
        for m in chain:
            prim, y = _trace_prim(m, y)
            prims.append(prim)
        branches.append(tuple(prims))
        total = y if total is None else total + y
    for m in module.merge():
        _geom(m, total.shape[-2], total.shape[-2])  # merge ops must be pointwise
        total = m(total)
    return BlockOp(tuple(branches), tuple(module.merge())), total


def _is_flat(modules: list[nn.Module], x: torch.Tensor) -> bool:
    return x.dim() == 2 or any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear)) for m in modules)


def op_input_rows(op: SpatialOp, out: Rows) -> Rows:
    """Input rows a spatial op needs for output rows ``out`` (a block: the union over its branches)."""
    if isinstance(op, Prim):
        return layer_input_rows(op.geom, out)
    need: Rows = (0, 0)
    for chain in op.branches:
        rows = out
        for prim in reversed(chain):
            rows = layer_input_rows(prim.geom, rows)
        need = union(need, rows)
    return need


def op_flops(op: SpatialOp, out: Rows) -> int:
    """FLOPs an op spends on output rows ``out``, counting the halo rows its inner layers compute."""
    if isinstance(op, Prim):
        return op.flops_per_row * (out[1] - out[0])
    flops = 0
    for chain in op.branches:
        rows = out
        for prim in reversed(chain):
            flops += prim.flops_per_row * (rows[1] - rows[0])
            rows = layer_input_rows(prim.geom, rows)
    return flops


class LayerGraph:
    """The model as units, with the halo and FLOP arithmetic over unit ranges."""

    def __init__(self, units: list[Unit], input_shape: tuple[int, ...], name: str = "model"):
        self.units = units
        self.input_shape = tuple(input_shape)
        self.name = name
        self.cut_points = [0] + [u.index + 1 for u in units if u.cut_after]
        self.groups = list(zip(self.cut_points[:-1], self.cut_points[1:], strict=True))
        self.total_flops = sum(u.flops for u in units)
        self.total_params = sum(u.params for u in units)
        # plans reuse the same ranges over and over: cache per unit and per stage
        self._unit_step = lru_cache(maxsize=1 << 18)(self._unit_step)
        self._band = lru_cache(maxsize=1 << 16)(self._band)
        self.last_linear = lru_cache(maxsize=1 << 12)(self.last_linear)
        self.extent = lru_cache(maxsize=None)(self.extent)  # one entry per boundary
        self.row_bytes = lru_cache(maxsize=None)(self.row_bytes)

    @classmethod
    def from_model(cls, model: nn.Module, input_shape: tuple[int, ...], name: str = "model"):
        """Build the graph by running the model's layers once on a zero input of ``input_shape``.

        The input lives where the model's tensors live, so a skeleton on the meta device (no weights
        in memory) gives the same graph as the real model.
        """
        layers = models.layers(model)
        units: list[Unit] = []
        first = next(iter(model.state_dict().values()), None)
        x = torch.zeros(1, *input_shape, device=first.device if first is not None else "cpu")
        with torch.no_grad():
            for index, (layer_name, modules) in enumerate(layers):
                in_shape = tuple(x.shape[1:])
                flat = _is_flat(modules, x)
                ops, flops = [], 0
                for m in modules:
                    if flat:
                        y = m(x)
                        ops.append(m)
                        flops += 2 * _macs(m, y)
                    else:
                        op, y = _trace_spatial(m, x)
                        ops.append(op)
                        flops += op_flops(op, (0, y.shape[-2]))
                    x = y
                params = sum(p.numel() for m in modules for p in m.parameters())
                state = sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values())
                units.append(
                    Unit(
                        index=index,
                        name=layer_name,
                        kind="flat" if flat else "spatial",
                        in_shape=in_shape,
                        out_shape=tuple(x.shape[1:]),
                        flops=flops,
                        params=params,
                        param_bytes=state,
                        out_bytes=x[0].numel() * x.element_size(),
                        cut_after=True,
                        ops=tuple(ops),
                    )
                )
        starts = [m[0] for _, m in layers[1:]]
        for i, first in enumerate(starts):
            attached = isinstance(first, ATTACHED) or isinstance(layers[i][1][-1], PREFIX)
            if attached:
                units[i] = replace(units[i], cut_after=False)
        return cls(units, input_shape, name)

    def __len__(self) -> int:
        return len(self.units)

    # ---- boundaries -------------------------------------------------------------------------
    def boundary_shape(self, i: int) -> tuple[int, ...]:
        """Shape (without batch) of boundary ``i``."""
        return self.input_shape if i == 0 else self.units[i - 1].out_shape

    def _is_spatial(self, i: int) -> bool:
        return len(self.boundary_shape(i)) == 3 and (i == 0 or self.units[i - 1].kind == "spatial")

    def extent(self, i: int) -> int:
        """Rows (spatial) or features (flat) of boundary ``i``: what a split divides."""
        shape = self.boundary_shape(i)
        return shape[-2] if self._is_spatial(i) else math.prod(shape)

    def row_bytes(self, i: int) -> int:
        """Bytes of one row (or one feature) of boundary ``i`` in float32."""
        shape = self.boundary_shape(i)
        return 4 * shape[0] * shape[2] if self._is_spatial(i) else 4

    def stage_kind(self, end: int) -> str:
        """A stage is split the way its last unit's output is: by rows or by features."""
        return self.units[end - 1].kind

    # ---- halo arithmetic -----------------------------------------------------------------------
    def _unit_step(self, index: int, out: Rows) -> tuple[Rows, int]:
        """Input rows and FLOPs of one spatial unit for output rows ``out``."""
        flops, rows = 0, out
        for op in reversed(self.units[index].ops):
            flops += op_flops(op, rows)
            rows = op_input_rows(op, rows)
        return rows, flops

    def _band(self, start: int, end: int, out: Rows) -> tuple[Rows, int]:
        """Input rows of boundary ``start`` and FLOPs (halo included) for rows ``out`` of boundary ``end``.

        In a flat stage every unit but the last linear layer runs whole on the whole input; the last
        linear layer computes only the requested features.
        """
        if out[1] <= out[0]:
            return (0, 0), 0
        if self.stage_kind(end) == "flat":
            flops = sum(u.flops for u in self.units[start:end])
            last = self.last_linear(start, end)
            if last is not None:
                unit = self.units[last]
                share = (out[1] - out[0]) / unit.out_shape[-1]
                flops -= round(unit.flops * (1 - share))
            return (0, self.extent(start)), flops
        flops, rows = 0, out
        for index in range(end - 1, start - 1, -1):
            rows, unit_flops = self._unit_step(index, rows)
            flops += unit_flops
        return rows, flops

    def input_rows(self, start: int, end: int, out: Rows) -> Rows:
        """Rows of boundary ``start`` needed to compute rows ``out`` of boundary ``end``."""
        return self._band(start, end, out)[0]

    def band_flops(self, start: int, end: int, out: Rows) -> int:
        """FLOPs to compute rows ``out`` of boundary ``end`` from boundary ``start``, halo included."""
        return self._band(start, end, out)[1]

    def band_seconds(self, unit_seconds: Sequence[float], start: int, end: int, out: Rows) -> float:
        """A profile's seconds for a band: each unit's seconds times the fraction of it the band computes.

        What the cost model predicts for the band (env/band_tables.py) and what an emulated device paced by
        the profile takes (runtime/emulation.py), so both read it here.
        """
        if len(unit_seconds) != len(self.units):
            raise ValueError(f"a profile of {len(unit_seconds)} units for {self.name}'s {len(self.units)}")
        return sum(unit_seconds[u] * f for u, f in self.unit_fractions(start, end, out))

    def unit_fractions(self, start: int, end: int, out: Rows) -> list[tuple[int, float]]:
        """Per unit of ``[start, end)``, the fraction of its output a band computes (halo included).

        Scales a measured per-unit time to a band, the way ``band_flops`` scales FLOPs.
        """
        if self.stage_kind(end) == "flat":
            last = self.last_linear(start, end)
            share = (out[1] - out[0]) / self.extent(end)
            return [
                (u.index, share if last is not None and u.index >= last else 1.0)
                for u in self.units[start:end]
            ]
        fractions, rows = [], out
        for index in range(end - 1, start - 1, -1):
            fractions.append((index, (rows[1] - rows[0]) / self.extent(index + 1)))
            rows = self._unit_step(index, rows)[0]  # cached per unit and rows, shared with band_flops
        return fractions[::-1]

    def last_linear(self, start: int, end: int) -> int | None:
        """Index of the last unit in ``[start, end)`` holding a linear layer (flat stages split it)."""
        for unit in reversed(self.units[start:end]):
            if any(isinstance(m, nn.Linear) for m in unit.ops if isinstance(m, nn.Module)):
                return unit.index
        return None

    def stage_param_bytes(self, start: int, end: int) -> int:
        """Weight bytes a device must hold to run units ``[start, end)``."""
        return sum(u.param_bytes for u in self.units[start:end])

    def summary(self) -> str:
        """One line per group: name, output shape, GFLOPs, MB of weights and of output."""
        lines = [
            f"{self.name}: {len(self.units)} units, {len(self.groups)} groups, "
            f"{self.total_flops / 1e9:.2f} GFLOPs, {self.total_params:,} params"
        ]
        for s, e in self.groups:
            names = ",".join(u.name for u in self.units[s:e])
            flops = sum(u.flops for u in self.units[s:e])
            lines.append(
                f"  [{s:3d},{e:3d}) {names:40.40s} out={self.units[e - 1].out_shape} "
                f"{flops / 1e9:7.3f} GFLOPs"
            )
        return "\n".join(lines)
