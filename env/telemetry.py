"""A live Snapshot built from what a running cluster measures, for planning while serving.

Planners only ever see a ``Snapshot``. In the simulator it comes from the world's traces; on a live
cluster it comes from the runtime's telemetry:

- link bandwidth: bytes over radio seconds of the real transfers of recent requests, per direct link
  (``Controller.link_mbps``). Nothing probes idle links, so a link no recent request used is estimated
  from the ones that were: its spec bandwidth times the median ratio measured/spec of the observed
  links (wireless links of one site tend to fade together). Without that, a planner keeps moving
  traffic to links whose stale figures look good, and learns each is bad one request at a time;
- speed factor: achieved FLOP/s of recent compute tasks over the device's nominal GFLOP/s, capped at
  the median over the devices that computed recently (small bands run below a device's peak for
  reasons that have nothing to do with the device; only a device clearly slower than the rest is
  slow); a device that computed nothing recently gets that median;
- availability: the controller's liveness view (heartbeats, timeouts).

Each call to ``snapshot`` also appends the current bandwidths to a per-link history, so a policy that
reads ``link_history`` sees the recent trend, oldest first.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from env.network import Snapshot, link_key
from runtime.spec import ClusterSpec


class LiveView:
    """Turns a controller's telemetry into Snapshots (see the module docstring)."""

    def __init__(self, spec: ClusterSpec, controller, *, window_s: float = 2.0, history: int = 8):
        self.spec = spec
        self.controller = controller
        self.window_s = window_s
        self.link_mbps = {link_key(link.a, link.b): link.mbps for link in spec.links}
        self.speed = dict.fromkeys(spec.devices, 1.0)
        self.history = {key: deque([mbps] * history, maxlen=history) for key, mbps in self.link_mbps.items()}

    def _update(self) -> None:
        nominal = {link_key(link.a, link.b): link.mbps for link in self.spec.links}
        measured = self.controller.link_mbps(self.window_s)
        if measured:
            ratio = float(np.median([mbps / nominal[key] for key, mbps in measured.items()]))
            self.link_mbps = {key: measured.get(key, mbps * ratio) for key, mbps in nominal.items()}
        since = time.time() - self.window_s
        achieved: dict[str, list[float]] = {}
        for end, device, flops, seconds in self.controller.compute_samples:
            if end >= since and seconds > 0 and flops > 0:
                acc = achieved.setdefault(device, [0.0, 0.0])
                acc[0] += flops
                acc[1] += seconds
        factors = {d: f / s / (self.spec.devices[d].gflops * 1e9) for d, (f, s) in achieved.items()}
        if factors:
            typical = float(np.median(list(factors.values())))
            self.speed = {d: min(factors.get(d, typical), typical) for d in self.spec.devices}

    def snapshot(self) -> Snapshot:
        """What the cluster has measured up to now."""
        self._update()
        for key, mbps in self.link_mbps.items():
            self.history[key].append(mbps)
        return Snapshot(
            time=self.controller.now(),
            spec=self.spec,
            source=self.spec.source,
            sink=self.spec.sink,
            available=frozenset(self.controller.available),
            speed=dict(self.speed),
            link_mbps=dict(self.link_mbps),
            link_history={key: tuple(h) for key, h in self.history.items()},
        )
