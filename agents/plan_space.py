"""The full plan space of a small instance, counted and enumerated.

A plan is fixed, as far as the cost model is concerned, by its stages (any cut points), each stage's
devices in row order (any ordered set of distinct devices) and their whole rows (any split of the stage's
extent into positive integers; shares are turned into rows by largest remainder, so shares equal to the
rows give exactly those rows). Relays follow ``spec.route`` and are not a choice. Enumerating all of it
proves the optimum of an instance, which the optimiser does when the space is small (a few thousand plans:
a tiny model on two or three devices); on VGG-16 it is astronomically large.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from functools import lru_cache

from runtime.graph import LayerGraph
from runtime.plan import Plan


def stage_choices(extent: int, n_devices: int) -> int:
    """Ways to give a stage of ``extent`` rows to an ordered set of distinct devices, each >= 1 row."""
    return sum(
        math.perm(n_devices, k) * math.comb(extent - 1, k - 1) for k in range(1, min(n_devices, extent) + 1)
    )


def plan_space_size(graph: LayerGraph, n_devices: int) -> int:
    """Number of plans of ``graph`` over ``n_devices`` devices (before memory and availability checks)."""
    points = graph.cut_points
    ways = {points[-1]: 1}
    for i in range(len(points) - 2, -1, -1):
        ways[points[i]] = sum(stage_choices(graph.extent(e), n_devices) * ways[e] for e in points[i + 1 :])
    return ways[0]


@lru_cache(maxsize=256)
def _assignments(extent: int, devices: tuple[str, ...]) -> tuple[tuple[tuple[str, float], ...], ...]:
    """Every (device, rows) list of one stage: ordered distinct devices, positive rows summing to extent."""
    out = []
    for k in range(1, min(len(devices), extent) + 1):
        for inner in itertools.combinations(range(1, extent), k - 1):
            sizes = [b - a for a, b in itertools.pairwise((0, *inner, extent))]
            for order in itertools.permutations(devices, k):
                out.append(tuple(zip(order, map(float, sizes), strict=True)))
    return tuple(out)


def full_plan_space(graph: LayerGraph, devices: Sequence[str], source: str, sink: str) -> Iterator[Plan]:
    """Every plan of ``graph`` over ``devices`` (``plan_space_size`` of them), segmentation by segmentation."""
    inner, n = graph.cut_points[1:-1], len(graph.units)
    pool = tuple(devices)
    for r in range(len(inner) + 1):
        for cuts in itertools.combinations(inner, r):
            bounds = (0, *cuts, n)
            spans = list(itertools.pairwise(bounds))
            options = [_assignments(graph.extent(e), pool) for _, e in spans]
            for choice in itertools.product(*options):
                stages = [(s, e, dict(a)) for (s, e), a in zip(spans, choice, strict=True)]
                yield Plan.build(source, sink, stages)
