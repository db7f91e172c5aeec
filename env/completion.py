"""Analytic completion: from a plan *shape* (cut points + split factor per stage) to a full Plan.

The policy only decides the shape of a plan: where the vertical cuts go and across how many devices each
stage is split. Which devices, in which row order and with which shares, follows from the snapshot by a
small load-balancing model, so the learning problem stays small and the same shape keeps its meaning on
any cluster. Everything here is a pure function of ``(graph, snapshot)``; planners may reuse it.

Model of one stage ``[start, end)`` split ``k`` ways (seconds; x = a device's share of the output):

    t_d(x) = a_d + x * c_d
    c_d = in_bytes * spb_in(d) + flops / speed(d) + out_bytes * spb_out(d)   (the whole stage on d)
    a_d = the halo a band of a k-way split adds (its extra input rows and FLOPs), or, for a flat
          stage, the whole input tensor (every device needs all of it)

``spb_in(d)`` is the seconds per byte from the previous stage's devices to ``d`` (route store-and-forward,
weighted by the previous shares; 0 on the same device), ``spb_out(d)`` the same towards the sink for the
last stage (0 otherwise). The ``k`` devices with the smallest single-device time ``a_d + c_d`` are chosen
and their shares equalise finish times, ``x_d = (T - a_d) / c_d`` with ``sum x_d = 1`` (the divisible-load
solution); a device that would get ``x_d <= 0`` is dropped. Shares are then rounded to whole rows (largest
remainder), so a plan is canonical: equal conditions give the identical plan.
Devices that are down, unreachable (a zero-bandwidth hop or a relay that is down) or lack memory for the
stage's weights are never chosen, and ``k`` is clamped to what is usable and to the stage's extent.

The model is deliberately simple: the cost model (and the runtime) decide the actual latency, and the
policy learns which shapes work under which conditions. It runs once or twice per env step, so the whole
per-stage loop is one numba kernel (``_complete``); its whole-row rounding ``split_rows`` compiles
``runtime.halo.largest_remainder``, the rule ``split_by_shares`` runs in Python. ``complete_arrays`` returns
the plan as the kernel's arrays (``PlanArrays``) for callers that only cost it. ``search_shape`` is the
matching oracle: a steepest-descent search over shapes scored by the cost model, used to build the
candidate set of shapes and the optimiser-like labels for behaviour cloning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np
from numba import njit

from env.plan_arrays import PlanArrays
from env.snapshot import Snapshot, link_key
from runtime.graph import LayerGraph
from runtime.halo import largest_remainder
from runtime.plan import Plan
from runtime.spec import ClusterSpec

BITS = 8.0
UNREACHABLE = math.inf


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


# ------------------------------------------------------------------------------------ route table


@dataclass(frozen=True)
class _Routes:
    """Per cluster: which links and relays each device pair's route uses (fixed by ``spec.route``)."""

    devices: tuple[str, ...]
    index: dict[str, int]
    links: tuple[tuple[str, str], ...]
    link_use: np.ndarray  # (D*D, L) 1 where the route of pair (a, b) crosses link l
    relay_use: np.ndarray  # (D*D, D) 1 where device r relays for pair (a, b)
    no_route: np.ndarray  # (D*D,) bool: distinct devices with no route at all
    nominal: list[float]  # GFLOP/s per device
    memory: list[float]  # bytes per device, inf when unlimited
    memory_bytes: np.ndarray  # the same as an array


_ROUTE_CACHE: dict[tuple, _Routes] = {}
_LAST_ROUTES: list = [None, None]  # the spec asked about last, and its table


def _routes(spec: ClusterSpec) -> _Routes:
    if _LAST_ROUTES[0] is spec:  # hashing a spec's devices costs more than a net view
        return _LAST_ROUTES[1]
    key = (tuple(spec.devices.values()), spec.links)  # source/sink do not matter: variants share it
    table = _ROUTE_CACHE.get(key)
    if table is not None:
        _LAST_ROUTES[:] = (spec, table)
        return table
    devices = spec.device_ids
    index = {d: i for i, d in enumerate(devices)}
    links = tuple(link_key(ln.a, ln.b) for ln in spec.links)
    link_index = {k: i for i, k in enumerate(links)}
    n = len(devices)
    link_use = np.zeros((n * n, len(links)))
    relay_use = np.zeros((n * n, n))
    no_route = np.zeros(n * n, dtype=bool)
    for a in devices:
        for b in devices:
            row = index[a] * n + index[b]
            if a == b:
                continue
            if not spec.reachable(a, b):
                no_route[row] = True
                continue
            path = spec.route(a, b)
            for u, v in zip(path[:-1], path[1:], strict=True):
                link_use[row, link_index[link_key(u, v)]] = 1.0
            for r in path[1:-1]:
                relay_use[row, index[r]] = 1.0
    memory = [
        math.inf if spec.devices[d].memory_mb is None else spec.devices[d].memory_mb * 1e6 for d in devices
    ]
    table = _Routes(
        devices,
        index,
        links,
        link_use,
        relay_use,
        no_route,
        [spec.devices[d].gflops for d in devices],
        memory,
        np.array(memory, dtype=np.float64),
    )
    if len(_ROUTE_CACHE) > 64:
        _ROUTE_CACHE.clear()
    _ROUTE_CACHE[key] = table
    _LAST_ROUTES[:] = (spec, table)
    return table


@dataclass(frozen=True)
class NetView:
    """A snapshot as arrays over the cluster's devices (declaration order), for fast planning.

    Lists for planners' Python loops; arrays for the completion's compiled stage choice and the
    observation.
    """

    devices: tuple[str, ...]
    index: dict[str, int]
    usable: list[bool]  # up at decision time
    gflops: list[float]  # effective GFLOP/s (nominal x measured speed), 0 when down
    memory: list[float]  # bytes of memory, inf when unlimited
    sec_per_byte: np.ndarray  # (D, D) route store-and-forward seconds per byte, 0 on the diagonal
    source: str
    sink: str
    usable_mask: np.ndarray = field(repr=False)  # usable as a bool array
    inv_speed: np.ndarray = field(repr=False)  # seconds per FLOP, 0 when down
    memory_bytes: np.ndarray = field(repr=False)  # memory as an array

    @property
    def n_usable(self) -> int:
        return sum(self.usable)


def net_view(snapshot: Snapshot) -> NetView:
    """What the snapshot says as arrays: speed, availability and per-route seconds per byte.

    A route's seconds per byte is the sum over its hops of 8 / bandwidth (store and forward); it is
    infinite when a hop measured 0 Mbit/s or a relay on it is down.
    """
    table = _routes(snapshot.spec)
    n = len(table.devices)
    available, speed = snapshot.available, snapshot.speed
    usable = [d in available for d in table.devices]
    gflops = [
        g * speed[d] if u else 0.0 for d, g, u in zip(table.devices, table.nominal, usable, strict=True)
    ]
    mbps = snapshot.rates.link_mbps  # per link in spec order, as table.links
    per_link = BITS / (np.maximum(mbps, 1e-24) * 1e6)  # 0 Mbit/s -> ~1e19 s/B, caught below
    spb = table.link_use @ per_link
    blocked = table.no_route | (spb > 1e12)
    if not all(usable):
        blocked |= table.relay_use @ np.array([0.0 if u else 1.0 for u in usable]) > 0
    spb[blocked] = UNREACHABLE
    spb = spb.reshape(n, n)
    return NetView(
        table.devices,
        table.index,
        usable,
        gflops,
        table.memory,
        spb,
        snapshot.source,
        snapshot.sink,
        np.array(usable, dtype=np.bool_),
        np.array([1.0 / (g * 1e9) if g > 0 else 0.0 for g in gflops]),
        table.memory_bytes,
    )


# ------------------------------------------------------------------------------------ completion


@dataclass(frozen=True)
class _StageInfo:
    """What the balancing model needs of one stage split ``k`` ways; static per graph, so cached."""

    extent: int
    flat: bool
    in_bytes: float
    flops: float
    out_bytes: float
    halo_bytes: float  # extra input bytes one band of a k-way split needs (a middle band, the worst case)
    halo_flops: float  # extra FLOPs that band computes
    param_bytes: int


@lru_cache(maxsize=8192)
def _stage_info(graph: LayerGraph, start: int, end: int, k: int) -> _StageInfo:
    extent = graph.extent(end)
    flat = graph.stage_kind(end) == "flat"
    flops = float(graph.band_flops(start, end, (0, extent)))
    in_bytes = float(graph.extent(start) * graph.row_bytes(start))
    out_bytes = float(extent * graph.row_bytes(end))
    halo_bytes = halo_flops = 0.0
    if k > 1 and not flat:
        rows = max(1, extent // k)
        lo = (extent - rows) // 2
        band_in = graph.input_rows(start, end, (lo, lo + rows))
        halo_bytes = max(0.0, (band_in[1] - band_in[0]) * graph.row_bytes(start) - in_bytes * rows / extent)
        halo_flops = max(0.0, graph.band_flops(start, end, (lo, lo + rows)) - flops * rows / extent)
    return _StageInfo(
        extent, flat, in_bytes, flops, out_bytes, halo_bytes, halo_flops, graph.stage_param_bytes(start, end)
    )


@lru_cache(maxsize=1024)
def _shape_arrays(graph: LayerGraph, shape: Shape) -> tuple[np.ndarray, ...]:
    """Per stage of ``shape``, what ``_complete`` needs: the clamped factor and the ``_StageInfo`` fields."""
    infos, ks = [], []
    for start, end, factor in shape.stages:
        k = max(1, min(factor, graph.extent(end)))
        infos.append(_stage_info(graph, start, end, k))
        ks.append(k)
    floats = np.array(
        [(i.in_bytes, i.flops, i.out_bytes, i.halo_bytes, i.halo_flops) for i in infos], dtype=np.float64
    ).T
    ints = np.array([(i.extent, i.param_bytes, k) for i, k in zip(infos, ks, strict=True)], dtype=np.int64).T
    # contiguous rows: one compiled signature for every shape (see env/cost_kernels.py on the numba cache)
    columns = [np.ascontiguousarray(c) for c in (*floats, *ints)]
    return (np.array([i.flat for i in infos], dtype=np.bool_), *columns)


def complete(graph: LayerGraph, view: NetView, shape: Shape) -> Plan:
    """The plan for ``shape`` under the conditions in ``view`` (see the module docstring).

    Factors larger than the usable devices or the stage's extent are clamped; the result always
    validates against the graph.
    """
    return complete_arrays(graph, view, shape).plan


def complete_arrays(graph: LayerGraph, view: NetView, shape: Shape) -> PlanArrays:
    """``complete`` as the arrays the compiled ``_complete`` returns (the per-stage choice and balancing),
    for callers that only cost the plan: the Plan's objects are built when ``.plan`` is first asked for."""
    stage_ptr, devices, sizes = _complete(
        view.sec_per_byte, view.usable_mask, view.memory_bytes, view.inv_speed, view.index[view.source],
        view.index[view.sink], *_shape_arrays(graph, shape),
    )  # fmt: skip
    return PlanArrays(
        view.devices,
        view.index[view.source],
        view.index[view.sink],
        shape.spans,
        stage_ptr,
        devices,
        sizes.astype(np.float64),
    )


@njit(cache=True)
def _complete(
    spb, usable, memory, inv_speed, source, sink, flat, in_bytes, flops, out_bytes, halo_bytes, halo_flops,
    extent, param_bytes, k,
):  # fmt: skip
    """Every stage's devices (in row order) and rows: ``devices[stage_ptr[s]:stage_ptr[s+1]]`` and ``sizes``.

    Per stage: ``_choose`` the devices and shares, whole rows by ``split_rows``, then the devices that got
    rows ordered by (rank in the previous stage, seconds per byte from it, index), which keeps data
    local and transfers short.
    """
    n = spb.shape[0]
    n_stages = flat.size
    prev_dev = np.full(1, source, dtype=np.int64)  # previous stage's devices and shares, in row order
    prev_w = np.ones(1)
    used_memory = np.zeros(n)
    stage_ptr = np.zeros(n_stages + 1, dtype=np.int64)
    out_dev = np.empty(n_stages * n, dtype=np.int64)
    out_rows = np.empty(n_stages * n, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64)
    for s in range(n_stages):
        chosen, shares, spb_in = _choose(
            spb, usable, memory, inv_speed, used_memory, prev_dev, prev_w, sink if s == n_stages - 1 else -1,
            flat[s], in_bytes[s], flops[s], out_bytes[s], halo_bytes[s], halo_flops[s], param_bytes[s], k[s],
        )  # fmt: skip
        sizes = split_rows(extent[s], shares)
        rank[:] = n
        for r in range(prev_dev.size):
            rank[prev_dev[r]] = r
        order = np.empty(chosen.size, dtype=np.int64)
        m = 0
        for j in range(chosen.size):  # insertion sort of the devices with rows by (rank, spb_in, index)
            if sizes[j] <= 0:
                continue
            d = chosen[j]
            i = m - 1
            while i >= 0:
                e = chosen[order[i]]
                if rank[e] > rank[d] or (
                    rank[e] == rank[d] and (spb_in[e] > spb_in[d] or (spb_in[e] == spb_in[d] and e > d))
                ):
                    order[i + 1] = order[i]
                    i -= 1
                else:
                    break
            order[i + 1] = j
            m += 1
        prev_dev = np.empty(m, dtype=np.int64)
        prev_w = np.empty(m)
        base = stage_ptr[s]
        for i in range(m):
            j = order[i]
            prev_dev[i] = chosen[j]
            prev_w[i] = sizes[j] / extent[s]
            out_dev[base + i] = chosen[j]
            out_rows[base + i] = sizes[j]
            used_memory[chosen[j]] += param_bytes[s]
        stage_ptr[s + 1] = base + m
    return stage_ptr, out_dev[: stage_ptr[n_stages]], out_rows[: stage_ptr[n_stages]]


_largest_remainder = njit(largest_remainder)  # runtime.halo's rule, compiled into split_rows


@njit(cache=True)
def split_rows(total, shares):
    """``runtime.halo.split_by_shares`` compiled: integer sizes proportional to ``shares`` summing to
    ``total`` (largest remainder, ties to the earlier entry), as an int64 array."""
    sizes = np.zeros(shares.size, dtype=np.int64)
    _largest_remainder(total, shares, sizes)
    return sizes


@njit  # called only by _complete, whose cache holds it
def _choose(
    spb, usable, memory, inv_speed, used_memory, prev_dev, prev_w, sink, flat, in_bytes, flops, out_bytes,
    halo_bytes, halo_flops, param_bytes, k,
):  # fmt: skip
    """One stage's devices and shares (module docstring): returns the chosen devices (the ``k`` best by
    single-device time), their shares (equal finish times; 0 for a device whose fixed cost alone exceeds
    the common finish) and ``spb_in`` per device. ``sink`` >= 0 only for the last stage."""
    n = spb.shape[0]
    spb_in = np.zeros(n)
    for p in range(prev_dev.size):
        w = prev_w[p]
        for d in range(n):
            spb_in[d] = spb_in[d] + w * spb[prev_dev[p], d]
    fixed = np.zeros(n)
    per_share = np.zeros(n)
    cand = np.empty(n, dtype=np.int64)
    m = 0
    for d in range(n):
        if not usable[d] or used_memory[d] + param_bytes > memory[d] or spb_in[d] == UNREACHABLE:
            continue
        to_sink = spb[d, sink] if sink >= 0 else 0.0
        if to_sink == UNREACHABLE:
            continue
        compute = flops * inv_speed[d] + out_bytes * to_sink
        if flat:
            fixed[d], per_share[d] = in_bytes * spb_in[d], compute
        else:
            fixed[d] = halo_bytes * spb_in[d] + halo_flops * inv_speed[d]
            per_share[d] = in_bytes * spb_in[d] + compute
        cand[m] = d
        m += 1
    if m == 0:  # nothing usable can take it: stay where the data is
        d = prev_dev[0]
        cand[0], fixed[d], per_share[d] = d, 0.0, 1.0
        m = 1
    for i in range(1, m):  # sort by (single-device time, index)
        d = cand[i]
        key = fixed[d] + per_share[d]
        j = i - 1
        while j >= 0 and (
            fixed[cand[j]] + per_share[cand[j]] > key
            or (fixed[cand[j]] + per_share[cand[j]] == key and cand[j] > d)
        ):
            cand[j + 1] = cand[j]
            j -= 1
        cand[j + 1] = d
    chosen = cand[: min(k, m)].copy()
    # shares over `chosen` that equalise fixed + share * per_share, dropping devices that would get <= 0
    x = np.zeros(n)
    active = chosen.copy()
    while True:
        num, den = 0.0, 0.0
        for d in active:
            v = 1.0 / max(per_share[d], 1e-15)
            num += fixed[d] * v
            den += v
        finish = (1.0 + num) / den
        x[:] = 0.0
        kept = 0
        for d in active:
            x[d] = (finish - fixed[d]) * (1.0 / max(per_share[d], 1e-15))
            kept += x[d] > 0
        if kept == active.size or kept == 0:
            break
        active = np.array([d for d in active if x[d] > 0])
    if kept == 0:
        best = active[0]
        for d in active:
            if fixed[d] < fixed[best]:
                best = d
        x[:] = 0.0
        x[best] = 1.0
    shares = np.empty(chosen.size)
    for j in range(chosen.size):
        shares[j] = max(0.0, x[chosen[j]])
    return chosen, shares, spb_in


def shape_valid(graph: LayerGraph, view: NetView, shape: Shape) -> bool:
    """Whether every stage's factor fits the usable devices and the stage's extent (the action mask)."""
    usable = view.n_usable
    return all(k <= usable and k <= graph.extent(e) for _, e, k in shape.stages)


# ------------------------------------------------------------------------------ candidate shapes


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
