"""Band tables give the graph's own input rows and work for every band, on every model of the zoo."""

from __future__ import annotations

import numpy as np
import pytest

from env.band_tables import BandTables
from env.config import model_graph


def lookup(tables: BandTables, start: int, end: int, lo: int, hi: int) -> tuple[int, int, float]:
    """What the cost model's kernel reads for band [lo, hi) (filling a flat stage's size when new)."""
    o = tables.offset(start, end)
    in_first, in_end, work_first, work_end, work_size = tables.columns
    work = work_end[o + hi] - work_first[o + lo] + work_size[o + hi - lo]
    if np.isnan(work):
        work = tables.size_work(start, end, hi - lo)
    return int(in_first[o + lo]), int(in_end[o + hi]), work


def bands(extent: int, rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """Every band of a small extent; otherwise the edges, single rows and ``n`` random bands."""
    if extent <= 24:
        return [(lo, hi) for lo in range(extent) for hi in range(lo + 1, extent + 1)]
    picks = [(0, extent), (0, 1), (extent - 1, extent), (extent // 2, extent // 2 + 1)]
    for _ in range(n):
        lo, hi = sorted(rng.choice(extent + 1, size=2, replace=False))
        picks.append((int(lo), int(hi)))
    return picks


@pytest.mark.parametrize("name", ["tiny", "vgg16_bn", "resnet18", "mobilenet_v2", "yolov2_tiny"])
def test_tables_match_the_graph_for_every_stage(name):
    graph = model_graph(name)
    flops, profiled = BandTables(graph), BandTables(graph, tuple(np.linspace(1e-3, 2e-3, len(graph.units))))
    rng = np.random.default_rng(3)
    cuts = graph.cut_points
    stages = [(s, e) for i, s in enumerate(cuts) for e in cuts[i + 1 :]]
    checked = stages[:: max(1, len(stages) // 60)]  # ~60 stages a model
    kinds = {graph.stage_kind(end) for _, end in stages}
    assert {graph.stage_kind(end) for _, end in checked} == kinds  # spatial and, where any, flat
    for start, end in checked:
        for lo, hi in bands(graph.extent(end), rng, 6):
            in_lo, in_hi, work = lookup(flops, start, end, lo, hi)
            assert (in_lo, in_hi) == graph.input_rows(start, end, (lo, hi)), (start, end, lo, hi)
            assert work == graph.band_flops(start, end, (lo, hi)), (start, end, lo, hi)  # exact
            seconds = lookup(profiled, start, end, lo, hi)[2]
            assert seconds == pytest.approx(profiled.work(start, end, (lo, hi)), rel=1e-9, abs=1e-15)
