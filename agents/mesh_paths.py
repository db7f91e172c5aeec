"""Plans whose bands follow a path through the mesh: seeds of the optimiser's search, layouts of a policy's polish.

Bands that are neighbours in row order exchange halo rows at every stage boundary, so a plan whose bands
lie along mesh links keeps each exchange one hop, where relays would carry it (and the input and the other
bands' traffic) otherwise. The completion (env/completion.py) lays out the devices it picks by speed as well
as it can; these seeds go the other way round, from the mesh's paths to the devices: for each simple path
of usable devices, the best plan so far with every row-split stage on the path's devices, in path order,
sharing rows by speed (flat stages keep their devices). The local search (agents/local_search.py) then
starts from the best plans. On top of the completion's order they add little on the DISNET meshes (the
snapshot optimiser's 12-row cost sum 18.44 -> 18.34 s) and more on unseen ones (the clairvoyant, which plans
with it, 36.70 -> 34.08 s over bench.generalization's 16 cases at 15 Mbit/s).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from env.snapshot import Snapshot, link_key
from runtime.graph import LayerGraph
from runtime.plan import Plan

PATH_WIDTH = 2  # a layout's path has the plan's widest stage's devices, give or take this many


def mesh_paths(
    snapshot: Snapshot, devices: list[str], lengths: range, limit: int, seed: int = 0
) -> list[tuple[str, ...]]:
    """Simple paths of ``devices`` over links that carry, with a number of devices in ``lengths``, each
    once (not also reversed): every one when there are at most ``limit``, else ``limit`` prefixes of
    seeded random self-avoiding walks from every device in turn."""
    allowed = set(devices)
    adjacent = {
        d: [n for n in snapshot.spec.neighbours(d) if n in allowed and snapshot.link_mbps[link_key(d, n)] > 0]
        for d in devices
    }
    paths = set()
    for path in _all_paths(adjacent, devices, lengths):
        if len(paths) >= limit:
            return _walked_paths(adjacent, devices, lengths, limit, np.random.default_rng(seed))
        paths.add(_canonical(path))
    return sorted(paths)


def path_plans(
    graph: LayerGraph, snapshot: Snapshot, plan: Plan, paths: list[tuple[str, ...]]
) -> Iterator[Plan]:
    """``plan`` with every row-split stage on each path's devices in path order, rows shared by speed."""
    for path in paths:
        shares = {d: snapshot.device_gflops(d) for d in path}
        stages = [
            (
                st.start,
                st.end,
                {a.device: a.share for a in st.assignments} if graph.stage_kind(st.end) == "flat" else shares,
            )
            for st in plan.stages
        ]
        yield Plan.build(plan.source, plan.sink, stages)


def path_layouts(
    graph: LayerGraph, snapshot: Snapshot, plan: Plan, devices: list[str], limit: int, seed: int = 0
) -> Iterator[Plan]:
    """``plan`` laid along the simple paths of ``devices`` with about as many devices as its widest stage
    (``PATH_WIDTH`` fewer to as many more; at most ``limit`` paths)."""
    wide = max(len(st.assignments) for st in plan.stages)
    lengths = range(max(2, wide - PATH_WIDTH), wide + PATH_WIDTH + 1)
    return path_plans(graph, snapshot, plan, mesh_paths(snapshot, devices, lengths, limit, seed))


def _canonical(path: tuple[str, ...]) -> tuple[str, ...]:
    return min(path, path[::-1])


def _all_paths(
    adjacent: dict[str, list[str]], devices: list[str], lengths: range
) -> Iterator[tuple[str, ...]]:
    """Every simple path with a number of devices in ``lengths``, depth first from each device in turn."""
    for start in devices:
        stack = [(start,)]
        while stack:
            path = stack.pop()
            if len(path) in lengths:
                yield path
            if len(path) < lengths.stop - 1:
                stack.extend(path + (n,) for n in adjacent[path[-1]] if n not in path)


def _walked_paths(
    adjacent: dict[str, list[str]], devices: list[str], lengths: range, limit: int, rng: np.random.Generator
) -> list[tuple[str, ...]]:
    """Up to ``limit`` distinct prefixes (with a number of devices in ``lengths``) of random self-avoiding
    walks, starting from each device in turn (a bounded number of walks, so a mesh with few such paths
    ends the loop)."""
    paths: set[tuple[str, ...]] = set()
    for walk in range(limit * 4):
        path = (devices[walk % len(devices)],)
        while len(path) < lengths.stop - 1:
            options = [n for n in adjacent[path[-1]] if n not in path]
            if not options:
                break
            path += (options[rng.integers(len(options))],)
            if len(path) in lengths:
                paths.add(_canonical(path))
                if len(paths) >= limit:
                    return sorted(paths)
    return sorted(paths)
