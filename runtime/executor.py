"""Exact band computation, and a whole plan run in one process exactly as the workers run it.

``compute_band`` is what a worker executes for its task: from an input band (halo included) it computes
its output rows through every fused unit of the stage, padding only at the true image borders.
``run_plan`` plays every task of a plan in order, moving the same row ranges the workers would send,
so it is both the reference for the distributed runtime and a way to check a plan in tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from runtime.graph import BlockOp, LayerGraph, Prim, op_input_rows
from runtime.halo import Rows, layer_input_rows
from runtime.layout import PlanLayout, layout
from runtime.plan import Plan


def row_axis(t: torch.Tensor) -> int:
    """Rows are the height of a feature map (N, C, H, W) or the features of a flat tensor (N, F)."""
    return -2 if t.dim() == 4 else -1


def take_rows(t: torch.Tensor, have: Rows, want: Rows) -> torch.Tensor:
    """Rows ``want`` of a band that holds rows ``have`` of the full tensor."""
    if not (have[0] <= want[0] and want[1] <= have[1]):
        raise ValueError(f"band holds rows {have}, rows {want} requested")
    return t.narrow(row_axis(t), want[0] - have[0], want[1] - want[0])


def _apply(module: nn.Module, x: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
    """Run a spatial primitive with vertical padding ``top``/``bottom`` instead of its own."""
    if isinstance(module, nn.Conv2d):
        if top or bottom:
            x = F.pad(x, (0, 0, top, bottom))
        return F.conv2d(
            x,
            module.weight,
            module.bias,
            module.stride,
            (0, module.padding[1]),
            module.dilation,
            module.groups,
        )
    if isinstance(module, nn.MaxPool2d):
        if top or bottom:
            x = F.pad(x, (0, 0, top, bottom), value=float("-inf"))
        k, s, p, d = (_pair(v) for v in (module.kernel_size, module.stride, module.padding, module.dilation))
        return F.max_pool2d(x, k, s, (0, p[1]), d)
    if isinstance(module, nn.AvgPool2d):
        if top or bottom:
            x = F.pad(x, (0, 0, top, bottom))
        k, s, p = (_pair(v) for v in (module.kernel_size, module.stride, module.padding))
        return F.avg_pool2d(
            x, k, s, (0, p[1]), count_include_pad=True, divisor_override=module.divisor_override
        )
    if isinstance(module, nn.ZeroPad2d):
        left, right, _, _ = module.padding
        return F.pad(x, (left, right, top, bottom))
    return module(x)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _run_prim(prim: Prim, x: torch.Tensor, have: Rows, out: Rows) -> torch.Tensor:
    g = prim.geom
    need = layer_input_rows(g, out)
    x = take_rows(x, have, need)
    top = g.pad_top if need[0] == 0 else 0
    bottom = g.pad_bottom if need[1] == g.in_rows else 0
    y = _apply(prim.module, x, top, bottom)
    first = (need[0] - top + g.pad_top) // g.stride  # output row index of y's first row
    return y.narrow(-2, out[0] - first, out[1] - out[0])


def _run_chain(chain: Sequence[Prim], x: torch.Tensor, have: Rows, out: Rows) -> torch.Tensor:
    if not chain:  # identity shortcut
        return take_rows(x, have, out)
    targets = [out]
    for prim in reversed(chain[1:]):
        targets.append(layer_input_rows(prim.geom, targets[-1]))
    for prim, target in zip(chain, reversed(targets), strict=True):
        x, have = _run_prim(prim, x, have, target), target
    return x


def _run_op(op, x: torch.Tensor, have: Rows, out: Rows) -> torch.Tensor:
    if isinstance(op, Prim):
        return _run_prim(op, x, have, out)
    total = None
    for chain in op.branches:
        y = _run_chain(chain, x, have, out)
        total = y if total is None else total + y
    for m in op.merge:
        total = m(total)
    return total


def _spatial_ops(graph: LayerGraph, start: int, end: int) -> list:
    return [op for unit in graph.units[start:end] for op in unit.ops]


def compute_band(
    graph: LayerGraph, start: int, end: int, x: torch.Tensor, have: Rows, out: Rows
) -> torch.Tensor:
    """Output rows ``out`` of boundary ``end`` from a band holding rows ``have`` of boundary ``start``."""
    with torch.no_grad():
        if graph.stage_kind(end) == "flat":
            return _compute_flat(graph, start, end, x, out)
        ops = _spatial_ops(graph, start, end)
        targets = [out]
        for op in reversed(ops[1:]):
            targets.append(op_input_rows(op, targets[-1]))
        for op, target in zip(ops, reversed(targets), strict=True):
            x, have = _run_op(op, x, have, target), target
        return x


def _compute_flat(graph: LayerGraph, start: int, end: int, x: torch.Tensor, out: Rows) -> torch.Tensor:
    """A flat stage: everything runs whole except the last linear layer, which computes ``out`` only."""
    last = graph.last_linear(start, end)
    sliced = False
    for unit in graph.units[start:end]:
        for op in unit.ops:
            if isinstance(op, (Prim, BlockOp)):
                rows = (0, x.shape[-2])
                x = _run_op(op, x, rows, (0, op_out_rows(op)))
            elif isinstance(op, nn.Linear) and unit.index == last and op is _last_linear(unit):
                x = F.linear(
                    x,
                    op.weight[out[0] : out[1]],
                    None if op.bias is None else op.bias[out[0] : out[1]],
                )
                sliced = True
            else:
                x = op(x)
    return x if sliced else x.narrow(-1, out[0], out[1] - out[0])


def op_out_rows(op) -> int:
    """Rows a spatial op produces on the whole input."""
    if isinstance(op, Prim):
        return op.geom.out_rows
    chain = next(c for c in op.branches if c)
    return chain[-1].geom.out_rows


def _last_linear(unit) -> nn.Linear:
    return [m for m in unit.ops if isinstance(m, nn.Linear)][-1]


def assemble(pieces: Sequence[tuple[Rows, torch.Tensor]], want: Rows) -> torch.Tensor:
    """Join received row pieces into the band ``want`` (pieces may overlap it partially)."""
    pieces = sorted(pieces, key=lambda p: p[0][0])
    parts, cursor = [], want[0]
    for rows, t in pieces:
        if rows[0] > cursor:
            raise ValueError(f"rows [{cursor}, {rows[0]}) of band {want} are missing")
        if rows[1] > cursor:
            parts.append(take_rows(t, rows, (cursor, min(rows[1], want[1]))))
            cursor = min(rows[1], want[1])
    if cursor < want[1]:
        raise ValueError(f"rows [{cursor}, {want[1]}) of band {want} are missing")
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=row_axis(parts[0]))


@dataclass(frozen=True)
class Accounting:
    """What a plan costs in work and traffic, as measured by running it."""

    layout: PlanLayout
    flops: dict[str, int]
    bytes_received: dict[tuple[str, str], int]


def run_plan(graph: LayerGraph, plan: Plan, x: torch.Tensor) -> tuple[torch.Tensor, Accounting]:
    """Run every task of ``plan`` in order, moving exactly the rows the workers would move."""
    plan.validate(graph)
    lay = layout(graph, plan)
    outputs: dict[str, tuple[Rows, torch.Tensor]] = {}
    full = (0, graph.extent(0))
    for s, stage in enumerate(plan.stages):
        produced = {}
        for task in lay.tasks[s]:
            pieces = [
                (
                    t.rows,
                    take_rows(x, full, t.rows)
                    if s == 0
                    else take_rows(outputs[t.src][1], outputs[t.src][0], t.rows),
                )
                for t in lay.inputs_of(s, task.device)
            ]
            band = assemble(pieces, task.in_rows)
            produced[task.device] = (
                task.out_rows,
                compute_band(graph, stage.start, stage.end, band, task.in_rows, task.out_rows),
            )
        outputs = produced
    final = [(t.rows, outputs[t.src][1]) for t in lay.inputs_of(len(plan.stages), plan.sink)]
    result = assemble(final, (0, graph.extent(len(graph.units))))
    return result, Accounting(lay, lay.flops_by_device(), lay.bytes_between())
