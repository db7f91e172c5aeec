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
  the link's measured rate; rows reach a device along paths from where they were produced (store-and-
  forward relays, over any path, not only ``spec.route``'s); rows sent once over a link may serve several
  devices behind it (a relay's, a halo's).

The latency ``T`` is a variable: every device computes, and every radio sends, for at most ``T`` seconds
in all. Any plan, with each device's computed rows, each device's received rows traced along the
transfers that brought them, and each link's distinct rows counted per group and boundary, is a solution
of this LP, so its optimum is <= the plan's latency. The latency bound is also at least the link latency
of the fastest path from the source to the sink (the output depends on the input through a chain of
hops).

**Image release** (latency only). A device ``d`` other than the source gets image rows in one transfer at
most (only stage 0 reads the image, and a device has one band per stage), over the source's one radio,
which sends its transfers one after another. Call ``d``'s tasks that start once that band has arrived
its *late* tasks. Split the rows ``d`` computes of each group, ``X[d, g] = I[d, g] + (X - I)[d, g]``:
``I[d, 0] = min(late rows, reach_0 h_d)`` with ``h_d`` the image rows it holds, then ``I[d, g] = min(late
rows of g, reach_g I[d, g - 1])``. Then for every plan

- ``I[d, g] <= X[d, g]``, ``I[d, g] <= reach_g I[d, g - 1]``, ``I[d, 0] <= reach_0 h_d`` and ``I[d, 0] =
  X[d, 0]`` (group 0 is in stage 0, all of it late), by definition;
- ``(X - I)[d, g] <= reach_g ((X - I)[d, g - 1] + received_g(d))``: where ``I[d, g] = reach_g I[d, g -
  1]`` it follows from ``X[d, g] <= reach_g (X[d, g - 1] + received_g(d))`` (the data rows); elsewhere
  ``(X - I)[d, g]`` is the rows of tasks that start before the band arrives, whose input is only rows
  received or computed by such tasks (not the image, not a late task's output), and those rows are at
  most ``(X - I)[d, g - 1]`` of group ``g - 1``;
- the work of ``I[d, .]``, ``W_d``, is done by late tasks, one after another, so ``T >= c_d + W_d /
  r_d`` with ``c_d`` the band's completion on the source's radio and ``r_d`` ``d``'s speed; and
  ``W_d <= K h_d`` (``K``: work of every group times the product of the reaches up to it), while the
  band takes at least ``h_d tau`` of the radio (``tau``: the whole image's seconds over the source's
  fastest link), so ``W_d <= a p_d`` with ``p_d`` the band's radio seconds and ``a = K / tau``.

In the order the radio sends them, ``c_i >= p_1 + ... + p_i``, so ``W_1 / a + ... + W_i / a + W_i / r_i
<= T`` for each ``i``; by induction ``a T - (W_1 + ... + W_i) >= a T prod_{j <= i} a / (a + r_j)``, in any
order. Hence for every set ``S`` of helpers ``sum_{d in S} W_d <= a T (1 - prod_{d in S} a / (a + r_d))``,
linear in ``T`` (divisible-load theory's single-port distribution); the LP keeps the sets of the fastest
k, the slowest k and each helper alone. Rows computed from intermediate tensors received from other
devices (``X - I``) escape these rows, which is why on the DISNET meshes at 10-25 Mbit/s (a pooled VGG-16
tensor costs a radio less time than a device needs to compute what it feeds) the bound still comes down
to ``work / sum of speeds``; where links are slow (1-2 Mbit/s) they lift it by up to 89%.

The relaxation sees neither the waiting of tasks on intermediate rows (a band waits for its whole input,
stages wait for their neighbours' halo rows) nor the halo rows themselves (work and traffic that grow with
the number of bands). The halo rows are not what holds the gap: as fixed charges (an integer program, a
binary per device and group for whether the device computes there, its band's halo rows then needed on
top) they lift the bound by nothing on disnet-mesh2 at 15 Mbit/s (solved) and by at most 8.1% on mesh0
and mesh1 at 10-25 Mbit/s (solutions that close to this LP's minimum; docs/benchmarks.md, twenty-second
and thirtieth rounds): a device computes its neighbours' few halo rows itself. A fluid version over time
slots of ``T`` still lets every device start at once, on input rows streamed to it a few at a time (a
version of it measured the same values on the DISNET meshes at 10x the solve time).

**Chains** (latency only): what lies in sequence, the bands a row of the output passes through back to
the image, each waiting for its whole input and the radios moving rows between them, is bounded by
agents/chain_bound.py; the latency bound is the larger of the two (and of the propagation floor).

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
from dataclasses import dataclass, replace

import numpy as np
from scipy.sparse import coo_matrix

from agents.base import CutOff, PlannerError
from agents.certified_lp import certified_minimum
from agents.chain_bound import ChainFacts, chain_latency_bound
from agents.group_facts import GroupFacts, group_facts
from env.cost_model import CostModel, Objective
from env.snapshot import Snapshot
from runtime.graph import LayerGraph

BITS = 8.0
SLOWEST = 1e-4  # what the bound raises crawling devices and links to (_instance)


@dataclass(frozen=True)
class _Instance:
    """One snapshot as the relaxation sees it: devices, directed arcs and their seconds per byte."""

    devices: tuple[str, ...]
    can_compute: np.ndarray  # bool per device: available, at a measured speed above 0
    work_rate: np.ndarray  # work units per second per device at its measured speed (0 when down)
    arcs: list[tuple[int, int]]  # directed (from, to) over links that carry data
    arc_spb: np.ndarray  # seconds per byte of each arc
    arc_latency: np.ndarray  # propagation seconds of each arc
    source: int
    sink: int


def _instance(snapshot: Snapshot, model: CostModel) -> _Instance:
    """The snapshot's devices and arcs at their measured speeds and rates."""
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
        names,
        rate > 0,
        rate,
        arcs,
        np.array(spb),
        np.array(latency),
        index[snapshot.source],
        index[snapshot.sink],
    )


def _raised(inst: _Instance, facts: GroupFacts) -> _Instance:
    """``inst`` as the relaxations see it: crawling devices and links raised.

    A plan's cost only falls when something runs faster (the cost model's replay keeps each device's and
    radio's order), so a bound on a faster instance holds for the snapshot's; raising what crawls keeps
    the LPs well scaled (HiGHS ran for minutes on a device or link 1e-5 of the rest, and its certificate
    from inexact duals degrades before that). What is raised must not matter, or the bound falls with it:

    - a device, to the speed at which it would compute the whole model alone in ``1 / SLOWEST`` times the
      best single-device latency (``_single_device_latency``, memory aside): a device raised there does at
      most ``SLOWEST`` of the model in the time any better plan takes. A floor from the fastest device
      instead raised every other device 1e8-fold beside one 1e12 times the rest, and one from the median
      device left a majority of crawling devices unraised (the bound fell to 0.002 s);
    - a link, to ``SLOWEST`` of the median link's rate (every link is two arcs of the same seconds per
      byte, so the arcs' median is the links').
    """
    if inst.arc_spb.size:
        slowest_spb = np.sort(inst.arc_spb)[(inst.arc_spb.size - 1) // 2] / SLOWEST  # the median rate's
        inst = replace(inst, arc_spb=np.minimum(inst.arc_spb, slowest_spb))
    floor = SLOWEST * float(facts.work.sum()) / _single_device_latency(inst, facts)
    return replace(inst, work_rate=np.where(inst.can_compute, np.maximum(inst.work_rate, floor), 0.0))


def _single_device_latency(inst: _Instance, facts: GroupFacts) -> float:
    """The least, over devices that compute, of the model's work at the device's speed plus the image's and
    the output's seconds over the least routes to and from it (memory aside; infinite if none is reached):
    the scale of a good plan's latency."""
    spb = _least_routes(inst, inst.arc_spb)
    with np.errstate(divide="ignore"):
        alone = float(facts.work.sum()) / inst.work_rate
    alone = alone + facts.nbytes[0] * spb[inst.source] + facts.nbytes[-1] * spb[:, inst.sink]
    return float(np.min(alone[inst.can_compute], initial=np.inf))


def check_servable(snapshot: Snapshot, graph: LayerGraph, model: CostModel) -> None:
    """Raise ``PlannerError`` naming why no plan can serve this snapshot, if none can."""
    facts = group_facts(graph, None if model.profile is None else model.profile.unit_seconds)
    inst = _instance(snapshot, model)
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
        raise CutOff(
            f"source {snapshot.source!r} is cut off: no available device is reachable from it over links "
            "that carry data"
        )
    if not workers & from_source & to_sink:
        raise CutOff(
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


def lower_bound(
    snapshot: Snapshot,
    graph: LayerGraph,
    objective: Objective,
    model: CostModel,
    *,
    release: bool = True,
    chains: bool = True,
) -> float:
    """A value <= ``objective`` of every plan for ``graph`` under ``snapshot`` (module docstring);
    ``release=False`` leaves out the image-release rows, ``chains=False`` the chain bound of
    agents/chain_bound.py (to show what each adds).

    Raises ``PlannerError`` when no plan can serve the snapshot.
    """
    check_servable(snapshot, graph, model)
    facts = group_facts(graph, None if model.profile is None else model.profile.unit_seconds)
    inst = _raised(_instance(snapshot, model), facts)
    latency = energy = 0.0
    if objective.kind in ("latency", "weighted"):
        latency = max(_solve(_Relaxation(inst, facts, release=release), "latency"), _propagation_floor(inst))
        if chains:
            latency = max(latency, _chain_bound(snapshot, inst, facts, graph))
    if objective.kind == "energy" or (objective.kind == "weighted" and objective.energy_weight > 0):
        energy = _solve(_Relaxation(inst, facts, power=_powers(snapshot)), "energy")
    if objective.kind == "latency":
        return latency
    if objective.kind == "energy":
        return energy
    return latency + objective.energy_weight * energy


def chain_bound(snapshot: Snapshot, graph: LayerGraph, model: CostModel) -> float:
    """The latency bound of agents/chain_bound.py alone, for this snapshot."""
    facts = group_facts(graph, None if model.profile is None else model.profile.unit_seconds)
    return _chain_bound(snapshot, _raised(_instance(snapshot, model), facts), facts, graph)


def _chain_bound(snapshot: Snapshot, inst: _Instance, facts: GroupFacts, graph: LayerGraph) -> float:
    n_dev = len(inst.devices)
    spb, latency = np.full(n_dev, np.inf), np.full(n_dev, np.inf)
    for (a, _), seconds, lat in zip(inst.arcs, inst.arc_spb, inst.arc_latency, strict=True):
        spb[a], latency[a] = min(spb[a], seconds), min(latency[a], lat)
    latency[np.isinf(latency)] = 0.0  # a device without links sends nothing: its latency is never counted
    memory = [snapshot.spec.devices[d].memory_mb for d in inst.devices]
    fits = np.array([[mb is None or nbytes <= mb * 1e6 for nbytes in facts.param_bytes] for mb in memory])
    route_spb, route_latency = _least_routes(inst, inst.arc_spb), _least_routes(inst, inst.arc_latency)
    first = [b for a, b in inst.arcs if a == inst.source]  # the source's neighbours
    relay_spb, relay_latency = (
        np.min(r[first], axis=0) if first else np.full(n_dev, np.inf) for r in (route_spb, route_latency)
    )
    facts_of_chains = ChainFacts(
        inst.work_rate,
        spb,
        latency,
        fits,
        relay_spb,
        relay_latency,
        route_spb[:, inst.sink],
        route_latency[:, inst.sink],
        inst.source,
        inst.sink,
    )
    return chain_latency_bound(graph, facts, facts_of_chains)


def _least_routes(inst: _Instance, weight: np.ndarray) -> np.ndarray:
    """(devices, devices): the least sum of ``weight`` (one value per arc) over routes from one device to
    another (0 to itself, infinite where no route leads), Floyd-Warshall."""
    n_dev = len(inst.devices)
    least = np.full((n_dev, n_dev), np.inf)
    np.fill_diagonal(least, 0.0)
    for (a, b), w in zip(inst.arcs, weight, strict=True):
        least[a, b] = min(least[a, b], w)
    for k in range(n_dev):
        least = np.minimum(least, least[:, k : k + 1] + least[k : k + 1, :])
    return least


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
    return max(0.0, lp.unit * certified_minimum(a_ub, b_ub, c, bounds, what)[0])


class _Relaxation:
    """The LP of the module docstring, over fractions of rows.

    ``X[d, g]``: the fraction of group ``g``'s output rows device ``d`` computes. Rows of boundary ``b``
    reach a device ``t`` along paths: ``P[b, t, a]`` is the fraction of them that device ``t`` gets over
    arc ``a``, a flow that starts where the rows are produced (the source for the input, a device that
    computed them otherwise) and whose net inflow at ``t`` is what ``t`` holds beyond its own rows, so rows
    cannot come from nowhere (a path, not a cycle). ``L[a, b]``: distinct rows of boundary ``b`` over arc
    ``a``, at least every destination's flow on it (rows sent once may serve several destinations, as a
    relay's do). For latency (no ``power``) column 0 is ``T``; for energy, ``power`` prices seconds of
    compute, sending and receiving. With ``release`` (latency only), ``I[d, g]`` for each helper (a device
    other than the source that can compute): its image-explained rows of the module docstring.
    """

    def __init__(
        self,
        inst: _Instance,
        facts: GroupFacts,
        power: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        release: bool = False,
    ):
        self.inst, self.facts, self.power = inst, facts, power
        n_dev, n_groups, n_arcs = len(inst.devices), len(facts.work), len(inst.arcs)
        self.n_groups, self.n_bounds, self.n_arcs = n_groups, n_groups + 1, n_arcs
        # destinations: devices that can compute, and the sink
        self.targets = [d for d in range(n_dev) if inst.can_compute[d] or d == inst.sink]
        self.slot = {t: i for i, t in enumerate(self.targets)}
        self.x0 = 1 if power is None else 0  # column 0 is T when timed
        self.p0 = self.x0 + n_dev * n_groups
        self.l0 = self.p0 + self.n_bounds * len(self.targets) * n_arcs
        self.n_vars = self.l0 + n_arcs * self.n_bounds
        # helpers: devices other than the source that can compute; I columns (latency LP with release only)
        self.helpers = (
            [d for d in range(n_dev) if inst.can_compute[d] and d != inst.source] if release else []
        )
        self.i0 = self.n_vars
        self.n_vars += len(self.helpers) * n_groups
        self.into = [[a for a, (_, v) in enumerate(inst.arcs) if v == d] for d in range(n_dev)]
        self.out = [[a for a, (u, _) in enumerate(inst.arcs) if u == d] for d in range(n_dev)]
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.rhs: list[float] = []
        # the objective's unit (seconds or joules), so that the LP's coefficients are at most 1: solvers'
        # tolerances are absolute, and a model of microseconds would sit below them
        self.unit = float(
            max(self._compute_seconds().max(initial=0.0), self._send_seconds().max(initial=0.0))
        )
        if power is not None:
            self.unit = float(self._costs().max(initial=0.0))
        self.unit = self.unit if self.unit > 0 else 1.0

    def _compute_seconds(self) -> np.ndarray:
        """(devices, groups): seconds to compute a whole group on a device (0 on a device that is down: it
        computes nothing)."""
        rate = self.inst.work_rate[:, None]
        work = np.broadcast_to(self.facts.work[None, :], (rate.size, self.facts.work.size))
        return np.divide(work, rate, out=np.zeros_like(work), where=rate > 0)

    def _send_seconds(self) -> np.ndarray:
        """(arcs, boundaries): seconds to send a whole boundary tensor over an arc."""
        return self.inst.arc_spb[:, None] * self.facts.nbytes[None, :]

    def _costs(self) -> np.ndarray:
        """Joules of every X then every load column (energy objective), unscaled."""
        compute_w, transmit_w, receive_w = self.power
        arcs = np.array(self.inst.arcs, dtype=np.int64).reshape(-1, 2)
        radio_w = transmit_w[arcs[:, 0]] + receive_w[arcs[:, 1]]
        return np.concatenate(
            [
                (self._compute_seconds() * compute_w[:, None]).ravel(),
                (self._send_seconds() * radio_w[:, None]).ravel(),
            ]
        )

    def x(self, d: int, g: int) -> int:
        return self.x0 + d * self.n_groups + g

    def p(self, b: int, t: int, a: int) -> int:
        return self.p0 + (b * len(self.targets) + self.slot[t]) * self.n_arcs + a

    def load(self, a: int, b: int) -> int:
        return self.l0 + a * self.n_bounds + b

    def image_explained(self, k: int, g: int) -> int:
        """Column of ``I[d, g]`` for the ``k``-th helper ``d``."""
        return self.i0 + k * self.n_groups + g

    def _row(self, terms: list[tuple[int, float]], rhs: float) -> None:
        r = len(self.rhs)
        for col, val in terms:
            self.rows.append(r)
            self.cols.append(col)
            self.vals.append(val)
        self.rhs.append(rhs)

    def _net_inflow(self, b: int, t: int, u: int, scale: float) -> list[tuple[int, float]]:
        """``scale`` x (flow of boundary ``b``'s rows bound for ``t`` into ``u`` minus out of ``u``)."""
        return [(self.p(b, t, a), scale) for a in self.into[u]] + [
            (self.p(b, t, a), -scale) for a in self.out[u]
        ]

    def _produced(self, u: int, b: int, scale: float) -> tuple[list[tuple[int, float]], float]:
        """``scale`` x (rows of boundary ``b`` device ``u`` produces) as (terms, constant)."""
        if b == 0:
            return [], scale if u == self.inst.source else 0.0
        return [(self.x(u, b - 1), scale)], 0.0

    def _held_at_least(self, t: int, b: int, amount: list[tuple[int, float]], rhs: float) -> None:
        """Row: ``amount`` <= rows of boundary ``b`` device ``t`` holds (produced plus net inflow), with
        ``amount`` given as terms minus ``rhs``."""
        produced, constant = self._produced(t, b, -1.0)
        self._row([*amount, *produced, *self._net_inflow(b, t, t, -1.0)], rhs - constant)

    def arrays(self):
        inst, facts = self.inst, self.facts
        n_dev = len(inst.devices)
        for t in self.targets:
            for b in range(self.n_bounds):
                for u in range(n_dev):  # paths to t: what leaves u is what reached it or what it produced
                    if u != t:
                        produced, constant = self._produced(u, b, -1.0)
                        self._row([*self._net_inflow(b, t, u, -1.0), *produced], -constant)
                for a in range(self.n_arcs):
                    self._row([(self.p(b, t, a), 1.0), (self.load(a, b), -1.0)], 0.0)
            if not inst.can_compute[t]:
                continue
            for g in range(self.n_groups):  # computes only from rows it holds
                if not (g == 0 and t == inst.source):
                    self._held_at_least(t, g, [(self.x(t, g), 1.0 / facts.reach[g])], 0.0)
        for g in range(self.n_groups):  # every needed row of every group is computed
            self._row([(self.x(d, g), -1.0) for d in range(n_dev)], -facts.needed[g])
        self._held_at_least(inst.sink, self.n_groups, [], -1.0)  # the sink holds the whole output
        if self.power is None:
            self._capacity_rows()
            self._release_rows()
        a_ub = coo_matrix((self.vals, (self.rows, self.cols)), shape=(len(self.rhs), self.n_vars)).tocsr()
        bounds = np.zeros((self.n_vars, 2))
        bounds[:, 1] = 1.0
        if self.power is None:
            bounds[0, 1] = np.inf
        for d in np.flatnonzero(~inst.can_compute):
            bounds[self.x(d, 0) : self.x(d, self.n_groups - 1) + 1, 1] = 0.0
        return a_ub, np.array(self.rhs), self._objective(), bounds

    def _capacity_rows(self) -> None:
        """Each device computes, and each radio sends, for at most ``T`` seconds (in ``unit``s)."""
        compute, send = self._compute_seconds() / self.unit, self._send_seconds() / self.unit
        for d in range(len(self.inst.devices)):
            if self.inst.can_compute[d]:
                self._row([(0, -1.0), *((self.x(d, g), compute[d, g]) for g in range(self.n_groups))], 0.0)
            terms = [(self.load(a, b), send[a, b]) for a in self.out[d] for b in range(self.n_bounds)]
            if terms:
                self._row([(0, -1.0), *terms], 0.0)

    def _release_rows(self) -> None:
        """The image-release rows of the module docstring: per helper ``d`` the split of its rows into
        image-explained ``I`` and the rest ``X - I``, and the divisible-load rows over subsets of helpers
        (all, the fastest k, the slowest k, each alone: valid for any subset, these are the ones kept)."""
        inst, facts, reach = self.inst, self.facts, self.facts.reach
        out = [a for a, (u, _) in enumerate(inst.arcs) if u == inst.source]
        if not self.helpers or not out:
            return  # no device can receive the image: no row to add
        for k, d in enumerate(self.helpers):
            i = [self.image_explained(k, g) for g in range(self.n_groups)]
            self._row([(i[0], 1.0), *self._net_inflow(0, d, d, -reach[0])], 0.0)
            self._row([(self.x(d, 0), 1.0), (i[0], -1.0)], 0.0)
            for g in range(self.n_groups):
                self._row([(i[g], 1.0), (self.x(d, g), -1.0)], 0.0)
                if g == 0:
                    continue
                self._row([(i[g], 1.0), (i[g - 1], -reach[g])], 0.0)
                rest = [
                    (self.x(d, g), 1.0),
                    (i[g], -1.0),
                    (self.x(d, g - 1), -reach[g]),
                    (i[g - 1], reach[g]),
                ]
                self._row([*rest, *self._net_inflow(g, d, d, -reach[g])], 0.0)
        # a: image-explained work per second of the source's radio (work per unit of image rows / seconds
        # to send the whole image over the source's fastest link)
        rate = inst.work_rate
        a = float(facts.work @ np.cumprod(reach)) / (facts.nbytes[0] * float(np.min(inst.arc_spb[out])))
        ranked = sorted(range(len(self.helpers)), key=lambda k: -rate[self.helpers[k]])
        n = len(ranked)
        subsets = [ranked[:m] for m in range(1, n + 1)] + [ranked[m:] for m in range(1, n)]
        subsets += [[k] for k in ranked[1:]] if n > 1 else []
        for subset in subsets:
            reached = 1.0 - math.prod(a / (a + rate[self.helpers[k]]) for k in subset)
            terms = [
                (self.image_explained(k, g), facts.work[g] / (a * self.unit))
                for k in subset
                for g in range(self.n_groups)
            ]
            self._row([*terms, (0, -reached)], 0.0)

    def _objective(self) -> np.ndarray:
        c = np.zeros(self.n_vars)
        if self.power is None:
            c[0] = 1.0
            return c
        # X columns are laid out device by device, group by group; loads arc by arc, boundary by boundary
        n_x = len(self.inst.devices) * self.n_groups
        costs = self._costs() / self.unit
        c[self.x0 : self.x0 + n_x] = costs[:n_x]
        c[self.l0 :] = costs[n_x:]
        return c
