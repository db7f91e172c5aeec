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

``conditions`` is anything with ``transfer_time(a, b, nbytes, t)`` (one direct hop, latency excluded) and
``speed_at(device, t)``: a ``Snapshot`` (what a planner sees) or a ``NetworkState`` (the world). Link
latencies come from the cluster spec.
"""

from __future__ import annotations

import heapq
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from runtime.graph import LayerGraph
from runtime.layout import layout
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
class Objective:
    """What a planner minimises: latency (s), energy (J), or latency + ``energy_weight`` x energy."""

    kind: str = "latency"
    energy_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("latency", "energy", "weighted"):
            raise ValueError(f"objective kind must be latency, energy or weighted, not {self.kind!r}")
        if self.energy_weight < 0:
            raise ValueError("energy_weight must be >= 0")

    def score(self, prediction: Prediction) -> float:
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

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        data = json.loads(Path(path).read_text())
        return cls(data["model"], float(data["reference_gflops"]), tuple(map(float, data["unit_seconds"])))


Hop = tuple[str, str, float]  # (from, to, link latency)


@dataclass(frozen=True)
class _Route:
    """One transfer: the hops it takes, its bytes, and the receiving task index (-1: the sink)."""

    hops: tuple[Hop, ...]
    nbytes: int
    task: int


@dataclass(frozen=True)
class _Skeleton:
    """Everything about a plan that does not depend on the network's state: cached per plan."""

    devices: tuple[str, ...]
    work: tuple[tuple[str, float], ...]  # per task: device, seconds at nominal speed
    inputs: tuple[int, ...]  # per task: number of remote pieces it waits for
    sends: tuple[tuple[_Route, ...], ...]  # per task: what it sends when done
    source_sends: tuple[_Route, ...]
    sink_inputs: int
    local_ready: tuple[tuple[int, ...], ...]  # per task: tasks it feeds locally (same device)
    source_local: tuple[int, ...]
    link_bytes: dict[tuple[str, str], int]


class CostModel:
    """Predicts what the runtime will measure for a plan."""

    def __init__(self, graph: LayerGraph, spec: ClusterSpec, profile: Profile | None = None):
        if profile is not None and len(profile.unit_seconds) != len(graph.units):
            raise ValueError(
                f"profile of {profile.model} has {len(profile.unit_seconds)} units, the graph has {len(graph.units)}"
            )
        self.graph = graph
        self.spec = spec
        self.profile = profile
        self._skeletons: dict[Plan, _Skeleton] = {}
        self._paths: dict[tuple[str, str], tuple[Hop, ...]] = {}

    # ---- static part ---------------------------------------------------------------------------
    def _nominal_seconds(self, device: str, start: int, end: int, rows) -> float:
        """Compute time of one task on ``device`` at nominal speed: FLOPs / GFLOP/s, or the profile scaled."""
        gflops = self.spec.devices[device].gflops
        if self.profile is None:
            return self.graph.band_flops(start, end, rows) / (gflops * 1e9)
        seconds = sum(
            self.profile.unit_seconds[u] * f for u, f in self.graph.unit_fractions(start, end, rows)
        )
        return seconds * self.profile.reference_gflops / gflops

    def _path(self, src: str, dst: str) -> tuple[Hop, ...]:
        """Hops ``(from, to, latency)`` of the route between two devices (cached)."""
        path = self._paths.get((src, dst))
        if path is None:
            devices = self.spec.route(src, dst)
            path = tuple(
                (a, b, self.spec.link(a, b).latency_s) for a, b in zip(devices[:-1], devices[1:], strict=True)
            )
            self._paths[(src, dst)] = path
        return path

    def skeleton(self, plan: Plan) -> _Skeleton:
        cached = self._skeletons.get(plan)
        if cached is not None:
            return cached
        lay = layout(self.graph, plan)
        index: dict[tuple[int, str], int] = {}
        work = []
        for stage, tasks in zip(plan.stages, lay.tasks, strict=True):
            for task in tasks:
                index[(task.stage, task.device)] = len(work)
                work.append(
                    (task.device, self._nominal_seconds(task.device, stage.start, stage.end, task.out_rows))
                )
        sends: list[list[_Route]] = [[] for _ in work]
        local_ready: list[list[int]] = [[] for _ in work]
        inputs = [0] * len(work)
        source_sends, source_local, sink_inputs = [], [], 0
        link_bytes: dict[tuple[str, str], int] = defaultdict(int)
        n_stages = len(plan.stages)
        for t in lay.transfers:
            receiver = index[(t.stage, t.dst)] if t.stage < n_stages else -1
            sender = index[(t.stage - 1, t.src)] if t.stage > 0 else None
            if receiver >= 0:
                inputs[receiver] += 1
            else:
                sink_inputs += 1
            if t.local:
                (source_local if sender is None else local_ready[sender]).append(receiver)
                continue
            route = _Route(self._path(t.src, t.dst), t.nbytes, receiver)
            for a, b, _ in route.hops:
                link_bytes[(a, b)] += t.nbytes
            (source_sends if sender is None else sends[sender]).append(route)
        devices = sorted(
            {plan.source, plan.sink} | {w[0] for w in work} | {d for pair in link_bytes for d in pair}
        )
        skeleton = _Skeleton(
            tuple(devices),
            tuple(work),
            tuple(inputs),
            tuple(tuple(s) for s in sends),
            tuple(source_sends),
            sink_inputs,
            tuple(tuple(x) for x in local_ready),
            tuple(source_local),
            dict(link_bytes),
        )
        if len(self._skeletons) > 20000:
            self._skeletons.clear()
        self._skeletons[plan] = skeleton
        return skeleton

    # ---- simulation ----------------------------------------------------------------------------
    def predict(self, plan: Plan, conditions, t0: float = 0.0) -> Prediction:
        """Simulate one request that starts at ``t0`` with the input on the source."""
        sk = self.skeleton(plan)
        compute = dict.fromkeys(sk.devices, 0.0)
        send = dict.fromkeys(sk.devices, 0.0)
        recv = dict.fromkeys(sk.devices, 0.0)
        compute_free = dict.fromkeys(sk.devices, t0)
        radio_free = dict.fromkeys(sk.devices, t0)
        waiting = list(sk.inputs)
        ready_at = [t0] * len(sk.work)
        sink_waiting = sk.sink_inputs
        finish = t0
        transfer_time, speed_at = conditions.transfer_time, conditions.speed_at
        push, pop = heapq.heappush, heapq.heappop
        # events: (time, seq, route, hop index) for a hop whose bytes are ready to send, or
        # (time, seq, None, task) for a task whose input is complete; seq keeps FIFO order on ties
        events: list = []
        seq = 0
        arrivals = [(task, t0) for task in sk.source_local]
        for route in sk.source_sends:
            push(events, (t0, seq, route, 0))
            seq += 1
        while True:
            for task, at in arrivals:
                if task < 0:
                    sink_waiting -= 1
                    finish = at if at > finish else finish
                    continue
                waiting[task] -= 1
                if at > ready_at[task]:
                    ready_at[task] = at
                if waiting[task] == 0:
                    push(events, (ready_at[task], seq, None, task))
                    seq += 1
            if not events:
                break
            at, _, route, i = pop(events)
            if route is None:
                device, nominal = sk.work[i]
                start = at if at > compute_free[device] else compute_free[device]
                end = start + nominal / speed_at(device, start)
                compute_free[device] = end
                compute[device] += end - start
                for out in sk.sends[i]:
                    push(events, (end, seq, out, 0))
                    seq += 1
                arrivals = [(task, end) for task in sk.local_ready[i]]
                continue
            src, dst, latency = route.hops[i]
            free = radio_free[src]
            start = at if at > free else free
            airtime = transfer_time(src, dst, route.nbytes, start)
            radio_free[src] = start + airtime
            send[src] += airtime
            recv[dst] += airtime
            arrival = start + airtime + latency
            if i + 1 < len(route.hops):
                push(events, (arrival, seq, route, i + 1))
                seq += 1
                arrivals = ()
            else:
                arrivals = ((route.task, arrival),)
        if sink_waiting:
            raise RuntimeError("cost model: the sink never received the whole output")
        makespan = finish - t0
        times, energy = {}, {}
        for d in sk.devices:
            busy = compute[d] + send[d] + recv[d]
            dt = DeviceTime(compute[d], send[d], recv[d], max(0.0, makespan - busy))
            p = self.spec.devices[d].power
            times[d] = dt
            energy[d] = (
                dt.compute_s * p.compute_w
                + dt.send_s * p.transmit_w
                + dt.recv_s * p.receive_w
                + dt.idle_s * p.idle_w
            )
        return Prediction(makespan, sum(energy.values()), times, energy, sk.link_bytes)

    def latency(self, plan: Plan, conditions, t0: float = 0.0) -> float:
        return self.predict(plan, conditions, t0).latency_s
