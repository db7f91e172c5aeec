"""Every band of a stage at once: lookup tables of input rows and work, for the cost model's kernel.

A plan's bands change with every snapshot (shares follow measured speeds), so the cost model asks about
bands it has never seen at every env step. Asking ``LayerGraph`` band by band walks the stage's layers in
Python each time; these tables answer any band of a stage with three lookups instead.

Why three lookups suffice. For a band of output rows ``[lo, hi)`` of a spatial stage, every layer maps the
band's first row to ``max(0, lo*stride - pad)`` and its end to ``min(rows, (hi-1)*stride - pad + reach)``,
each without looking at the other, and a block takes the min of its branches' first rows and the max of
their ends. So the stage's input rows are ``(first[lo], end[hi])``. Work (FLOPs, or a profile's seconds)
adds, per layer, rows computed x cost per row, and rows computed = (end term) - (first term); so
``work(lo, hi) = work(0, hi) + work(lo, E) - work(0, E)`` for a stage of extent ``E``. The tables are
filled from the bands that touch an edge, ``(lo, E)`` and ``(0, hi)``, asked of the graph itself, so the
halo arithmetic stays defined once (runtime/graph.py).

A flat stage reads its whole input and its work depends on the band's size only, but it has thousands of
features (VGG-16's fc layers: 4,096) of which a run meets a few sizes; so its sizes are asked of the graph
when first met (``size_work``), and the kernel sees NaN for a size not yet known.

All stages live in the same columns; a stage's rows start at its ``offset`` ``o``: input rows
``(in_first[o + lo], in_end[o + hi])`` and work ``work_end[o + hi] - work_first[o + lo] +
work_size[o + hi - lo]`` (the first two terms are 0 for a flat stage, the last for a spatial one). Work in
FLOPs is a sum of integers below 2**53, so the lookups give ``band_flops`` exactly.
"""

from __future__ import annotations

import numpy as np

from runtime.graph import LayerGraph, Rows

_INT_COLUMNS, _WORK_COLUMNS = 2, 3


class BandTables:
    """Per-stage band tables, filled the first time a stage is asked for (a model has a few hundred)."""

    def __init__(self, graph: LayerGraph, unit_seconds: tuple[float, ...] | None = None):
        """Work is FLOPs, or with ``unit_seconds`` (a profile's per-unit reference seconds) seconds."""
        self.graph = graph
        self.unit_seconds = unit_seconds
        self._offset: dict[tuple[int, int], int] = {}
        # in_first, in_end (int64) and work_first, work_end, work_size (float64), all stages end to end
        self.columns: tuple[np.ndarray, ...] = (
            *(np.zeros(0, dtype=np.int64) for _ in range(_INT_COLUMNS)),
            *(np.zeros(0) for _ in range(_WORK_COLUMNS)),
        )

    def work(self, start: int, end: int, rows: Rows) -> float:
        """Work of one band, halo included: FLOPs, or the profile's per-unit seconds scaled to the band."""
        if self.unit_seconds is None:
            return self.graph.band_flops(start, end, rows)
        return self.graph.band_seconds(self.unit_seconds, start, end, rows)

    def offset(self, start: int, end: int) -> int:
        """Where stage ``[start, end)``'s rows begin in the columns (tabulating it on first use)."""
        offset = self._offset.get((start, end))
        if offset is None:
            offset = self._offset[start, end] = self.columns[0].size
            new = self._tabulate(start, end)
            self.columns = tuple(np.concatenate((c, n)) for c, n in zip(self.columns, new, strict=True))
        return offset

    def size_work(self, start: int, end: int, size: int) -> float:
        """Work of a band of ``size`` features of flat stage ``[start, end)``, kept for the kernel."""
        work = self.work(start, end, (0, size))
        self.columns[4][self.offset(start, end) + size] = work
        return work

    def _tabulate(self, start: int, end: int) -> tuple[np.ndarray, ...]:
        """Stage ``[start, end)``'s ``extent + 1`` entries of each column (module docstring)."""
        graph = self.graph
        n = graph.extent(end)
        in_first, in_end = np.zeros(n + 1, dtype=np.int64), np.zeros(n + 1, dtype=np.int64)
        work_first, work_end, work_size = np.zeros(n + 1), np.zeros(n + 1), np.zeros(n + 1)
        if graph.stage_kind(end) == "flat":
            in_end[:] = graph.extent(start)
            work_size[1:] = np.nan  # asked when met (size_work)
            return in_first, in_end, work_first, work_end, work_size
        whole = self.work(start, end, (0, n))
        for lo in range(n):
            in_first[lo] = graph.input_rows(start, end, (lo, n))[0]
            work_first[lo] = whole - self.work(start, end, (lo, n))
        for hi in range(1, n + 1):
            in_end[hi] = graph.input_rows(start, end, (0, hi))[1]
            work_end[hi] = self.work(start, end, (0, hi))
        return in_first, in_end, work_first, work_end, work_size
