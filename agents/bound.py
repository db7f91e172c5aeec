"""A certified lower bound on the cost of every plan for one snapshot (its rates held constant).

The bound is what the optimiser's gap is measured against: ``gap = cost / bound - 1`` says how far its plan
can be from the best plan at most. It must hold for the *whole* plan space (any cuts, any device subsets,
any shares, any relays), not only for the shapes a planner searches, so it is derived from the physics the
cost model replays (design.md, "Execution semantics"), relaxed until it is a linear program:

- **work**: computing a fraction ``x`` of a group's output rows costs at least ``x`` times the group's
  cheapest work per row (halo only adds work), at the device's speed, one task at a time;
- **data**: a device computes output rows of a group only from input rows it holds, and holds only rows it
  computed or received; rows of the model's input start on the source; the sink must end up holding the
  whole output;
- **radio**: a device sends one transfer at a time, a fraction of a boundary tensor taking its bytes over
  the link's measured rate; a device can pass on only rows it holds (store-and-forward relays, but over
  any path, not only ``spec.route``'s).

The latency ``T`` is a variable: every device computes, and every radio sends, for at most ``T`` seconds
in all. Any plan, with each device's computed rows and each arc's distinct rows counted per group and per
boundary, is a solution of this LP, so its optimum is <= the plan's latency. The latency bound is
also at least the link latency of the fastest path from the source to the sink (the output depends on the
input through a chain of hops). It is a *capacity* relaxation: it sees neither order nor waiting (a band waits for its whole input, halo rows cross between
stages, link latency), and since it has no time, rows may be held "because" a neighbour sent them back (a
cycle), so on well-connected meshes it comes down to the compute bound ``work / sum of speeds``. A
time-indexed version (cumulative variables over slots of ``T``) was tried and gave the same values on the
DISNET meshes at 10x the solve time: the cycles still form inside a slot. That is where its gap comes from.

Energy is bounded by the same constraints without ``T``: compute seconds at compute power plus every
distinct row's airtime at its sender's transmit and its receiver's receive power (idle power, never
negative, is left out). A weighted objective adds the two bounds (the minimum of a sum is at least the sum
of the minima).

An instance no plan can serve (no available device holds a group's weights, nothing that can compute is
reachable from the source, or nothing that can compute reaches the sink) is a ``PlannerError`` naming the
reason; the LP is never asked about it.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from agents.base import PlannerError
from env.band_tables import BandTables
from env.cost_model import CostModel, Objective
from env.network import Snapshot
from runtime.graph import LayerGraph

BITS = 8.0
SOLVER_MARGIN = 1e-6  # relative: HiGHS meets constraints to ~1e-7, so an optimum may sit that far too high


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


@dataclass(frozen=True)
class _Instance:
    """One snapshot as the relaxation sees it: devices, directed arcs and their seconds per byte."""

    devices: tuple[str, ...]
    can_compute: np.ndarray  # bool per device: available
    work_rate: np.ndarray  # work units per second per device at its measured speed (0 when down)
    arcs: list[tuple[int, int]]  # directed (from, to) over links that carry data
    arc_spb: np.ndarray  # seconds per byte of each arc
    arc_latency: np.ndarray  # propagation seconds of each arc
    source: int
    sink: int


def _instance(snapshot: Snapshot, model: CostModel) -> _Instance:
    spec = snapshot.spec
    names = spec.device_ids
    index = {d: i for i, d in enumerate(names)}
    up = np.array([d in snapshot.available for d in names])
    profile = model.profile
    nominal = np.array([spec.devices[d].gflops for d in names])
    per_gflops = 1e9 if profile is None else 1.0 / profile.reference_gflops
    rate = nominal * per_gflops * np.array([snapshot.speed[d] for d in names]) * up
    arcs, spb, latency = [], [], []
    for link, mbps in zip(spec.links, snapshot.rates.link_mbps, strict=True):
        if mbps > 0:
            a, b = index[link.a], index[link.b]
            arcs += [(a, b), (b, a)]
            spb += [BITS / (mbps * 1e6)] * 2
            latency += [link.latency_s] * 2
    return _Instance(
        names, up, rate, arcs, np.array(spb), np.array(latency), index[snapshot.source], index[snapshot.sink]
    )


def check_servable(snapshot: Snapshot, graph: LayerGraph, model: CostModel) -> None:
    """Raise ``PlannerError`` naming why no plan can serve this snapshot, if none can."""
    inst = _instance(snapshot, model)
    facts = group_facts(graph, None if model.profile is None else model.profile.unit_seconds)
    spec = snapshot.spec
    memory = [spec.devices[d].memory_mb for d in inst.devices]
    for (start, end), nbytes in zip(graph.groups, facts.param_bytes, strict=True):
        if not any(
            up and (mb is None or nbytes <= mb * 1e6) for up, mb in zip(inst.can_compute, memory, strict=True)
        ):
            raise PlannerError(
                f"no available device of {spec.name!r} can hold the {nbytes / 1e6:.1f} MB of weights of "
                f"{graph.name}'s units [{start}, {end})"
            )
    from_source = _reachable(inst, inst.source, forward=True)
    to_sink = _reachable(inst, inst.sink, forward=False)
    workers = {d for d in range(len(inst.devices)) if inst.can_compute[d]}
    if not workers & from_source:
        raise PlannerError(
            f"source {snapshot.source!r} is cut off: no available device is reachable from it over links "
            "that carry data"
        )
    if not workers & from_source & to_sink:
        raise PlannerError(
            f"sink {snapshot.sink!r} is cut off: no available device reachable from source "
            f"{snapshot.source!r} can reach it over links that carry data"
        )


def _reachable(inst: _Instance, start: int, *, forward: bool) -> set[int]:
    seen, frontier = {start}, [start]
    while frontier:
        d = frontier.pop()
        for a, b in inst.arcs:
            nxt = b if forward and a == d else a if not forward and b == d else None
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


def lower_bound(snapshot: Snapshot, graph: LayerGraph, objective: Objective, model: CostModel) -> float:
    """A value <= ``objective`` of every plan for ``graph`` under ``snapshot`` (module docstring).

    Raises ``PlannerError`` when no plan can serve the snapshot.
    """
    check_servable(snapshot, graph, model)
    facts = group_facts(graph, None if model.profile is None else model.profile.unit_seconds)
    inst = _instance(snapshot, model)
    latency = energy = 0.0
    if objective.kind in ("latency", "weighted"):
        latency = max(_solve(_Relaxation(inst, facts), "latency"), _propagation_floor(inst))
    if objective.kind == "energy" or (objective.kind == "weighted" and objective.energy_weight > 0):
        energy = _solve(_Relaxation(inst, facts, power=_powers(snapshot)), "energy")
    if objective.kind == "latency":
        return latency
    if objective.kind == "energy":
        return energy
    return latency + objective.energy_weight * energy


def _propagation_floor(inst: _Instance) -> float:
    """Link latency on the way from the source to the sink: the output depends on the input through a
    chain of transfers, each hop one link latency, so no plan beats the path of least latency."""
    best = {inst.source: 0.0}
    heap = [(0.0, inst.source)]
    while heap:
        t, d = heapq.heappop(heap)
        if d == inst.sink:
            return t
        if t > best[d]:
            continue
        for (a, b), lat in zip(inst.arcs, inst.arc_latency, strict=True):
            if a == d and t + lat < best.get(b, math.inf):
                best[b] = t + lat
                heapq.heappush(heap, (t + lat, b))
    return 0.0  # unreachable sinks are refused by check_servable before


def _powers(snapshot: Snapshot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    powers = [snapshot.spec.devices[d].power for d in snapshot.spec.device_ids]
    return tuple(np.array([getattr(p, k) for p in powers]) for k in ("compute_w", "transmit_w", "receive_w"))


def _solve(lp: _Relaxation, what: str) -> float:
    a_ub, b_ub, c, bounds = lp.arrays()
    result = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if result.status != 0:
        raise PlannerError(f"the {what} bound's LP did not solve: {result.message}")
    return max(0.0, float(result.fun) * (1.0 - SOLVER_MARGIN))


class _Relaxation:
    """The LP of the module docstring: ``X[d, g]`` the fraction of group ``g``'s output rows device ``d``
    computes, ``F[a, b]`` the fraction of boundary ``b``'s rows sent over arc ``a``; for latency (no
    ``power``) also ``T``, for energy the powers that price seconds of compute, sending and receiving."""

    def __init__(
        self,
        inst: _Instance,
        facts: GroupFacts,
        power: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ):
        self.inst, self.facts, self.power = inst, facts, power
        n_dev, n_groups, n_arcs = len(inst.devices), len(facts.work), len(inst.arcs)
        self.n_groups, self.n_bounds = n_groups, n_groups + 1
        self.x0 = 1 if power is None else 0  # column 0 is T when timed
        self.f0 = self.x0 + n_dev * n_groups
        self.n_vars = self.f0 + n_arcs * self.n_bounds
        self.into = [[a for a, (_, v) in enumerate(inst.arcs) if v == d] for d in range(n_dev)]
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.rhs: list[float] = []

    def x(self, d: int, g: int) -> int:
        return self.x0 + d * self.n_groups + g

    def f(self, a: int, b: int) -> int:
        return self.f0 + a * self.n_bounds + b

    def _row(self, terms: list[tuple[int, float]], rhs: float) -> None:
        r = len(self.rhs)
        for col, val in terms:
            self.rows.append(r)
            self.cols.append(col)
            self.vals.append(val)
        self.rhs.append(rhs)

    def _held(self, d: int, b: int, scale: float) -> list[tuple[int, float]]:
        """``-scale`` x (rows of boundary ``b`` device ``d`` holds): what it computed of the group ending
        there plus what reached it (the source's input is a constant, handled by the caller)."""
        terms = [(self.f(a, b), -scale) for a in self.into[d]]
        if b > 0:
            terms.append((self.x(d, b - 1), -scale))
        return terms

    def arrays(self):
        inst, facts = self.inst, self.facts
        n_dev = len(inst.devices)
        for d in range(n_dev):
            for g in range(self.n_groups):
                if not (g == 0 and d == inst.source):  # computes only from rows it holds
                    self._row([(self.x(d, g), 1.0), *self._held(d, g, facts.reach[g])], 0.0)
        for a, (u, _) in enumerate(inst.arcs):
            for b in range(self.n_bounds):
                if not (b == 0 and u == inst.source):  # sends only rows it holds
                    self._row([(self.f(a, b), 1.0), *self._held(u, b, 1.0)], 0.0)
        for g in range(self.n_groups):  # every needed row of every group is computed
            self._row([(self.x(d, g), -1.0) for d in range(n_dev)], -facts.needed[g])
        self._row(self._held(inst.sink, self.n_groups, 1.0), -1.0)  # the sink holds the output
        if self.power is None:
            self._capacity_rows()
        a_ub = coo_matrix((self.vals, (self.rows, self.cols)), shape=(len(self.rhs), self.n_vars)).tocsr()
        bounds = np.zeros((self.n_vars, 2))
        bounds[:, 1] = 1.0
        if self.power is None:
            bounds[0, 1] = np.inf
        for d in np.flatnonzero(~inst.can_compute):
            bounds[self.x(d, 0) : self.x(d, self.n_groups - 1) + 1, 1] = 0.0
        return a_ub, np.array(self.rhs), self._objective(), bounds

    def _capacity_rows(self) -> None:
        """Each device computes, and each radio sends, for at most ``T`` seconds."""
        inst, facts = self.inst, self.facts
        for d in range(len(inst.devices)):
            if inst.can_compute[d]:
                terms = [(self.x(d, g), facts.work[g] / inst.work_rate[d]) for g in range(self.n_groups)]
                self._row([(0, -1.0), *terms], 0.0)
            terms = [
                (self.f(a, b), facts.nbytes[b] * inst.arc_spb[a])
                for a, (u, _) in enumerate(inst.arcs)
                if u == d
                for b in range(self.n_bounds)
            ]
            if terms:
                self._row([(0, -1.0), *terms], 0.0)

    def _objective(self) -> np.ndarray:
        c = np.zeros(self.n_vars)
        if self.power is None:
            c[0] = 1.0
            return c
        inst, facts = self.inst, self.facts
        compute_w, transmit_w, receive_w = self.power
        for d in np.flatnonzero(inst.can_compute):
            for g in range(self.n_groups):
                c[self.x(d, g)] = facts.work[g] / inst.work_rate[d] * compute_w[d]
        for a, (u, v) in enumerate(inst.arcs):
            for b in range(self.n_bounds):
                c[self.f(a, b)] = facts.nbytes[b] * inst.arc_spb[a] * (transmit_w[u] + receive_w[v])
        return c
