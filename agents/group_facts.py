"""What the lower bound (agents/bound.py) needs to know of a graph, group by group: least work, how far
input rows reach, which rows the output needs, boundary bytes. Computed once per graph and cost unit."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from env.band_tables import BandTables
from runtime.graph import LayerGraph


@dataclass(frozen=True)
class GroupFacts:
    """What the relaxation needs to know of a graph, per group ``g`` (boundaries ``g`` and ``g + 1`` of
    ``graph.cut_points``) and per boundary.

    ``work[g]``: least work (FLOPs, or a profile's reference seconds) of computing all of the group's output
    rows, at its cheapest work per row; ``reach[g]``: at most this fraction of the output rows can be
    computed from a fraction 1 of the input rows (input rows per output row at least ``extent_in /
    (reach * extent_out)``); ``needed[g]``: the fraction of the group's output rows the model's output
    depends on; ``nbytes[b]``: bytes of boundary tensor ``b``.
    """

    work: np.ndarray
    reach: np.ndarray
    needed: np.ndarray
    nbytes: np.ndarray
    param_bytes: tuple[int, ...]


@lru_cache(maxsize=8)
def group_facts(graph: LayerGraph, unit_seconds: tuple[float, ...] | None = None) -> GroupFacts:
    """The graph's ``GroupFacts`` (work in FLOPs, or in the profile's seconds when ``unit_seconds`` is given)."""
    tables = BandTables(graph, unit_seconds)
    cuts = graph.cut_points
    work, reach = [], []
    for start, end in graph.groups:
        rows_out = graph.extent(end)
        if graph.stage_kind(end) == "flat":
            # a band of r features costs A + B r / E (the units before the last linear layer whole, that
            # layer in proportion), so per feature it is cheapest whole; and any band needs the whole input
            work.append(tables.work(start, end, (0, rows_out)))
            reach.append(1.0)
            continue
        o = tables.offset(start, end)
        in_first, in_end, work_first, work_end, _ = (c[o : o + rows_out + 1] for c in tables.columns)
        lo, hi = np.triu_indices(rows_out + 1, k=1)  # every band [lo, hi)
        rows = (hi - lo).astype(np.float64)
        work.append(float(np.min((work_end[hi] - work_first[lo]) / rows)) * rows_out)
        in_per_out = float(np.min((in_end[hi] - in_first[lo]) / rows))
        reach.append(graph.extent(start) / (in_per_out * rows_out))
    return GroupFacts(
        np.array(work),
        np.array(reach),
        _needed_fractions(graph),
        np.array([graph.extent(b) * graph.row_bytes(b) for b in cuts], dtype=np.float64),
        tuple(graph.stage_param_bytes(s, e) for s, e in graph.groups),
    )


def _needed_fractions(graph: LayerGraph) -> np.ndarray:
    """Per group, the fraction of its output rows that some row of the model's output depends on: every
    plan computes at least these (rows a cut passes on are all computed; inside a stage, a band computes
    what its output rows need). Found row by row from the output back, so rows no layer reads (a stride
    larger than the kernel) are not counted."""
    fractions = []
    needed: set[int] | None = None  # rows of the current boundary that are needed; None: all
    for start, end in reversed(graph.groups):
        extent = graph.extent(end)
        rows = range(extent) if needed is None else needed
        fractions.append(len(rows) / extent)
        if graph.stage_kind(end) == "flat":
            needed = None  # a flat stage reads its whole input
            continue
        needed = set()
        for o in rows:
            lo, hi = graph.input_rows(start, end, (o, o + 1))
            needed.update(range(lo, hi))
    return np.array(fractions[::-1])
