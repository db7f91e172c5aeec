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
once per plan into flat arrays, and the replay runs in one numba kernel; the kernels live in
env/cost_kernels.py. ``predict`` is the thin wrapper that turns the kernel's per-device seconds into a
``Prediction``; ``cost`` skips that for callers that only need latency and energy (the env, per request).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from env import cost_kernels
from env.band_tables import BandTables
from env.plan_arrays import PlanArrays
from env.snapshot import Rates
from runtime.graph import LayerGraph
from runtime.plan import Plan
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
class Midway:
    """A running request as its transfer reports show it (``CostModel.midway``): the share of its radio
    bytes carried, and its hops on the air ``(a, b, bytes, start)``, one per link (the slowest so far)."""

    progress: float
    on_air: list[tuple[str, str, int, float]]


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
class Skeleton:
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
        self._skeletons: dict[tuple, Skeleton] = {}  # by PlanArrays.key or _plan_key
        self._recent: dict[int, tuple[Plan, Skeleton]] = {}
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

    def skeleton(self, plan: Plan | PlanArrays) -> Skeleton:
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

    def _build(self, plan: PlanArrays) -> Skeleton:
        extents, offsets, row_bytes = self._stage_arrays(plan.stages)
        stage_ptr, band_device, out_lo, out_hi, in_lo, in_hi, seconds, new_sizes = cost_kernels.plan_tasks(
            plan.ptr, plan.devices, plan.shares, extents, offsets, *self._tables.columns, self._work_rate
        )
        if new_sizes:  # a flat stage's band size met for the first time: ask the graph, keep it
            for i in np.flatnonzero(np.isnan(seconds)).tolist():
                start, end = plan.stages[int(np.searchsorted(stage_ptr, i, side="right")) - 1]
                work = self._tables.size_work(start, end, int(out_hi[i] - out_lo[i]))
                seconds[i] = work / self._work_rate[band_device[i]]
        arrays = cost_kernels.compile_skeleton(
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
        return Skeleton(
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
    ) -> tuple[Skeleton, float, float, np.ndarray]:
        """(skeleton, latency, energy, per-device seconds: compute, send, recv, idle, energy rows)."""
        sk = self.skeleton(plan)
        finishes, energy, out = self.replay(sk, conditions, np.array([float(t0)]))
        if math.isnan(finishes[0]):
            raise RuntimeError("cost model: the sink never received the whole output")
        return sk, finishes[0] - t0, energy, out

    def replay(
        self,
        sk: Skeleton,
        conditions,
        starts: np.ndarray,
        carried: np.ndarray | None = None,
        at: float = 0.0,
        on_air: np.ndarray | None = None,
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """Replay a skeleton whose requests' sources hold their inputs at ``starts`` (one request for a
        plan's skeleton, several for one merged by ``env.contention``, sharing devices and radios):
        (each request's finish time, NaN if its sink never completes; energy; per-device rows). With
        ``carried`` (two zeros), it is filled with the radio bytes carried by ``at`` and all of them; with
        ``on_air`` (zeros, a row per link in spec order), per link carrying a hop still on the air at
        ``at``, with that hop's bytes and start."""
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
        energy = cost_kernels.replay(
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
            float(at),
            np.zeros(2) if carried is None else carried,
            np.zeros((len(spec.links), 2)) if on_air is None else on_air,
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

    def midway(self, plan: Plan | PlanArrays, conditions, t0: float, at: float) -> Midway:
        """What the controller's transfer reports tell a watcher at ``at`` of a request started at ``t0``:
        the share of its radio bytes (every hop) carried so far (1.0 for a plan that sends nothing), and
        the hops still on the air, as the controller lists its transfers in progress."""
        carried, on_air = np.zeros(2), np.zeros((len(conditions.spec.links), 2))
        self.replay(self.skeleton(plan), conditions, np.array([float(t0)]), carried, at, on_air)
        links = conditions.spec.links
        return Midway(
            float(carried[0] / carried[1]) if carried[1] > 0 else 1.0,
            [
                (links[i].a, links[i].b, int(on_air[i, 0]), float(on_air[i, 1]))
                for i in np.flatnonzero(on_air[:, 0])
            ],
        )
