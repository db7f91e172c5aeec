"""Row geometry of sliding-window layers: which input rows an output band needs.

Pure integer arithmetic, no torch, so the executor, the workers and the cost model share one definition
(in the spirit of DeepThings' ``ftp.c``). Rows are half-open ranges ``(lo, hi)``.

A layer reads padded input: ``pad_top`` virtual rows above row 0 and ``pad_bottom`` below the last row.
Output row ``o`` reads padded rows ``[o*stride, o*stride + dilation*(kernel-1)]``, i.e. real rows
``o*stride - pad_top`` to ``o*stride - pad_top + dilation*(kernel-1)``. Padding exists only at the true
image borders, so a band that does not touch a border is computed with no vertical padding at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Rows = tuple[int, int]


@dataclass(frozen=True)
class LayerGeom:
    """Vertical geometry of one primitive layer (pointwise layers: kernel 1, stride 1, no padding)."""

    kernel: int
    stride: int
    pad_top: int
    pad_bottom: int
    dilation: int
    in_rows: int
    out_rows: int

    @property
    def reach(self) -> int:
        """Input rows spanned by one output row."""
        return self.dilation * (self.kernel - 1) + 1


def layer_input_rows(g: LayerGeom, out: Rows) -> Rows:
    """Input rows (clamped to the image) that output rows ``out`` of layer ``g`` read."""
    lo, hi = out
    if hi <= lo:
        return (0, 0)
    first = lo * g.stride - g.pad_top
    last = (hi - 1) * g.stride - g.pad_top + g.reach - 1
    return (max(0, first), min(g.in_rows, last + 1))


def union(a: Rows, b: Rows) -> Rows:
    """Smallest range covering both (empty ranges are ignored)."""
    if a[1] <= a[0]:
        return b
    if b[1] <= b[0]:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]))


def split_by_shares(total: int, shares: Sequence[float]) -> list[int]:
    """Integer sizes proportional to ``shares`` summing to ``total`` (largest remainder method).

    Ties in the remainder go to the earlier entry, so the split is deterministic.
    """
    sizes = [0] * len(shares)
    largest_remainder(total, shares, sizes)
    return sizes


def largest_remainder(total, shares, sizes) -> None:
    """``split_by_shares`` into ``sizes`` (a list or array as long as ``shares``), written in the subset
    of Python that numba compiles: env's completion and cost model compile this very function."""
    m = len(shares)
    weight = 0.0
    for x in shares:
        weight += x
    remainder = [0.0] * m
    given = 0
    for i in range(m):
        exact = total * shares[i] / weight
        sizes[i] = int(exact)
        remainder[i] = exact - sizes[i]
        given += sizes[i]
    order = [0] * m  # by remainder, largest first; ties: earlier first (a stable insertion sort)
    for i in range(m):
        j = i - 1
        while j >= 0 and remainder[order[j]] < remainder[i]:
            order[j + 1] = order[j]
            j -= 1
        order[j + 1] = i
    extra = total - given  # rounding can make it negative: then, like a slice [:extra], all but -extra
    count = min(extra, m) if extra >= 0 else max(0, m + extra)
    for i in range(count):
        sizes[order[i]] += 1


def contiguous_ranges(sizes: Sequence[int]) -> list[Rows]:
    """Consecutive ranges ``[(0, s0), (s0, s0+s1), ...]`` for the given sizes."""
    ranges, lo = [], 0
    for size in sizes:
        ranges.append((lo, lo + size))
        lo += size
    return ranges
