"""What a planner may know at decision time: the `Snapshot`, measurements of the past only.

A `Snapshot` is what a monitor on the devices could have measured up to time t (windowed mean
bandwidths, recent per-second history, speed factors, who is up, failure evidence), never anything
after t; `NetworkState.snapshot` (env/network.py) takes one from the world. It answers per *direct*
link only; routes over relays are the cost model's job (`spec.route`).

Failure evidence is what a monitor's heartbeats show: per device, the failures (up -> down transitions)
seen over the last ``failure_window_s`` seconds and the seconds it was seen up, from which
``Snapshot.failure_rate`` estimates how often it fails.

`Rates` is how the compiled cost model reads any conditions, a snapshot's constant measured rates or
the world's traces, as arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from runtime.schedule import TraceStack
from runtime.spec import ClusterSpec, Link


class NetworkError(ValueError):
    """A dynamics config or network state is invalid, or a query names a link that does not exist."""


def link_key(a: str, b: str) -> tuple[str, str]:
    """The canonical key of the undirected link a-b: the sorted pair."""
    return (a, b) if a <= b else (b, a)


def direct_link(spec: ClusterSpec, a: str, b: str) -> Link:
    """The spec's direct link a-b; a NetworkError naming the cluster when there is none."""
    link = spec.link(a, b)
    if link is None:
        raise NetworkError(
            f"cluster {spec.name!r}: no direct link {a}-{b} (multi-hop routes go through spec.route)"
        )
    return link


@dataclass(frozen=True)
class Snapshot:
    """What a planner may know at decision time `time`: measurements of the past only.

    `speed[d]` is the measured speed factor of device d (1.0 = nominal gflops), `link_mbps` the recent
    measured bandwidth per direct link and `link_history` its per-second means, oldest first, both
    keyed by `link_key`. Costs derived from a snapshot assume these values hold from now on.
    `failures[d]` counts the times device d was seen to fail over the last `failure_window_s` seconds
    and `uptime_s[d]` the seconds it was seen up in them (devices without an entry: no evidence).
    """

    time: float
    spec: ClusterSpec
    source: str
    sink: str
    available: frozenset[str]
    speed: dict[str, float]
    link_mbps: dict[tuple[str, str], float]
    link_history: dict[tuple[str, str], tuple[float, ...]]
    failure_window_s: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    uptime_s: dict[str, float] = field(default_factory=dict)

    def device_gflops(self, d: str) -> float:
        """Effective GFLOP/s of device `d` at its measured speed."""
        return self.spec.devices[d].gflops * self.speed[d]

    def failure_rate(self, d: str) -> float:
        """Failures per second of device `d` while up, as its evidence shows them (failures seen over
        seconds seen up; 0 without a failure seen)."""
        seen = self.failures.get(d, 0)
        return seen / max(self.uptime_s.get(d, 0.0), 1.0) if seen else 0.0

    def transfer_time(self, a: str, b: str, nbytes: float, t: float) -> float:
        """Seconds to send `nbytes` over the direct link a-b at its measured bandwidth (no latency);
        infinite if the link measured 0. `t` is accepted for the conditions interface and unused."""
        direct_link(self.spec, a, b)
        if nbytes == 0:
            return 0.0
        mbps = self.link_mbps[link_key(a, b)]
        return nbytes * 8 / (mbps * 1e6) if mbps > 0 else math.inf

    def latency(self, a: str, b: str) -> float:
        """Propagation latency of the direct link a-b, from the spec."""
        return direct_link(self.spec, a, b).latency_s

    def speed_at(self, d: str, t: float) -> float:
        """Measured speed factor of `d` (constant over the future as far as a snapshot knows)."""
        return self.speed[d]

    @cached_property
    def rates(self) -> Rates:
        """The snapshot as arrays for the compiled cost model: constant measured rates."""
        return Rates(
            True,
            NO_TRACES,
            np.array([self.link_mbps[link_key(ln.a, ln.b)] for ln in self.spec.links], dtype=np.float64),
            NO_TRACES,
            np.array([self.speed[d] for d in self.spec.devices], dtype=np.float64),
        )

    @cached_property
    def link_windows(self) -> np.ndarray:
        """(links in spec order, 1 + H): each link's windowed mean, then its per-second history
        right-aligned, a shorter history padded on the left with the mean (H: the longest history)."""
        keys = [link_key(ln.a, ln.b) for ln in self.spec.links]
        width = max((len(self.link_history[k]) for k in keys), default=0)
        rows = []
        for k in keys:
            hist, mean = self.link_history[k], self.link_mbps[k]
            rows.append((mean, *(mean,) * (width - len(hist)), *hist))
        return np.array(rows, dtype=np.float64).reshape(len(keys), 1 + width)


@dataclass(frozen=True)
class Rates:
    """Conditions as arrays, what the compiled cost model reads: links in ``spec.links`` order, devices in
    ``spec.devices`` order. A world has trace stacks; a snapshot has empty stacks and the constant
    measured values (Mbit/s per link, speed factor per device) it assumes from now on."""

    constant: bool
    links: TraceStack
    link_mbps: np.ndarray
    speeds: TraceStack
    speed: np.ndarray


NO_TRACES = TraceStack(())  # a snapshot's rates: no traces, constant values
FLOOR_MBPS = 1e-6  # what a second measured at 0 Mbit/s counts as: next to nothing, for any tensor
