"""Plan shapes: cut points and a split factor per stage, and the shapes worth trying.

A ``Shape`` is what the policy and the optimiser decide; the analytic completion (env/completion.py)
turns it into a full plan under a snapshot. ``structured_shapes`` lists the shapes that need no search,
``neighbours`` the shapes one edit away, and ``search_shape`` is the matching oracle: a steepest-descent
search over shapes scored by the cost model, used to build the candidate set of shapes and the
optimiser-like labels for behaviour cloning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from runtime.graph import LayerGraph
from runtime.plan import Plan


@dataclass(frozen=True)
class Shape:
    """Stage boundaries (cut points, first 0 and last ``len(units)``) and a split factor per stage."""

    bounds: tuple[int, ...]
    factors: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.bounds) != len(self.factors) + 1 or len(self.factors) < 1:
            raise ValueError(f"shape needs one more bound than factors, got {self.bounds} / {self.factors}")
        if any(b >= c for b, c in zip(self.bounds[:-1], self.bounds[1:], strict=True)):
            raise ValueError(f"shape bounds must increase: {self.bounds}")
        if any(k < 1 for k in self.factors):
            raise ValueError(f"split factors must be >= 1: {self.factors}")

    @cached_property
    def stages(self) -> tuple[tuple[int, int, int], ...]:
        """``(start, end, factor)`` per stage."""
        return tuple(zip(self.bounds[:-1], self.bounds[1:], self.factors, strict=True))

    @cached_property
    def spans(self) -> tuple[tuple[int, int], ...]:
        """``(start, end)`` per stage."""
        return tuple(zip(self.bounds[:-1], self.bounds[1:], strict=True))

    def fits(self, graph: LayerGraph) -> bool:
        """Whether the bounds are cut points of ``graph`` covering all its units."""
        cuts = set(graph.cut_points)
        return self.bounds[0] == 0 and self.bounds[-1] == len(graph.units) and cuts.issuperset(self.bounds)

    def clamped(self, graph: LayerGraph, n_devices: int) -> Shape:
        """The shape with every factor within what ``n_devices`` and each stage's rows allow."""
        factors = tuple(max(1, min(k, n_devices, graph.extent(e))) for (_, e, k) in self.stages)
        return Shape(self.bounds, factors)

    def to_list(self) -> list[list[int]]:
        return [list(self.bounds), list(self.factors)]

    @classmethod
    def from_list(cls, data: Sequence[Sequence[int]]) -> Shape:
        bounds, factors = data
        return cls(tuple(int(b) for b in bounds), tuple(int(k) for k in factors))

    def describe(self) -> str:
        return " | ".join(f"[{s},{e})x{k}" for s, e, k in self.stages)

    @classmethod
    def of_plan(cls, plan: Plan) -> Shape:
        """The shape of an existing plan (its cut points and device counts)."""
        bounds = (plan.stages[0].start, *(s.end for s in plan.stages))
        return cls(bounds, tuple(len(s.assignments) for s in plan.stages))


def downsampling_cuts(graph: LayerGraph) -> list[int]:
    """Inner cut points where the feature map gets fewer rows (after pools and strided layers) or the
    model turns flat: the natural places to change the set of devices."""
    cuts, rows = [], graph.extent(0)
    for c in graph.cut_points[1:-1]:
        if graph.units[c - 1].kind == "spatial":
            if graph.extent(c) < rows or graph.units[c].kind == "flat":
                cuts.append(c)
            rows = graph.extent(c)
    return cuts


def structured_shapes(graph: LayerGraph, max_stages: int, max_factor: int) -> list[Shape]:
    """Shapes that need no search, from coarse to fine: one stage; the spatial part then the flat part;
    one stage per downsampling block; one stage per spatial group (re-splitting often keeps halos
    small). Spatial stages get the same factor k = 1..max_factor, flat stages 1. Segmentations with
    more than ``max_stages`` stages are left out."""
    n = len(graph.units)
    out = [Shape((0, n), (k,)) for k in range(1, max_factor + 1)]
    cuts = downsampling_cuts(graph)
    flat_start = next((c for c in graph.cut_points[1:-1] if graph.units[c].kind == "flat"), n)
    spatial_cuts = [c for c in graph.cut_points[1:-1] if c < flat_start]
    tail = [flat_start] if flat_start < n else []
    segmentations = [
        (0, *tail, n),
        (0, *[c for c in cuts if c < flat_start], *tail, n),
        (0, *spatial_cuts, *tail, n),
    ]
    for bounds in dict.fromkeys(segmentations):
        if len(bounds) - 1 > max_stages:
            continue
        for k in range(1, max_factor + 1):
            factors = tuple(k if graph.stage_kind(e) == "spatial" else 1 for e in bounds[1:])
            out.append(Shape(tuple(bounds), factors))
    return list(dict.fromkeys(out))


def neighbours(graph: LayerGraph, shape: Shape, max_stages: int, max_factor: int) -> Iterable[Shape]:
    """Shapes one edit away: a factor changed by +-1 (one stage, or every stage split more than once),
    a cut added, removed or moved to a neighbouring cut point."""
    bounds, factors = list(shape.bounds), list(shape.factors)
    cuts = graph.cut_points
    for step in (-1, 1):
        wide = [k + step if k > 1 else k for k in factors]
        if wide != factors and all(1 <= k <= max_factor for k in wide):
            yield Shape(shape.bounds, tuple(wide))
    for i, k in enumerate(factors):
        for k2 in (k - 1, k + 1):
            if 1 <= k2 <= max_factor:
                yield Shape(shape.bounds, tuple(factors[:i] + [k2] + factors[i + 1 :]))
    if len(factors) < max_stages:
        for c in cuts[1:-1]:
            if c in bounds:
                continue
            i = next(j for j in range(len(bounds) - 1) if bounds[j] < c < bounds[j + 1])
            yield Shape(
                tuple(sorted([*bounds, c])), tuple(factors[: i + 1] + [factors[i]] + factors[i + 1 :])
            )
    for i in range(1, len(bounds) - 1):
        merged = factors[: i - 1] + [max(factors[i - 1], factors[i])] + factors[i + 1 :]
        yield Shape(tuple(bounds[:i] + bounds[i + 1 :]), tuple(merged))
        pos = cuts.index(bounds[i])
        for c in (cuts[pos - 1], cuts[pos + 1]):
            if bounds[i - 1] < c < bounds[i + 1]:
                yield Shape(tuple(bounds[:i] + [c] + bounds[i + 1 :]), shape.factors)


def search_shape(
    graph: LayerGraph,
    score: Callable[[Shape], float],
    starts: Sequence[Shape],
    max_stages: int,
    max_factor: int,
    max_rounds: int = 50,
) -> tuple[Shape, float]:
    """Steepest descent over shapes from the best of ``starts``; ``score`` is lower-is-better."""
    seen: dict[Shape, float] = {}

    def cost(s: Shape) -> float:
        if s not in seen:
            seen[s] = score(s)
        return seen[s]

    best = min(starts, key=cost)
    for _ in range(max_rounds):
        step = min(neighbours(graph, best, max_stages, max_factor), key=cost, default=best)
        if cost(step) >= cost(best) * (1 - 1e-9):
            break
        best = step
    return best, cost(best)
