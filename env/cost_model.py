"""Cost model: the predicted latency, timeline and energy of one request under a plan.

It replays the plan's layout (runtime/layout.py, the same tasks and transfers the workers execute) as a
small discrete-event simulation with exactly the runtime's semantics (design.md, "Execution semantics"):

- a device computes one task at a time, in the order its tasks become ready; a task is ready when every
  piece of its input band has arrived; compute time = FLOPs / (GFLOP/s x speed factor), or the profiled
  per-unit time scaled the same way;
- a device's radio sends one hop at a time, first come first served; a hop of B bytes starting at t holds
  the radio for ``conditions.transfer_time(a, b, B, t)`` (trace integration in the live world, constant
  measured bandwidth in a planner's snapshot) and arrives one link latency later;
- routes without a direct link are store-and-forward through relay devices (``spec.route``);
- latency = when the sink holds the whole output, counted from ``t0`` when the source holds the input;
- energy = compute, transmit and receive seconds times the device's powers, plus idle power while a
  participating device waits inside the makespan.

``conditions`` is a ``Snapshot`` (what a planner sees: constant measured bandwidths and speeds) or a
``NetworkState`` (the world: trace integration); both hand the model their ``rates`` as arrays. Link
latencies come from the cluster spec.

Speed: a plan's skeleton (its tasks, routes and hops, independent of the network's state) is compiled
once per plan into flat arrays, and the replay runs in one numba kernel (``_replay``) that integrates the
world's traces with runtime/schedule.py's routine, compiled. ``predict`` is the thin wrapper that turns
the kernel's per-device seconds into a ``Prediction``; ``cost`` skips that for callers that only need
latency and energy (the env, per request).

The kernels that Python calls are compiled with ``cache=True`` (first use in a fresh checkout compiles for a
few seconds, later processes load them) and always receive the same argument types (contiguous int64 and
float64 arrays), so each has one compiled signature: processes that compile at the same time (vectorised
envs on a cold cache) then write identical cache entries. Helpers are compiled into their callers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from env.band_tables import BandTables
from env.completion import split_rows
from env.network import Rates, _carry_seconds, _locate, _segment_at
from env.plan_arrays import PlanArrays
from runtime.graph import LayerGraph
from runtime.layout import band_transfers
from runtime.plan import Plan
from runtime.schedule import BYTES_PER_MBIT
from runtime.spec import ClusterSpec


@dataclass(frozen=True)
class DeviceTime:
    """Seconds a device spends in each state during one request."""

    compute_s: float = 0.0
    send_s: float = 0.0
    recv_s: float = 0.0
    idle_s: float = 0.0


@dataclass(frozen=True)
class Prediction:
    latency_s: float
    energy_j: float
    device_time: dict[str, DeviceTime]
    device_energy_j: dict[str, float]
    link_bytes: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class Cost:
    """Latency and energy of one request, without the per-device detail of a ``Prediction``."""

    latency_s: float
    energy_j: float


@dataclass(frozen=True)
class Objective:
    """What a planner minimises: latency (s), energy (J), or latency + ``energy_weight`` x energy."""

    kind: str = "latency"
    energy_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("latency", "energy", "weighted"):
            raise ValueError(f"objective kind must be latency, energy or weighted, not {self.kind!r}")
        if self.energy_weight < 0:
            raise ValueError("energy_weight must be >= 0")

    def score(self, prediction: Prediction | Cost) -> float:
        if self.kind == "latency":
            return prediction.latency_s
        if self.kind == "energy":
            return prediction.energy_j
        return prediction.latency_s + self.energy_weight * prediction.energy_j


@dataclass(frozen=True)
class Profile:
    """Measured per-unit compute seconds on a reference device of ``reference_gflops``.

    Another device's time for a unit is the reference time scaled by ``reference_gflops / gflops``; a
    band's share of a unit is the fraction of the unit's output rows it computes (halo included).
    """

    model: str
    reference_gflops: float
    unit_seconds: tuple[float, ...]
    host: str = ""  # the machine it was measured on (env/profiles.py reads and validates profile files)
    probe_cpu_s: float | None = None  # the host's probe convolution CPU seconds then (env/profiles.py)


@dataclass(frozen=True)
class _Skeleton:
    """Everything about a plan that does not depend on the network's state, as the kernel's flat arrays
    (cached per plan). Devices are indices into ``spec.devices``; links into ``spec.links``.

    Tasks are the layout's bands in stage order; row ``T`` (the task count) of the two CSR tables is the
    source: ``send_ptr``/``send_route`` list the routes a task (or the source) sends when done,
    ``local_ptr``/``local_task`` the tasks it feeds on the same device (-1: the sink). Route ``r`` has hops
    ``route_ptr[r]..route_ptr[r+1]-1``, carries ``route_bytes[r]`` and feeds task ``route_task[r]`` (-1:
    the sink).
    """

    devices: tuple[str, ...]  # participating devices (source, sink, workers, relays), sorted by id
    device_index: np.ndarray  # their indices into spec.devices
    task_device: np.ndarray
    task_seconds: np.ndarray  # at nominal speed
    task_inputs: np.ndarray  # pieces a task waits for (local ones included)
    send_ptr: np.ndarray
    send_route: np.ndarray
    local_ptr: np.ndarray
    local_task: np.ndarray
    route_ptr: np.ndarray
    route_bytes: np.ndarray
    route_task: np.ndarray
    hop_src: np.ndarray
    hop_dst: np.ndarray
    hop_link: np.ndarray
    hop_latency: np.ndarray
    sink_inputs: int | np.ndarray  # pieces the sink waits for (per request of a merged skeleton)
    link_matrix: np.ndarray = field(repr=False)  # bytes sent per directed (from, to) device pair

    def link_bytes(self, names: tuple[str, ...]) -> dict[tuple[str, str], int]:
        """Bytes per directed hop ``(from, to)`` that carries any (device ids ``names``)."""
        a, b = np.nonzero(self.link_matrix)
        return {(names[i], names[j]): int(self.link_matrix[i, j]) for i, j in zip(a, b, strict=True)}


def _plan_key(plan: Plan) -> tuple:
    """A Plan's content as one flat tuple: source, sink, then per stage its bounds, assignment count and
    (device, share) pairs. (Cheaper than ``PlanArrays.of(plan).key`` for a plan seen before; a plan met in
    both forms is simply built once per form.)"""
    key = [plan.source, plan.sink]
    for st in plan.stages:
        key += (st.start, st.end, len(st.assignments))
        for a in st.assignments:
            key += (a.device, a.share)
    return tuple(key)


class CostModel:
    """Predicts what the runtime will measure for a plan."""

    # cache bound: a few optimiser decisions' plans (~400-2,000 each); a serving process lives for days,
    # so the cache is cleared when full rather than left to grow (~10 MB at most)
    SKELETONS_KEPT = 4096

    def __init__(self, graph: LayerGraph, spec: ClusterSpec, profile: Profile | None = None):
        if profile is not None and len(profile.unit_seconds) != len(graph.units):
            raise ValueError(
                f"profile of {profile.model} has {len(profile.unit_seconds)} units, "
                f"the graph has {len(graph.units)}"
            )
        self.graph = graph
        self.spec = spec
        self.profile = profile
        self._skeletons: dict[tuple, _Skeleton] = {}  # by PlanArrays.key or _plan_key
        self._recent: dict[int, tuple[Plan, _Skeleton]] = {}
        self._tables = BandTables(graph, profile.unit_seconds if profile is not None else None)
        self._segmentations: dict[tuple[tuple[int, int], ...], tuple[np.ndarray, ...]] = {}
        names = spec.device_ids
        self._names = names  # the device order of every array
        self._device = {d: i for i, d in enumerate(names)}
        self._by_name = np.argsort(np.array(names, dtype=object)).astype(np.int64)  # sorted-id order
        self._routes = self._route_table()
        powers = [spec.devices[d].power for d in names]
        self._power = tuple(
            np.array([getattr(p, name) for p in powers], dtype=np.float64)
            for name in ("compute_w", "transmit_w", "receive_w", "idle_w")
        )
        # a band's seconds at nominal speed = its work (FLOPs, or the profile's reference seconds) / this
        gflops = np.array([spec.devices[d].gflops for d in names], dtype=np.float64)
        self._work_rate = gflops * 1e9 if profile is None else gflops / profile.reference_gflops
        self._checked_spec = spec  # the last conditions' spec known to share this one's devices and links

    # ---- static part ---------------------------------------------------------------------------
    def _route_table(self) -> tuple[np.ndarray, ...]:
        """Hops of ``spec.route(a, b)`` for every device pair ``a * D + b`` as arrays: the pair's hops are
        ``lo[p]..hi[p]-1`` (-1, -1: no route), each with from, to, link index and latency."""
        spec, index = self.spec, self._device
        link = {}
        for i, ln in enumerate(spec.links):
            link[(ln.a, ln.b)] = link[(ln.b, ln.a)] = i
        lo, hi, hops = [], [], []
        for a in self._names:
            for b in self._names:
                if a != b and not spec.reachable(a, b):
                    lo.append(-1)
                    hi.append(-1)
                    continue
                lo.append(len(hops))
                path = spec.route(a, b)
                hops.extend(
                    (index[u], index[v], link[(u, v)], spec.link(u, v).latency_s)
                    for u, v in zip(path[:-1], path[1:], strict=True)
                )
                hi.append(len(hops))
        hop = np.array(hops, dtype=np.float64).reshape(len(hops), 4)
        return (
            np.array(lo, dtype=np.int64),
            np.array(hi, dtype=np.int64),
            hop[:, 0].astype(np.int64),
            hop[:, 1].astype(np.int64),
            hop[:, 2].astype(np.int64),
            hop[:, 3].copy(),
        )

    def skeleton(self, plan: Plan | PlanArrays) -> _Skeleton:
        """The plan's tasks, routes and hops (``runtime.layout``'s rules, compiled), cached per plan.

        The cache is keyed by the plan's content (``PlanArrays.key``, or ``_plan_key`` for a Plan: flat
        tuples of numbers and strings, which the garbage collector stops tracking) rather than by Plan
        objects (dozens of dataclasses per plan that every full collection would walk). The last few plans
        are also found by identity: a caller asks several times about the plan object it just built.
        """
        hit = self._recent.get(id(plan))
        if hit is not None and hit[0] is plan:
            return hit[1]
        key = self._checked(plan).key if isinstance(plan, PlanArrays) else _plan_key(plan)
        skeleton = self._skeletons.get(key)
        if skeleton is None:
            skeleton = self._build(
                plan if isinstance(plan, PlanArrays) else PlanArrays.of(plan, self._names, self._device)
            )
            if len(self._skeletons) >= self.SKELETONS_KEPT:
                self._skeletons.clear()
            self._skeletons[key] = skeleton
        if len(self._recent) >= 8:
            self._recent.clear()
        self._recent[id(plan)] = (plan, skeleton)  # holds the plan, so its id is not reused meanwhile
        return skeleton

    def _checked(self, plan: PlanArrays) -> PlanArrays:
        if plan.names is not self._names and plan.names != self._names:
            raise ValueError(f"plan arrays over devices {plan.names} do not match cluster {self.spec.name!r}")
        return plan

    def _stage_arrays(self, stages: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per stage its output extent and band-table offset, and the bytes per row of each stage's input
        and of the output: the same for every plan of a segmentation, so kept per segmentation."""
        arrays = self._segmentations.get(stages)
        if arrays is None:
            graph = self.graph
            if len(self._segmentations) >= self.SKELETONS_KEPT:
                self._segmentations.clear()
            arrays = self._segmentations[stages] = (
                np.array([graph.extent(end) for _, end in stages], dtype=np.int64),
                np.array([self._tables.offset(start, end) for start, end in stages], dtype=np.int64),
                np.array(
                    [graph.row_bytes(start) for start, _ in stages] + [graph.row_bytes(len(graph.units))],
                    dtype=np.int64,
                ),
            )
        return arrays

    def _build(self, plan: PlanArrays) -> _Skeleton:
        extents, offsets, row_bytes = self._stage_arrays(plan.stages)
        stage_ptr, band_device, out_lo, out_hi, in_lo, in_hi, seconds, new_sizes = _plan_tasks(
            plan.ptr, plan.devices, plan.shares, extents, offsets, *self._tables.columns, self._work_rate
        )
        if new_sizes:  # a flat stage's band size met for the first time: ask the graph, keep it
            for i in np.flatnonzero(np.isnan(seconds)).tolist():
                start, end = plan.stages[int(np.searchsorted(stage_ptr, i, side="right")) - 1]
                work = self._tables.size_work(start, end, int(out_hi[i] - out_lo[i]))
                seconds[i] = work / self._work_rate[band_device[i]]
        arrays = _compile_skeleton(
            len(self._names),
            stage_ptr,
            band_device,
            out_lo,
            out_hi,
            in_lo,
            in_hi,
            row_bytes,
            plan.source,
            plan.sink,
            *self._routes,
        )
        missing = arrays[-1]
        if missing >= 0:  # a transfer between devices without a route: the spec's error
            n = len(self._names)
            self.spec.route(self._names[missing // n], self._names[missing % n])
        *arrays, sink_inputs, used, _ = arrays
        order = self._by_name[used[self._by_name]]
        return _Skeleton(
            tuple(self._names[i] for i in order),
            order,
            band_device,
            seconds,
            *arrays[:12],
            sink_inputs,
            arrays[12],
        )

    # ---- simulation ----------------------------------------------------------------------------
    def _run(
        self, plan: Plan | PlanArrays, conditions, t0: float
    ) -> tuple[_Skeleton, float, float, np.ndarray]:
        """(skeleton, latency, energy, per-device seconds: compute, send, recv, idle, energy rows)."""
        sk = self.skeleton(plan)
        finishes, energy, out = self.replay(sk, conditions, np.array([float(t0)]))
        if math.isnan(finishes[0]):
            raise RuntimeError("cost model: the sink never received the whole output")
        return sk, finishes[0] - t0, energy, out

    def replay(self, sk: _Skeleton, conditions, starts: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """Replay a skeleton whose requests' sources hold their inputs at ``starts`` (one request for a
        plan's skeleton, several for one merged by ``env.contention``, sharing devices and radios):
        (each request's finish time, NaN if its sink never completes; energy; per-device rows)."""
        rates: Rates = conditions.rates
        spec = conditions.spec
        if spec is not self._checked_spec:
            if spec.device_ids != self.spec.device_ids or spec.links != self.spec.links:
                raise ValueError(
                    f"conditions for cluster {spec.name!r} do not match the cost model's {self.spec.name!r}"
                )
            self._checked_spec = spec
        links, speeds = rates.links, rates.speeds
        out = np.zeros((5, len(self._names)))
        finishes = np.full(starts.size, np.nan)
        energy = _replay(
            np.ascontiguousarray(starts, dtype=np.float64),
            sk.task_device,
            sk.task_seconds,
            sk.task_inputs,
            sk.send_ptr,
            sk.send_route,
            sk.local_ptr,
            sk.local_task,
            sk.route_ptr,
            sk.route_bytes,
            sk.route_task,
            sk.hop_src,
            sk.hop_dst,
            sk.hop_link,
            sk.hop_latency,
            np.atleast_1d(np.asarray(sk.sink_inputs, dtype=np.int64)),
            rates.constant,
            rates.link_mbps,
            rates.speed,
            links.times,
            links.rate,
            links.cum,
            links.lo,
            links.hi,
            links.duration,
            links.period,
            links.max_rate,
            speeds.times,
            speeds.rate,
            speeds.lo,
            speeds.hi,
            speeds.duration,
            sk.device_index,
            *self._power,
            out,
            finishes,
        )
        return finishes, energy, out

    def predict(self, plan: Plan | PlanArrays, conditions, t0: float = 0.0) -> Prediction:
        """Simulate one request that starts at ``t0`` with the input on the source."""
        sk, makespan, energy, out = self._run(plan, conditions, t0)
        per_device = out[:, sk.device_index].T.tolist()
        times = {d: DeviceTime(*row[:4]) for d, row in zip(sk.devices, per_device, strict=True)}
        energies = {d: row[4] for d, row in zip(sk.devices, per_device, strict=True)}
        return Prediction(makespan, energy, times, energies, sk.link_bytes(self._names))

    def cost(self, plan: Plan | PlanArrays, conditions, t0: float = 0.0) -> Cost:
        """Latency and energy of ``predict`` without the per-device breakdown (the env's per-request call)."""
        _, makespan, energy, _ = self._run(plan, conditions, t0)
        return Cost(makespan, energy)

    def latency(self, plan: Plan | PlanArrays, conditions, t0: float = 0.0) -> float:
        return self._run(plan, conditions, t0)[1]


# ---- the compiled skeleton and replay ----------------------------------------------------------

_band_transfers = njit(band_transfers)  # the layout's transfer rule, compiled (into _compile_skeleton)


@njit(cache=True)
def _plan_tasks(
    ptr, devices, shares, extents, offsets, in_first, in_end, work_first, work_end, work_size, rate
):
    """``Plan.bands`` over flat arrays (stage ``s``'s assignments are ``ptr[s]..ptr[s+1]-1``): each
    stage's extent split by ``split_rows`` (= ``split_by_shares``) into consecutive row ranges in listed
    order, empty ones dropped; each band's input rows and seconds at nominal speed read from the stage's
    ``BandTables`` rows at ``offsets[s]`` (work / ``rate`` of its device). Returns the bands' stage_ptr,
    device, out_lo, out_hi, in_lo, in_hi and seconds, and how many seconds are NaN (a flat stage's band
    size the tables do not know yet)."""
    n_stages = extents.size
    stage_ptr = np.zeros(n_stages + 1, dtype=np.int64)
    band_device = np.empty(devices.size, dtype=np.int64)
    out_lo = np.empty(devices.size, dtype=np.int64)
    out_hi = np.empty(devices.size, dtype=np.int64)
    in_lo = np.empty(devices.size, dtype=np.int64)
    in_hi = np.empty(devices.size, dtype=np.int64)
    seconds = np.empty(devices.size)
    n, new_sizes = 0, 0
    for s in range(n_stages):
        sizes = split_rows(extents[s], shares[ptr[s] : ptr[s + 1]])
        o, lo = offsets[s], 0
        for j in range(sizes.size):
            hi = lo + sizes[j]
            if hi > lo:
                d = devices[ptr[s] + j]
                band_device[n], out_lo[n], out_hi[n] = d, lo, hi
                in_lo[n], in_hi[n] = in_first[o + lo], in_end[o + hi]
                work = work_end[o + hi] - work_first[o + lo] + work_size[o + hi - lo]
                seconds[n] = work / rate[d]
                new_sizes += math.isnan(work)
                n += 1
            lo = hi
        stage_ptr[s + 1] = n
    return stage_ptr, band_device[:n], out_lo[:n], out_hi[:n], in_lo[:n], in_hi[:n], seconds[:n], new_sizes


@njit(cache=True)
def _compile_skeleton(
    n_dev,
    stage_ptr,
    band_device,
    out_lo,
    out_hi,
    in_lo,
    in_hi,
    row_bytes,
    source,
    sink,
    pair_lo,
    pair_hi,
    pair_src,
    pair_dst,
    pair_link,
    pair_latency,
):
    """A plan's ``_Skeleton`` arrays from its bands (``band_transfers``' inputs plus each band's device and
    the bytes per row of each stage's input and of the output): the CSR tables, routes and hops over the
    route table ``pair_*`` (pair ``a * D + b``). Returns them followed by the sink's input count, a mask of
    the participating devices and the first device pair without a route (-1: none)."""
    n_tasks = band_device.size
    n_stages = stage_ptr.size - 1
    cap = (stage_ptr[1] - stage_ptr[0]) + (stage_ptr[n_stages] - stage_ptr[n_stages - 1])  # source, sink
    for s in range(1, n_stages):
        cap += (stage_ptr[s] - stage_ptr[s - 1]) * (stage_ptr[s + 1] - stage_ptr[s])
    t_stage = np.empty(cap, dtype=np.int64)
    t_src = np.empty(cap, dtype=np.int64)
    t_dst = np.empty(cap, dtype=np.int64)
    t_lo = np.empty(cap, dtype=np.int64)
    t_hi = np.empty(cap, dtype=np.int64)
    n = _band_transfers(stage_ptr, out_lo, out_hi, in_lo, in_hi, t_stage, t_src, t_dst, t_lo, t_hi)
    inputs = np.zeros(n_tasks, dtype=np.int64)
    send_ptr = np.zeros(n_tasks + 3, dtype=np.int64)  # row x (the source: n_tasks) counts at x + 2
    local_ptr = np.zeros(n_tasks + 3, dtype=np.int64)
    used = np.zeros(n_dev, dtype=np.bool_)
    used[source] = used[sink] = True
    sink_inputs, n_routes, n_hops, missing = 0, 0, 0, -1
    for i in range(n):  # count
        q, r = t_src[i], t_dst[i]
        a = source if q < 0 else band_device[q]
        b = sink if r < 0 else band_device[r]
        sender = n_tasks if q < 0 else q
        used[a] = used[b] = True
        if r >= 0:
            inputs[r] += 1
        else:
            sink_inputs += 1
        if a == b:
            local_ptr[sender + 2] += 1
        else:
            send_ptr[sender + 2] += 1
            n_routes += 1
            if pair_lo[a * n_dev + b] < 0:
                missing = a * n_dev + b if missing < 0 else missing
            else:
                n_hops += pair_hi[a * n_dev + b] - pair_lo[a * n_dev + b]
    send_ptr = np.cumsum(send_ptr)  # row x fills from send_ptr[x + 1] on, which ends as its end
    local_ptr = np.cumsum(local_ptr)
    send_route = np.empty(n_routes, dtype=np.int64)
    local_task = np.empty(local_ptr[-1], dtype=np.int64)
    route_ptr = np.zeros(n_routes + 1, dtype=np.int64)
    route_bytes = np.empty(n_routes)
    route_task = np.empty(n_routes, dtype=np.int64)
    hop_src = np.empty(n_hops, dtype=np.int64)
    hop_dst = np.empty(n_hops, dtype=np.int64)
    hop_link = np.empty(n_hops, dtype=np.int64)
    hop_latency = np.empty(n_hops)
    link_matrix = np.zeros((n_dev, n_dev), dtype=np.int64)
    if missing >= 0:
        n = 0
    route, hop = 0, 0
    for i in range(n):  # fill, in transfer order
        q, r = t_src[i], t_dst[i]
        a = source if q < 0 else band_device[q]
        b = sink if r < 0 else band_device[r]
        sender = n_tasks if q < 0 else q
        if a == b:
            local_task[local_ptr[sender + 1]] = r
            local_ptr[sender + 1] += 1
            continue
        send_route[send_ptr[sender + 1]] = route
        send_ptr[sender + 1] += 1
        nbytes = (t_hi[i] - t_lo[i]) * row_bytes[t_stage[i]]
        for h in range(pair_lo[a * n_dev + b], pair_hi[a * n_dev + b]):
            hop_src[hop], hop_dst[hop] = pair_src[h], pair_dst[h]
            hop_link[hop], hop_latency[hop] = pair_link[h], pair_latency[h]
            link_matrix[pair_src[h], pair_dst[h]] += nbytes
            used[pair_src[h]] = used[pair_dst[h]] = True
            hop += 1
        route_bytes[route] = nbytes
        route_task[route] = r
        route += 1
        route_ptr[route] = hop
    return (
        inputs,
        send_ptr[:-1],
        send_route,
        local_ptr[:-1],
        local_task,
        route_ptr,
        route_bytes,
        route_task,
        hop_src,
        hop_dst,
        hop_link,
        hop_latency,
        link_matrix,
        sink_inputs,
        used,
        missing,
    )


@njit  # called only by _replay, whose cache holds it
def _push(heap_t, heap_s, heap_a, heap_b, n, t, seq, a, b):
    """Push event (t, seq) carrying (a, b) on a binary min-heap ordered by (time, seq); returns size."""
    i = n
    while i > 0:
        parent = (i - 1) // 2
        pt, ps = heap_t[parent], heap_s[parent]
        if pt < t or (pt == t and ps < seq):
            break
        heap_t[i], heap_s[i], heap_a[i], heap_b[i] = pt, ps, heap_a[parent], heap_b[parent]
        i = parent
    heap_t[i], heap_s[i], heap_a[i], heap_b[i] = t, seq, a, b
    return n + 1


@njit  # called only by _replay, whose cache holds it
def _pop(heap_t, heap_s, heap_a, heap_b, n):
    """Remove the smallest event; returns (time, a, b, new size)."""
    t, a, b = heap_t[0], heap_a[0], heap_b[0]
    n -= 1
    lt, ls, la, lb = heap_t[n], heap_s[n], heap_a[n], heap_b[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and (
            heap_t[c + 1] < heap_t[c] or (heap_t[c + 1] == heap_t[c] and heap_s[c + 1] < heap_s[c])
        ):
            c += 1
        if lt < heap_t[c] or (lt == heap_t[c] and ls < heap_s[c]):
            break
        heap_t[i], heap_s[i], heap_a[i], heap_b[i] = heap_t[c], heap_s[c], heap_a[c], heap_b[c]
        i = c
    if n > 0:
        heap_t[i], heap_s[i], heap_a[i], heap_b[i] = lt, ls, la, lb
    return t, a, b, n


@njit(cache=True)
def _replay(
    starts,
    task_device,
    task_seconds,
    task_inputs,
    send_ptr,
    send_route,
    local_ptr,
    local_task,
    route_ptr,
    route_bytes,
    route_task,
    hop_src,
    hop_dst,
    hop_link,
    hop_latency,
    sink_inputs,
    constant,
    link_mbps,
    speed,
    l_times,
    l_rate,
    l_cum,
    l_lo,
    l_hi,
    l_duration,
    l_period,
    l_max_rate,
    s_times,
    s_rate,
    s_lo,
    s_hi,
    s_duration,
    devices,
    compute_w,
    transmit_w,
    receive_w,
    idle_w,
    out,
    finishes,
):
    """Discrete-event replay of requests (module docstring) whose sources hold their inputs at ``starts``.
    Fills ``out`` rows compute, send, recv, idle and energy seconds/joules per device (idle and energy for
    the participating ``devices`` only, over the span from the first start to the last finish) and
    ``finishes`` (the time each request's sink holds its whole output; NaN if it never does), and returns
    the total energy.

    Request ``k``'s source is CSR row ``n_tasks + k`` and its sink is task ``-1 - k``. Events are
    source-ready (kind -2, b = request), task-ready (kind -1, b = task) and hop-ready (a = route, b = hop
    index) on one heap ordered by (time, sequence number), so simultaneous events keep the order in which
    they arose.
    """
    n_tasks = task_device.size
    n_dev = out.shape[1]
    n_req = starts.size
    t0 = starts.min()
    compute_free = np.full(n_dev, t0)
    radio_free = np.full(n_dev, t0)
    waiting = task_inputs.copy()
    ready_at = np.full(n_tasks, t0)
    cap = n_tasks + hop_src.size + n_req
    heap_t = np.empty(cap)
    heap_s = np.empty(cap, dtype=np.int64)
    heap_a = np.empty(cap, dtype=np.int64)
    heap_b = np.empty(cap, dtype=np.int64)
    n, seq = 0, 0
    sink_waiting = sink_inputs.copy()
    finishes[:] = starts
    for q in range(n_req):
        n = _push(heap_t, heap_s, heap_a, heap_b, n, starts[q], seq, -2, q)
        seq += 1
    # arrivals at a_at to handle before the next event: the local hand-overs local_task[a_lo:a_hi], or
    # (a_lo == a_hi == -1) one route's receiving task a_task
    a_lo, a_hi, a_at, a_task = 0, 0, t0, 0
    while True:
        for k in range(a_lo, a_hi) if a_lo >= 0 else range(1):
            task = local_task[k] if a_lo >= 0 else a_task
            if task < 0:
                q = -1 - task
                sink_waiting[q] -= 1
                finishes[q] = a_at if a_at > finishes[q] else finishes[q]
                continue
            waiting[task] -= 1
            if a_at > ready_at[task]:
                ready_at[task] = a_at
            if waiting[task] == 0:
                n = _push(heap_t, heap_s, heap_a, heap_b, n, ready_at[task], seq, -1, task)
                seq += 1
        if n == 0:
            break
        at, a, b, n = _pop(heap_t, heap_s, heap_a, heap_b, n)
        if a == -2:  # request b's source holds its input
            for k in range(send_ptr[n_tasks + b], send_ptr[n_tasks + b + 1]):
                r = send_route[k]
                n = _push(heap_t, heap_s, heap_a, heap_b, n, at, seq, r, route_ptr[r])
                seq += 1
            a_lo, a_hi, a_at = local_ptr[n_tasks + b], local_ptr[n_tasks + b + 1], at
            continue
        if a == -1:  # task b is ready
            d = task_device[b]
            start = at if at > compute_free[d] else compute_free[d]
            if constant:
                factor = speed[d]
            else:
                factor = s_rate[_segment_at(s_times, s_lo[d], s_hi[d], s_duration[d], start)] / BYTES_PER_MBIT
            end = start + task_seconds[b] / factor
            compute_free[d] = end
            out[0, d] += end - start
            for k in range(send_ptr[b], send_ptr[b + 1]):
                r = send_route[k]
                n = _push(heap_t, heap_s, heap_a, heap_b, n, end, seq, r, route_ptr[r])
                seq += 1
            a_lo, a_hi, a_at = local_ptr[b], local_ptr[b + 1], end
            continue
        src, dst, link = hop_src[b], hop_dst[b], hop_link[b]
        free = radio_free[src]
        start = at if at > free else free
        nbytes = route_bytes[a]
        if nbytes == 0:
            airtime = 0.0
        elif constant:
            mbps = link_mbps[link]
            airtime = nbytes * 8 / (mbps * 1e6) if mbps > 0 else math.inf
        else:
            if l_period[link] <= 0:
                raise ValueError("cost model: a link trace carries no bytes in a whole period")
            lo, hi, dur = l_lo[link], l_hi[link], l_duration[link]
            _, r0, c0 = _locate(l_times, l_rate, l_cum, lo, hi, dur, start)
            airtime = _carry_seconds(
                l_times, l_rate, l_cum, lo, hi, dur, l_period[link], l_max_rate[link], nbytes, start, r0, c0
            )
        radio_free[src] = start + airtime
        out[1, src] += airtime
        out[2, dst] += airtime
        arrival = start + airtime + hop_latency[b]
        if b + 1 < route_ptr[a + 1]:
            n = _push(heap_t, heap_s, heap_a, heap_b, n, arrival, seq, a, b + 1)
            seq += 1
            a_lo, a_hi = 0, 0
        else:
            a_lo, a_hi, a_at, a_task = -1, -1, arrival, route_task[a]
    for q in range(n_req):
        if sink_waiting[q]:
            finishes[q] = math.nan
    makespan = finishes.max() - t0 if not np.isnan(finishes).any() else 0.0
    total = 0.0
    for d in devices:
        busy = out[0, d] + out[1, d] + out[2, d]
        out[3, d] = max(0.0, makespan - busy)
        out[4, d] = (
            out[0, d] * compute_w[d]
            + out[1, d] * transmit_w[d]
            + out[2, d] * receive_w[d]
            + out[3, d] * idle_w[d]
        )
        total += out[4, d]
    return total
