"""Configuring workers: the CONFIG message that tells a worker its peers, its power profile and its
emulation, and the wait for the workers' acknowledgements (a worker is up once it acknowledged).

Each worker's emulation schedules start at the controller's epoch moved onto that worker's own clock,
so its clock is read first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from runtime.connections import WorkerConnections
from runtime.emulation import Emulation, emulation_to_wire
from runtime.results import ControllerError
from runtime.spec import ClusterSpec
from runtime.transport import Header, Kind

log = logging.getLogger("runtime.controller")


class WorkerConfiguration:
    """Sends CONFIG to workers and waits for their answers; ``pump(timeout_s)`` is the controller's
    message loop, which the answers arrive through. In kernel network mode ``kernel_links`` gives, per
    device, the endpoints of its neighbours across the kernel-shaped links (runtime.kernel_network): its
    worker then sends with no radio timer."""

    def __init__(
        self,
        spec: ClusterSpec,
        workers: WorkerConnections,
        pump: Callable[[float], None],
        kernel_links: Mapping[str, Mapping[str, str]] | None = None,
    ):
        self.spec, self.workers, self.pump, self.kernel_links = spec, workers, pump, kernel_links

    def configure(
        self, devices: list[str], timeout_s: float, emulation: Emulation | None, epoch: float
    ) -> None:
        """Configure ``devices`` and wait until they acknowledged (those that do not stay down).

        Their clocks are read first (for a while at most: a silent worker is dealt with below), so that
        each worker's emulation schedules start at the controller's epoch on its own clock.
        """
        peers = self.workers.peers
        deadline = time.time() + timeout_s
        clocks_by = min(deadline, time.time() + self.workers.dead_after_s)
        for d in devices:  # (so that their PONGs meanwhile do not configure them on their own)
            peers[d].configuring = True
        while time.time() < clocks_by and not all(peers[d].clock.known for d in devices):
            self.pump(0.05)
        for d in devices:
            self.send(d, emulation, epoch)
        while time.time() < deadline and any(peers[d].configuring for d in devices):
            self.pump(0.05)
        if failed := [d for d in devices if peers[d].config_error]:
            raise ControllerError("; ".join(f"worker {d}: {peers[d].config_error}" for d in failed))
        if late := [d for d in devices if peers[d].configuring]:
            if len(late) == len(peers):
                raise ControllerError(f"no worker answered within {timeout_s:g} s")
            log.warning("worker(s) %s did not answer: down until they do", late)

    def send(self, dev: str, emulation: Emulation | None, epoch: float, reset: bool = False) -> None:
        """Send CONFIG (peers, power, emulation); the worker is up once it acknowledges.

        ``reset`` makes the worker drop every deployment it holds: a worker that was down may still
        hold plans and requests that were retired or re-run meanwhile.
        """
        power = self.spec.devices[dev].power
        meta: dict[str, Any] = {
            "device": dev,
            "reset": reset,
            "peers": {d: p.endpoint for d, p in self.workers.peers.items()},
            "power": [power.compute_w, power.transmit_w, power.receive_w, power.idle_w],
            "emulation": None,
        }
        if self.kernel_links is not None:
            meta |= {"peers": dict(self.kernel_links[dev]), "radio": "kernel"}
        tensors = []
        peer = self.workers.peers[dev]
        if emulation is not None:
            meta["emulation"], tensors = emulation_to_wire(
                emulation.for_device(self.spec, dev, epoch + peer.clock.seconds)
            )
        peer.configuring, peer.config_error = True, None
        self.workers.send(dev, Header(Kind.CONFIG, 0, meta), tensors)
