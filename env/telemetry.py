"""A live Snapshot built from what a running cluster measures, for planning while serving.

Planners only ever see a ``Snapshot``. In the simulator it comes from the world's traces; on a live
cluster it comes from the runtime's telemetry:

- link bandwidth: bytes over radio seconds of the real transfers of recent requests, per direct link
  (``Controller.link_mbps``); a link no recent request used keeps its last measurement (or the spec's
  figure until it is first used), because nothing probes idle links;
- speed factor: achieved FLOP/s of recent compute tasks over the device's nominal GFLOP/s;
- availability: the controller's liveness view (heartbeats, timeouts).

Each call to ``snapshot`` also appends the current bandwidths to a per-link history, so a policy that
reads ``link_history`` sees the recent trend, oldest first.
"""

from __future__ import annotations

import time
from collections import deque

from env.network import Snapshot, link_key
from runtime.spec import ClusterSpec


class LiveView:
    """Turns a controller's telemetry into Snapshots (see the module docstring)."""

    def __init__(self, spec: ClusterSpec, controller, *, window_s: float = 5.0, history: int = 8):
        self.spec = spec
        self.controller = controller
        self.window_s = window_s
        self.link_mbps = {link_key(link.a, link.b): link.mbps for link in spec.links}
        self.speed = dict.fromkeys(spec.devices, 1.0)
        self.history = {key: deque([mbps] * history, maxlen=history) for key, mbps in self.link_mbps.items()}

    def _update(self) -> None:
        self.link_mbps.update(self.controller.link_mbps(self.window_s))
        since = time.time() - self.window_s
        achieved: dict[str, list[float]] = {}
        for end, device, flops, seconds in self.controller.compute_samples:
            if end >= since and seconds > 0 and flops > 0:
                acc = achieved.setdefault(device, [0.0, 0.0])
                acc[0] += flops
                acc[1] += seconds
        for device, (flops, seconds) in achieved.items():
            self.speed[device] = flops / seconds / (self.spec.devices[device].gflops * 1e9)

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
