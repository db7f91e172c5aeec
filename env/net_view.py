"""A snapshot as arrays over the cluster's devices (``NetView``), for fast planning.

Per device: up or not, effective speed and memory; per device pair: the route's store-and-forward
seconds per byte at the snapshot's measured bandwidths. Which links and relays each route crosses is
fixed by the cluster (``spec.route``), so that table is built once per cluster and cached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from env.snapshot import Snapshot, link_key
from runtime.spec import ClusterSpec

BITS = 8.0
UNREACHABLE = math.inf  # seconds per byte of a route that cannot carry data


@dataclass(frozen=True)
class _Routes:
    """Per cluster: which links and relays each device pair's route uses (fixed by ``spec.route``)."""

    devices: tuple[str, ...]
    index: dict[str, int]
    links: tuple[tuple[str, str], ...]
    link_use: np.ndarray  # (D*D, L) 1 where the route of pair (a, b) crosses link l
    relay_use: np.ndarray  # (D*D, D) 1 where device r relays for pair (a, b)
    no_route: np.ndarray  # (D*D,) bool: distinct devices with no route at all
    nominal: list[float]  # GFLOP/s per device
    memory: list[float]  # bytes per device, inf when unlimited
    memory_bytes: np.ndarray  # the same as an array


_ROUTE_CACHE: dict[tuple, _Routes] = {}
_LAST_ROUTES: list = [None, None]  # the spec asked about last, and its table


def _routes(spec: ClusterSpec) -> _Routes:
    if _LAST_ROUTES[0] is spec:  # hashing a spec's devices costs more than a net view
        return _LAST_ROUTES[1]
    key = (tuple(spec.devices.values()), spec.links)  # source/sink do not matter: variants share it
    table = _ROUTE_CACHE.get(key)
    if table is not None:
        _LAST_ROUTES[:] = (spec, table)
        return table
    devices = spec.device_ids
    index = {d: i for i, d in enumerate(devices)}
    links = tuple(link_key(ln.a, ln.b) for ln in spec.links)
    link_index = {k: i for i, k in enumerate(links)}
    n = len(devices)
    link_use = np.zeros((n * n, len(links)))
    relay_use = np.zeros((n * n, n))
    no_route = np.zeros(n * n, dtype=bool)
    for a in devices:
        for b in devices:
            row = index[a] * n + index[b]
            if a == b:
                continue
            if not spec.reachable(a, b):
                no_route[row] = True
                continue
            path = spec.route(a, b)
            for u, v in zip(path[:-1], path[1:], strict=True):
                link_use[row, link_index[link_key(u, v)]] = 1.0
            for r in path[1:-1]:
                relay_use[row, index[r]] = 1.0
    memory = [
        math.inf if spec.devices[d].memory_mb is None else spec.devices[d].memory_mb * 1e6 for d in devices
    ]
    table = _Routes(
        devices,
        index,
        links,
        link_use,
        relay_use,
        no_route,
        [spec.devices[d].gflops for d in devices],
        memory,
        np.array(memory, dtype=np.float64),
    )
    if len(_ROUTE_CACHE) > 64:
        _ROUTE_CACHE.clear()
    _ROUTE_CACHE[key] = table
    _LAST_ROUTES[:] = (spec, table)
    return table


@dataclass(frozen=True)
class NetView:
    """A snapshot as arrays over the cluster's devices (declaration order), for fast planning.

    Lists for planners' Python loops; arrays for the completion's compiled stage choice and the
    observation.
    """

    devices: tuple[str, ...]
    index: dict[str, int]
    usable: list[bool]  # up at decision time
    gflops: list[float]  # effective GFLOP/s (nominal x measured speed), 0 when down
    memory: list[float]  # bytes of memory, inf when unlimited
    sec_per_byte: np.ndarray  # (D, D) route store-and-forward seconds per byte, 0 on the diagonal
    source: str
    sink: str
    usable_mask: np.ndarray = field(repr=False)  # usable as a bool array
    inv_speed: np.ndarray = field(repr=False)  # seconds per FLOP, 0 when down
    memory_bytes: np.ndarray = field(repr=False)  # memory as an array

    @property
    def n_usable(self) -> int:
        return sum(self.usable)


def net_view(snapshot: Snapshot) -> NetView:
    """What the snapshot says as arrays: speed, availability and per-route seconds per byte.

    A route's seconds per byte is the sum over its hops of 8 / bandwidth (store and forward); it is
    infinite when a hop measured 0 Mbit/s or a relay on it is down.
    """
    table = _routes(snapshot.spec)
    n = len(table.devices)
    available, speed = snapshot.available, snapshot.speed
    usable = [d in available for d in table.devices]
    gflops = [
        g * speed[d] if u else 0.0 for d, g, u in zip(table.devices, table.nominal, usable, strict=True)
    ]
    mbps = snapshot.rates.link_mbps  # per link in spec order, as table.links
    per_link = BITS / (np.maximum(mbps, 1e-24) * 1e6)  # 0 Mbit/s -> ~1e19 s/B, caught below
    spb = table.link_use @ per_link
    blocked = table.no_route | (spb > 1e12)
    if not all(usable):
        blocked |= table.relay_use @ np.array([0.0 if u else 1.0 for u in usable]) > 0
    spb[blocked] = UNREACHABLE
    spb = spb.reshape(n, n)
    return NetView(
        table.devices,
        table.index,
        usable,
        gflops,
        table.memory,
        spb,
        snapshot.source,
        snapshot.sink,
        np.array(usable, dtype=np.bool_),
        np.array([1.0 / (g * 1e9) if g > 0 else 0.0 for g in gflops]),
        table.memory_bytes,
    )
