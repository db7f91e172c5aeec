"""Pricing overlapping requests: several plans' requests sharing the mesh's devices and radios.

The cost model prices one request alone. When frames of several streams (or pipelined frames of one)
overlap, they queue for the same devices (a device computes one band at a time) and radios (one transfer
at a time per sender), exactly as the workers serve several deployed plans. ``Contention`` merges the
skeletons of the overlapping requests into one and hands it to the cost model's own replay, so the rules
stay stated once: each request's source holds its input at its own arrival time, and each request's sink
is tracked on its own.

``equal_rate`` answers the throughput question: the highest frame rate that every stream sustains at
once (frames arriving at that rate, streams evenly phased) with the p95 latency of each within its SLO.

That p95 is read over replays whose seconds vary, as a live cluster's do: an exact replay prices frames
whose phases repeat exactly, and its p95 is not monotone in the rate. On mesh0 a plan met a 5 s SLO at
its capacity (p95 4.98 s) and missed it 2% below (5.26 s): phases that line up by luck, which a search
for the highest rate finds and a live run misses. Each of ``samples`` replays scales every band's
seconds and every transfer's bytes by a factor drawn uniformly from [1 - ``jitter``, 1 + ``jitter``].
The draws are the same on every call, so a search compares plans on the same luck.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from env.cost_model import CostModel, Skeleton
from runtime.plan import Plan

JITTER = 0.1  # assumed spread of a live band's or transfer's seconds (checked on one mesh0 plan live)
SAMPLES = 4  # jittered replays a p95 is read over


@dataclass(frozen=True)
class Arrival:
    """One request: which plan serves it, and when its source holds the input (seconds)."""

    plan: Plan
    at: float


def merged(skeletons: Sequence[Skeleton]) -> Skeleton:
    """One skeleton holding every request of ``skeletons`` side by side: request ``k``'s tasks, routes and
    hops shifted past those of the requests before it, its source as CSR row ``T + k`` (``T`` = all tasks)
    and its sink as task ``-1 - k``."""
    task_base = np.cumsum([0] + [len(s.task_device) for s in skeletons])
    route_base = np.cumsum([0] + [len(s.route_bytes) for s in skeletons])
    hop_base = np.cumsum([0] + [len(s.hop_src) for s in skeletons])

    def target(tasks: np.ndarray, k: int) -> np.ndarray:
        return np.where(tasks < 0, -1 - k, tasks + task_base[k])

    def csr(ptr_name: str, data_name: str, shift) -> tuple[np.ndarray, np.ndarray]:
        """Rows of every request's tasks, then every request's source row, with entries shifted."""
        counts, data = [], []
        for rows in ("tasks", "source"):
            for k, s in enumerate(skeletons):
                ptr, values = getattr(s, ptr_name), getattr(s, data_name)
                n = len(s.task_device)
                lo, hi = (0, n) if rows == "tasks" else (n, n + 1)
                counts.append(np.diff(ptr[lo : hi + 1]))
                data.append(shift(values[ptr[lo] : ptr[hi]], k))
        return np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64), np.concatenate(
            data
        ).astype(np.int64)

    send_ptr, send_route = csr("send_ptr", "send_route", lambda r, k: r + route_base[k])
    local_ptr, local_task = csr("local_ptr", "local_task", target)
    route_ptr = np.concatenate([[0]] + [s.route_ptr[1:] + hop_base[k] for k, s in enumerate(skeletons)])
    device_index = np.unique(np.concatenate([s.device_index for s in skeletons]))

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(s, name) for s in skeletons])

    return Skeleton(
        devices=tuple(sorted({d for s in skeletons for d in s.devices})),
        device_index=device_index,
        task_device=joined("task_device"),
        task_seconds=joined("task_seconds"),
        task_inputs=joined("task_inputs"),
        send_ptr=send_ptr,
        send_route=send_route,
        local_ptr=local_ptr,
        local_task=local_task,
        route_ptr=route_ptr.astype(np.int64),
        route_bytes=joined("route_bytes"),
        route_task=np.concatenate([target(s.route_task, k) for k, s in enumerate(skeletons)]),
        hop_src=joined("hop_src"),
        hop_dst=joined("hop_dst"),
        hop_link=joined("hop_link"),
        hop_latency=joined("hop_latency"),
        sink_inputs=np.array([s.sink_inputs for s in skeletons], dtype=np.int64),
        link_matrix=sum(s.link_matrix for s in skeletons),
    )


class Contention:
    """Prices requests of several plans that overlap in time, through ``cost``'s replay; a stream's p95
    over ``samples`` replays jittered by ``jitter`` (module docstring; 0: one exact replay)."""

    def __init__(self, cost: CostModel, jitter: float = JITTER, samples: int = SAMPLES, seed: int = 0):
        if not 0 <= jitter < 1 or samples < 1:
            raise ValueError(f"jitter must be in [0, 1) and samples >= 1, not {jitter} and {samples}")
        self.cost = cost
        self.jitter, self.samples, self.seed = jitter, (samples if jitter > 0 else 1), seed

    def latencies(self, arrivals: Sequence[Arrival], conditions) -> np.ndarray:
        """Each request's latency (its sink holds the output, minus its arrival), in the given order."""
        return self._replay(arrivals, conditions)[0]

    def _replay(self, arrivals: Sequence[Arrival], conditions) -> tuple[np.ndarray, np.ndarray]:
        """(latencies, per-device rows compute, send, recv seconds) of ``arrivals``."""
        skeleton = merged([self.cost.skeleton(a.plan) for a in arrivals])
        starts = np.array([a.at for a in arrivals], dtype=np.float64)
        finishes, rows = self._finishes(skeleton, conditions, starts)
        return finishes - starts, rows

    def _finishes(self, skeleton: Skeleton, conditions, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        finishes, _, out = self.cost.replay(skeleton, conditions, starts)
        if np.isnan(finishes).any():
            raise RuntimeError("contention: a request's sink never received its whole output")
        return finishes, out[:3]

    def busy(self, plans: Sequence[Plan], conditions) -> tuple[np.ndarray, np.ndarray]:
        """Seconds each device computes and sends (``spec.device_ids`` order) for one frame of each plan."""
        _, rows = self._replay([Arrival(p, 0.0) for p in plans], conditions)
        return rows[0], rows[1]

    def capacity(self, plans: Sequence[Plan], conditions) -> float:
        """The rate above which some device's processor or radio is busy more than all the time, when
        each of ``plans`` serves one frame per period: no rate above it is sustained, whatever the SLO."""
        compute, send = self.busy(plans, conditions)
        return 1.0 / max(compute.max(), send.max(), 1e-12)

    def stream_p95(self, plans: Sequence[Plan], fps: float, conditions, frames: int = 24) -> np.ndarray:
        """The p95 latency of each stream when stream ``i`` sends ``frames`` frames at ``fps`` on
        ``plans[i]``, the streams evenly phased (stream i starts ``i / (n fps)`` s after stream 0), read over
        the jittered replays (module docstring)."""
        n = len(plans)
        arrivals = [Arrival(plan, (f + i / n) / fps) for f in range(frames) for i, plan in enumerate(plans)]
        skeleton = merged([self.cost.skeleton(a.plan) for a in arrivals])
        starts = np.array([a.at for a in arrivals], dtype=np.float64)
        rng = np.random.default_rng(self.seed)
        latency = [
            self._finishes(self._jittered(skeleton, rng), conditions, starts)[0] - starts
            for _ in range(self.samples)
        ]
        return np.percentile(np.concatenate(latency).reshape(-1, n), 95, axis=0)

    def _jittered(self, skeleton: Skeleton, rng: np.random.Generator) -> Skeleton:
        if self.jitter == 0:
            return skeleton
        lo, hi = 1 - self.jitter, 1 + self.jitter
        return replace(
            skeleton,
            task_seconds=skeleton.task_seconds * rng.uniform(lo, hi, skeleton.task_seconds.size),
            route_bytes=skeleton.route_bytes * rng.uniform(lo, hi, skeleton.route_bytes.size),
        )

    def equal_rate(
        self,
        plans: Sequence[Plan],
        slo_s: Sequence[float],
        conditions,
        frames: int = 24,
        resolution: float = 0.02,
    ) -> float:
        """The highest frame rate every stream sustains at once: below the ``capacity`` of the busiest
        device or radio, with each stream's p95 latency within its SLO (bisection to ``resolution``
        relative; 0 if a stream's frame alone misses its SLO)."""
        slo = np.asarray(slo_s, dtype=np.float64)
        alone = np.array([self.cost.latency(p, conditions) for p in plans])
        if (alone > slo).any():
            return 0.0
        hi = self.capacity(plans, conditions)
        if (self.stream_p95(plans, hi, conditions, frames) <= slo).all():
            return hi
        lo = 0.0
        while hi - lo > resolution * hi:
            mid = (lo + hi) / 2
            lo, hi = (
                (mid, hi) if (self.stream_p95(plans, mid, conditions, frames) <= slo).all() else (lo, mid)
            )
        return lo
