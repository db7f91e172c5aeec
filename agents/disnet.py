"""DISNET's own heuristic (Samikwa, Di Maio and Braun, "DISNET: Distributed Micro-Split Deep Learning in
Heterogeneous Dynamic IoT", IEEE Internet of Things Journal 11(4), 2024; code: ricsamikwa/DiSNet).

The scheme, as the paper and its pseudo-code describe it:

1. **Path selection.** Among the simple paths from the source to the sink over the mesh, take the one
   with the highest *amortised resource score*: the summed resources of its devices and links divided
   by the number of devices on it (long paths pay for their length).
2. **Segments with a partition cap.** The convolutional part is cut vertically into segments, each
   with a maximum number of parallel partitions that shrinks as the feature maps do (VGG-16:
   [6, 5, 4, 3] partitions over the conv/pool groups [0,4), [4,9), [9,14), [14,18)).
3. **Neighbourhood selection.** For each segment, walk forward along the path: at each path device
   look at its neighbourhood (itself and its neighbours) and its best ``cap`` devices; move to a
   later path device when moving the data there plus computing on its neighbourhood is cheaper
   than computing here. The segment runs on those ``cap`` devices, layer by layer ("micro-splits":
   each layer group is its own stage, exchanging halo rows with the neighbouring bands).
4. **Split shares** proportional to compute rate (our effective GFLOP/s).
5. **The remaining (fully connected) layers** run on the device with the highest resources on the
   rest of the path.
6. **Energy sensitivity** sigma in [0, 1] weighs a device's energy efficiency (GFLOP per joule of
   compute power) against its speed in every resource score; we read it from the objective unless
   given: latency 0, energy 1, weighted w / (1 + w). The move rule of step 3 blends estimated seconds
   and joules the same way.

Resources are normalised by the cluster's maxima (a device's GFLOP/s by the fastest, a link's Mbit/s
by the fastest link), which reproduces the authors' weighting of link rate / 5 against compute
rate 1-10 on their meshes (links 10-50 Mbit/s) and keeps the score meaningful on other clusters.
For models other than VGG-16 the spatial groups are divided into ``len(max_partitions)`` runs as equal
as possible, the longer runs in the middle, which gives exactly the VGG-16 segments above.

Deviations from the authors' public code (we implement the paper's intent):

- ``elif l < 9 & l >= 4`` parses as ``l < (9 & l) >= 4``, so layers 4-17 all used the last segment's
  split ratio; here every segment uses its own devices and shares.
- Power classes were assigned to device ids 0-2 / 3-6 / 7-9 (``device_power_groups = [3, 7, 10]``)
  instead of the classes the meshes define; here every device's power comes from the cluster spec.
- Halo trimming hard-coded 9 partitions (``j not in [0, 8]``); here halos follow the exact row
  geometry (runtime/halo.py) for any number of partitions.
- ``determine_opt_neighbours`` appended the last neighbour's rate a second time instead of the path
  device's own; here the neighbourhood is the device and its neighbours.
- The path score skipped the last device's compute rate; here every device on the path counts.
- The "move if transfer plus execution is cheaper" rule of the paper's pseudo-code was reduced to
  comparing average resources; here the estimate includes moving the segment's input along the path.
- The code's own timing model (per-layer maxima scaled by a pace constant) is not used: plans are
  costed by the project's cost model like every other planner's.
- Only available devices with enough memory for a segment's weights are selected, and path
  enumeration stops after ``max_paths`` paths (the authors enumerated all simple paths of a 10-node
  mesh; a 30-node mesh can have millions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from agents.base import (
    Planner,
    PlannerError,
    StageDraft,
    build_plan,
    memory_left,
    memory_use,
    route_seconds_per_byte,
    spatial_groups,
    usable,
    within_memory,
)
from env.cost_model import CostModel, Objective
from env.snapshot import Snapshot, link_key
from runtime.graph import LayerGraph
from runtime.plan import Plan

VGG16_MAX_PARTITIONS = (6, 5, 4, 3)


def _band_order(devices: Sequence[str], previous: Sequence[str]) -> tuple[str, ...]:
    """Devices of the previous segment keep their relative band order (each keeps roughly the rows it
    already holds, so only halos move), newcomers follow by resource."""
    kept = [d for d in previous if d in devices]
    return tuple(kept + [d for d in devices if d not in kept])


class DisnetPlanner(Planner):
    """DISNET's path / neighbourhood / micro-split heuristic (see the module docstring)."""

    name = "disnet"

    def __init__(
        self,
        cost_model: CostModel | None = None,
        *,
        max_partitions: Sequence[int] = VGG16_MAX_PARTITIONS,
        energy_sensitivity: float | None = None,
        max_paths: int = 20000,
    ) -> None:
        super().__init__(cost_model)
        if not max_partitions or min(max_partitions) < 1:
            raise PlannerError(f"max_partitions must be positive integers, got {max_partitions!r}")
        if energy_sensitivity is not None and not 0.0 <= energy_sensitivity <= 1.0:
            raise PlannerError(f"energy_sensitivity must lie in [0, 1], got {energy_sensitivity!r}")
        self.max_partitions = tuple(int(m) for m in max_partitions)
        self.energy_sensitivity = energy_sensitivity
        self.max_paths = max_paths

    # ---- the scheme ------------------------------------------------------------------------
    def plan(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Plan:
        sigma = self.sensitivity(objective)
        resource = self.resources(snapshot, sigma)
        path = self.select_path(snapshot, resource)
        stages: list[StageDraft] = []
        point, previous = 0, (snapshot.source,)
        for groups, cap in self.segments(graph):
            start, end = groups[0][0], groups[-1][1]
            used = memory_use(stages, graph)
            point = self._move(snapshot, graph, path, point, start, end, cap, resource, sigma, used)
            devices = self._neighbourhood(snapshot, graph, path[point], start, end, cap, resource, used)
            devices = _band_order(devices, previous)
            stages.extend((s, e, devices[: graph.extent(e)]) for s, e in groups)
            previous = devices
        tail = stages[-1][1] if stages else 0
        if tail < len(graph.units):
            used = memory_use(stages, graph)
            need = graph.stage_param_bytes(tail, len(graph.units))
            fits = [d for d in path[point:] if memory_left(snapshot.spec, d, used) >= need]
            best = max(fits, key=lambda d: resource[d]) if fits else snapshot.sink
            stages.append((tail, len(graph.units), (best,)))
        return within_memory(build_plan(snapshot, stages), graph, snapshot.spec, self.name)

    def sensitivity(self, objective: Objective) -> float:
        """The energy sensitivity sigma: as configured, else implied by the objective."""
        if self.energy_sensitivity is not None:
            return self.energy_sensitivity
        if objective.kind == "latency":
            return 0.0
        if objective.kind == "energy":
            return 1.0
        return objective.energy_weight / (1.0 + objective.energy_weight)

    @staticmethod
    def resources(snapshot: Snapshot, sigma: float) -> dict[str, float]:
        """Per available device: (1 - sigma) x speed / fastest + sigma x efficiency / most efficient,
        efficiency being GFLOP per joule of compute power."""
        devices = usable(snapshot)
        speed = {d: snapshot.device_gflops(d) for d in devices}
        eff = {d: speed[d] / snapshot.spec.devices[d].power.compute_w for d in devices}
        top_speed, top_eff = max(speed.values()), max(eff.values())
        return {d: (1 - sigma) * speed[d] / top_speed + sigma * eff[d] / top_eff for d in devices}

    def select_path(self, snapshot: Snapshot, resource: dict[str, float]) -> list[str]:
        """The simple source-to-sink path over available devices with the highest amortised score
        (devices' resources plus links' Mbit/s relative to the fastest link, over the path length);
        the first one found wins ties."""
        src, dst = snapshot.source, snapshot.sink
        if src == dst:
            return [src]
        up = snapshot.available
        links = {key: mbps for key, mbps in snapshot.link_mbps.items() if key[0] in up and key[1] in up}
        top = max(links.values(), default=1.0) or 1.0
        best: tuple[float, list[str]] = (float("-inf"), [src])
        found = 0
        stack = [(src, [src], resource[src])]
        while stack and found < self.max_paths:
            node, path, score = stack.pop()
            if node == dst:
                found += 1
                amortised = score / len(path)
                if amortised > best[0]:
                    best = (amortised, path)
                continue
            for nxt in reversed(snapshot.spec.neighbours(node)):
                key = link_key(node, nxt)
                if nxt in up and nxt not in path and key in links:
                    stack.append((nxt, [*path, nxt], score + resource[nxt] + links[key] / top))
        return best[1]

    def segments(self, graph: LayerGraph) -> list[tuple[list[tuple[int, int]], int]]:
        """The spatial groups in ``len(max_partitions)`` consecutive runs as equal as possible (the
        longer runs in the middle), each with its partition cap."""
        groups = spatial_groups(graph)
        caps = self.max_partitions[: len(groups)]
        k = len(caps)
        if k == 0:
            return []
        base, extra = divmod(len(groups), k)
        middle = sorted(range(k), key=lambda i: (abs(i - (k - 1) / 2), i))[:extra]
        out, at = [], 0
        for i, cap in enumerate(caps):
            size = base + (i in middle)
            out.append((groups[at : at + size], cap))
            at += size
        return out

    # ---- neighbourhoods ---------------------------------------------------------------------
    @staticmethod
    def _neighbourhood(snapshot, graph, centre, start, end, cap, resource, used) -> list[str]:
        """The ``cap`` best devices (by resource) among ``centre`` and its available neighbours
        that can hold the segment's weights; ties keep declaration order."""
        spec = snapshot.spec
        need = graph.stage_param_bytes(start, end)
        near = {centre, *spec.neighbours(centre)}
        hood = [d for d in usable(snapshot) if d in near and memory_left(spec, d, used) >= need]
        hood.sort(key=lambda d: -resource[d])
        return hood[:cap] or [centre]

    def _move(self, snapshot, graph, path, point, start, end, cap, resource, sigma, used) -> int:
        """Index of the path device whose neighbourhood runs the segment: the current one unless
        moving the segment's input along the path and computing there is estimated to be cheaper."""
        spec = snapshot.spec
        in_bytes = graph.extent(start) * graph.row_bytes(start)
        flops = sum(u.flops for u in graph.units[start:end])
        best, best_cost, move_s = point, float("inf"), 0.0
        move_w = 0.0
        for j in range(point, len(path)):
            if j > point:
                hop = route_seconds_per_byte(snapshot, path[j - 1], path[j]) * in_bytes
                move_s += hop
                if not math.isfinite(move_s):  # a link on the way carries nothing now
                    break
                move_w += hop * (
                    spec.devices[path[j - 1]].power.transmit_w + spec.devices[path[j]].power.receive_w
                )
            hood = self._neighbourhood(snapshot, graph, path[j], start, end, cap, resource, used)
            rate = sum(snapshot.device_gflops(d) for d in hood) * 1e9
            seconds = move_s + flops / rate
            joules = move_w + sum(flops / rate * spec.devices[d].power.compute_w for d in hood)
            cost = (1 - sigma) * seconds + sigma * joules
            if cost < best_cost:
                best, best_cost = j, cost
        return best
