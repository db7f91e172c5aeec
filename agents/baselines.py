"""The published partitioning schemes the project compares against, each expressed as a Plan.

Every class cites its paper and says how the scheme maps onto this project's plan semantics (stages of
fused layers split into row or feature bands, peer-to-peer exchange of exactly the rows needed between
stages, design.md). Where a scheme picks devices it takes only available devices that can hold the
weights; shares follow effective speed unless the paper says otherwise. All but Neurosurgeon are
fixed rules and ignore the objective.
"""

from __future__ import annotations

from agents.base import (
    Planner,
    PlannerError,
    StageDraft,
    build_plan,
    fits_memory,
    memory_left,
    memory_use,
    spatial_groups,
    speed_shares,
    usable,
    within_memory,
)
from agents.bound import check_servable
from env.cost_model import CostModel, Objective
from env.snapshot import Snapshot
from runtime.graph import LayerGraph
from runtime.plan import Plan


def neighbourhood(
    snapshot: Snapshot, graph: LayerGraph, stages: list[StageDraft], start: int, end: int
) -> tuple[str, ...]:
    """The source and its available one-hop neighbours that can hold the weights of units
    [start, end) on top of those of the ``stages`` planned so far: the device group that MoDNN,
    DeepSlicing and DeepThings distribute over (a Wi-Fi group around the data owner), capped at the
    stage's output rows. The source leads the band order; falls back to the source alone."""
    spec = snapshot.spec
    need, used = graph.stage_param_bytes(start, end), memory_use(stages, graph)
    near = set(spec.neighbours(snapshot.source))
    group = [snapshot.source] + [d for d in usable(snapshot) if d in near]
    fits = [d for d in group if d in snapshot.available and memory_left(spec, d, used) >= need]
    return tuple(fits[: graph.extent(end)]) or (snapshot.source,)


def flat_start(graph: LayerGraph) -> int:
    """First unit after the last spatial group: where the flat (fully connected) tail begins."""
    spatial = spatial_groups(graph)
    return spatial[-1][1] if spatial else 0


class LocalOnly(Planner):
    """Everything on the source device: the no-offloading reference point."""

    name = "local"

    def plan(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Plan:
        if snapshot.source not in usable(snapshot):
            raise PlannerError(f"the source {snapshot.source} is not available to compute on")
        plan = build_plan(snapshot, [(0, len(graph.units), (snapshot.source,))])
        return within_memory(plan, graph, snapshot.spec, "local-only")


class Neurosurgeon(Planner):
    """Neurosurgeon (Kang et al., "Neurosurgeon: Collaborative Intelligence Between the Cloud and
    Mobile Edge", ASPLOS 2017; the paper reports end-to-end latency 3.1x lower on average (up to
    40.7x) and mobile energy 59.5% lower on average (up to 94.7%) than cloud-only execution): one
    vertical cut; the layers before it run on the mobile device (the source), the rest on one
    remote device. The paper picks the cut by predicted latency or energy;
    here every allowed cut point and every other available device that can hold its part are tried
    on the cost model under the given objective, and the best pair is kept (cut 0 = all remote,
    cut at the end = all local). When every pair takes forever on the snapshot's rates (an outage cuts
    the source or the sink off) it says so (``CutOff``), as the optimiser does, instead of planning."""

    name = "neurosurgeon"

    def plan(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Plan:
        n, source = len(graph.units), snapshot.source
        candidates: list[list[StageDraft]] = []
        if source in usable(snapshot):
            candidates.append([(0, n, (source,))])  # all local
        for remote in usable(snapshot):
            if remote != source:
                for cut in graph.cut_points[:-1]:
                    candidates.append([*([(0, cut, (source,))] if cut else []), (cut, n, (remote,))])
        fitting = [stages for stages in candidates if fits_memory(stages, graph, snapshot.spec)]
        if not fitting:
            raise PlannerError(f"neurosurgeon: no split between {source} and one device holds the weights")
        best, best_score = None, float("inf")
        for stages in fitting:
            plan = build_plan(snapshot, stages)
            score = self.score(plan, snapshot, graph, objective)
            if score < best_score:
                best, best_score = plan, score
        if best is None:
            check_servable(snapshot, graph, self.cost_model(graph, snapshot.spec))  # CutOff naming it
            raise PlannerError(f"neurosurgeon: no split between {source} and one device reaches the sink now")
        return best


class MoDNN(Planner):
    """MoDNN (Mao et al., "MoDNN: Local Distributed Mobile Computing System for Deep Neural
    Network", DATE 2017; the paper reports DNN computation accelerated 2.17-4.28x on 2-4 worker
    phones over Wi-Fi, and 30% less data delivery time than a 2-D grid partition): the group owner
    (the source) splits every layer across the devices of its Wi-Fi group (itself and its one-hop
    neighbours), in proportion to their computing capability (BODP for convolutions; fully connected
    layers split by output neurons), and after every layer gathers all output bands and re-scatters
    the next layer's input bands.

    Our plans exchange data peer to peer and have no communication-only stage, so the gather is
    expressed by alternating stages: a layer group split across the group, then the next layer group
    on the owner alone. Every boundary of a split layer then goes through the owner exactly as in
    MoDNN (all bands to the owner, all input bands from it); the price is that the owner computes
    every other layer group by itself instead of splitting it. Of the two alternations the one that
    splits more FLOPs is used. ``gather=False`` gives the other reading, every layer group split
    with only halo rows exchanged peer to peer (MoDNN without its gather, cheaper than the paper's
    scheme; registered as ``modnn-p2p``); every comparison reports both.
    """

    name = "modnn"

    def __init__(self, cost_model: CostModel | None = None, *, gather: bool = True) -> None:
        super().__init__(cost_model)
        self.gather = gather

    def plan(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Plan:
        owner = (snapshot.source,)
        options = []
        for phase in (0, 1) if self.gather else (None,):
            stages: list[StageDraft] = []
            for i, (s, e) in enumerate(graph.groups):
                split = phase is None or i % 2 == phase
                stages.append((s, e, neighbourhood(snapshot, graph, stages, s, e) if split else owner))
            split_flops = sum(
                graph.units[u].flops for s, e, devs in stages if devs != owner for u in range(s, e)
            )
            options.append((-split_flops, phase, stages))
        return within_memory(build_plan(snapshot, min(options)[2]), graph, snapshot.spec, self.name)


class DeepSlicing(Planner):
    """DeepSlicing (Zhang et al., "DeepSlicing: Collaborative and Adaptive CNN Inference With Low
    Latency", IEEE TPDS 2021; the paper reports latency and memory footprint reduced up to 5.79x and
    14.72x against existing systems on 8 heterogeneous Raspberry Pis): the feature maps are sliced across the devices in proportion to their
    computing capability, layers are fused between synchronisation points, and all devices
    synchronise (exchange boundary rows) at each of them (its Proportional Synchronized Scheduler).

    Devices: the source and its one-hop neighbours, as in the DISNET evaluation. Synchronisation
    points: after every downsampling group (a pooling or strided layer whose output has fewer rows),
    so each stage is one resolution level, fused; the fully connected tail runs on the fastest device
    of the group, which gathers the last feature map.
    """

    name = "deepslicing"

    def plan(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Plan:
        stages: list[StageDraft] = []
        start = 0
        for s, e in spatial_groups(graph):
            if graph.extent(e) < graph.extent(s) or e == flat_start(graph):
                stages.append((start, e, neighbourhood(snapshot, graph, stages, start, e)))
                start = e
        n = len(graph.units)
        if start < n:
            group = neighbourhood(snapshot, graph, stages, start, n)
            fastest = max(group, key=snapshot.device_gflops)
            stages.append((start, n, (fastest,)))
        return within_memory(build_plan(snapshot, stages), graph, snapshot.spec, self.name)


class DeepThings(Planner):
    """DeepThings (Zhao, Mirzazad Barijough and Gerstlauer, "DeepThings: Distributed Adaptive Deep
    Learning Inference on Resource-Constrained IoT Edge Clusters", IEEE TCAD 2018; the paper reports
    1.7-3.5x speedups of YOLOv2 on 2-6 edge devices and 1.7-2.2x throughput from work stealing over
    work sharing): Fused Tile Partitioning fuses the early convolutional layers and cuts them into
    equal tiles, each with its whole receptive field (no exchange inside the fused block); idle devices
    steal tiles from the busy ones; a gateway collects the tiles and runs the remaining layers.

    Our plans split rows, not 2-D grids of stolen tiles, so a stage's shares are fixed when it is planned.
    The main reading gives each device the share work stealing converges to: rows in proportion to its
    effective speed, so all devices finish together. ``equal=True`` (``deepthings-equal``) is the
    static reading, equal shares with no stealing, bound by its slowest device. Devices: the source and
    its one-hop neighbours; the fused block ends at the first group whose output has at most 1/16 of
    the input rows (four 2x downsamplings, as DeepThings fused YOLOv2's first 16 layers) or at the last
    spatial group; the gateway is the sink.
    """

    name = "deepthings"

    def __init__(self, cost_model: CostModel | None = None, *, equal: bool = False) -> None:
        super().__init__(cost_model)
        self.equal = equal

    def plan(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Plan:
        spatial = spatial_groups(graph)
        n = len(graph.units)
        if not spatial:
            return within_memory(
                build_plan(snapshot, [(0, n, (snapshot.sink,))]), graph, snapshot.spec, self.name
            )
        rows = graph.extent(0)
        end = next((e for _, e in spatial if graph.extent(e) * 16 <= rows), spatial[-1][1])
        group = neighbourhood(snapshot, graph, [], 0, end)
        tiles = {d: 1.0 for d in group} if self.equal else speed_shares(snapshot, group)
        stages = [(0, end, tiles)]
        if end < n:
            stages.append((end, n, {snapshot.sink: 1.0}))
        return within_memory(
            Plan.build(snapshot.source, snapshot.sink, stages), graph, snapshot.spec, self.name
        )
