"""Throughput plans for one stream: balanced pipelines of stages on disjoint device groups.

A stream's frames overlap, so what it sustains is set by its busiest resource: a plan whose stages run on
disjoint device groups serves one frame per ``max`` over devices of (compute seconds, radio seconds) per
frame, however long one frame takes end to end. The latency optimiser never looks for such plans: it
spreads every stage over the fast devices (the halo FLOPs and the row exchanges between stages load every
radio), and a local search started there moves one share or one device at a time, which cannot turn a
wide plan into a pipeline.

``pipeline_plans`` builds them directly. The devices are put in an order that starts at the stream's
source (nearest first, or fastest first); a group is a run of consecutive devices in that order, shares
by speed. A dynamic programme over (cut point, device position) picks, for every stage count ``k``, the
cuts and group sizes that minimise the estimated busiest resource, where a stage on group G is estimated

- compute of device d: (work x x_d + the halo work of a ``|G|``-way band) / speed(d), work in FLOPs or,
  given the cost model's profile, in the profile's seconds (as FLOPs of its reference device: halos and
  thin bands cost what the profile measured, not what FLOPs say);
- radio of device d: (output bytes x x_d) x seconds per byte to the next group's first device (or to
  the sink), and for the source in the first stage also the input bands it sends to the group;

(x_d = d's share). The estimate only proposes; the caller prices every proposal on the contention model
(env/contention.py), which knows routes, relays and the exact bands. Flat stages run on one device (every
device of a flat stage needs the whole input).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from agents.base import StageDraft, build_plan, memory_left, route_seconds_per_byte
from env.completion import stage_info
from env.cost_model import Profile
from env.snapshot import Snapshot
from runtime.graph import LayerGraph
from runtime.plan import Plan


def device_orders(snapshot: Snapshot, devices: Sequence[str]) -> list[tuple[str, ...]]:
    """Orders of ``devices`` that groups are cut from, each starting at the source (which computes in
    the first stage, so it keeps its band of the input): nearest to the source first (ties: fastest),
    and fastest first. The source must be among ``devices``."""
    source = snapshot.source
    if source not in devices:
        raise ValueError(f"the source {source!r} must be one of the devices {list(devices)}")
    spec = snapshot.spec
    rest = [d for d in devices if d != source]

    def hops(d: str) -> int:
        return len(spec.route(source, d)) - 1

    nearest = sorted(rest, key=lambda d: (hops(d), -snapshot.device_gflops(d), d))
    fastest = sorted(rest, key=lambda d: (-snapshot.device_gflops(d), hops(d), d))
    return list(dict.fromkeys([(source, *nearest), (source, *fastest)]))


def pipeline_plans(
    snapshot: Snapshot,
    graph: LayerGraph,
    devices: Sequence[str],
    max_stages: int | None = None,
    profile: Profile | None = None,
) -> list[Plan]:
    """For each device order and each stage count up to ``max_stages`` (default: as many as devices),
    the pipeline with the smallest estimated busiest resource (module docstring; work from ``profile``
    when given, else FLOPs), deduplicated. A stage goes only on devices that can hold its weights."""
    plans: dict[Plan, None] = {}
    for order in device_orders(snapshot, devices):
        pipelines = _Pipelines(snapshot, graph, order, profile)
        for stages in pipelines.best_by_stage_count(max_stages or len(order)):
            plans[build_plan(snapshot, stages)] = None
    return list(plans)


class _Pipelines:
    """The dynamic programme over one device order: ``cost[i, i2, j, j2]`` is the estimate of the stage
    from cut ``i`` to cut ``i2`` on devices ``order[j:j2]``; ``best_by_stage_count`` combines them."""

    def __init__(
        self, snapshot: Snapshot, graph: LayerGraph, order: Sequence[str], profile: Profile | None = None
    ):
        self.snapshot, self.graph, self.order, self.profile = snapshot, graph, tuple(order), profile
        self.cuts = list(graph.cut_points)
        self.speed = np.array([snapshot.device_gflops(d) * 1e9 for d in self.order])
        self.memory = np.array([memory_left(snapshot.spec, d, {}) for d in self.order])
        self.per_byte = _seconds_per_byte(snapshot, (*self.order, snapshot.sink))  # the sink last
        n, c = len(self.order), len(self.cuts)
        self.cost = np.full((c, c, n + 1, n + 1), math.inf)
        for i in range(c - 1):
            for i2 in range(i + 1, c):
                for j in range(n):
                    for j2 in range(j + 1, n + 1):
                        self.cost[i, i2, j, j2] = self._stage(i, i2, j, j2)

    def _stage(self, i: int, i2: int, j: int, j2: int) -> float:
        """Estimated busiest resource of stage ``cuts[i]:cuts[i2]`` on ``order[j:j2]`` (inf if the
        stage cannot run there or its output has nowhere to go)."""
        n, last = len(self.order), i2 == len(self.cuts) - 1
        m = j2 - j
        info = stage_info(self.graph, self.cuts[i], self.cuts[i2], m, self.profile)
        if (info.flat and m > 1) or m > info.extent or (not last and j2 == n):
            return math.inf
        if (self.memory[j:j2] < info.param_bytes).any():
            return math.inf
        speed = self.speed[j:j2]
        share = speed / speed.sum()
        compute = (info.flops * share + info.halo_flops) / speed
        radio = info.out_bytes * share * self.per_byte[j:j2, n if last else j2]
        if i == 0:  # the source (order[0]) sends every other band its input rows
            inputs = (info.in_bytes * share + info.halo_bytes)[1:]
            radio[0] += float(inputs @ self.per_byte[0, j + 1 : j2])
        worst = float(max(compute.max(), radio.max()))
        return math.inf if math.isnan(worst) else worst  # nothing to send times no route

    def best_by_stage_count(self, max_stages: int) -> list[list[StageDraft]]:
        """For k = 1..max_stages, the k-stage pipeline from cut 0 on ``order[0:]`` with the smallest
        estimate, when one exists."""
        c, n = len(self.cuts), len(self.order)
        best = np.full((c, n + 1), math.inf)  # k = 0: nothing left to compute
        best[c - 1, :] = 0.0
        tables, found = [], []
        for _ in range(max_stages):
            nxt = np.full((c, n + 1), math.inf)
            choice = np.zeros((c, n + 1, 2), dtype=np.int64)
            for i in range(c - 1):
                for j in range(n):
                    worst = np.maximum(self.cost[i, :, j, :], best)
                    at = int(np.argmin(worst))
                    nxt[i, j] = worst.flat[at]
                    choice[i, j] = divmod(at, n + 1)
            tables.append(choice)
            best = nxt
            if math.isfinite(best[0, 0]):
                found.append(self._trace(tables))
        return found

    def _trace(self, tables: list[np.ndarray]) -> list[StageDraft]:
        """The stages of the best ``len(tables)``-stage pipeline, read back through the DP's choices
        (``tables[k - 1]``: the choice with ``k`` stages left)."""
        stages, i, j = [], 0, 0
        for choice in reversed(tables):
            i2, j2 = choice[i, j]
            stages.append((self.cuts[i], self.cuts[i2], self.order[j:j2]))
            i, j = int(i2), int(j2)
        return stages


def _seconds_per_byte(snapshot: Snapshot, devices: Sequence[str]) -> np.ndarray:
    """Store-and-forward seconds per byte between every two of ``devices`` (inf without a route)."""
    spec = snapshot.spec
    return np.array(
        [
            [route_seconds_per_byte(snapshot, a, b) if spec.reachable(a, b) else math.inf for b in devices]
            for a in devices
        ]
    )
