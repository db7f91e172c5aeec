"""What a controller does with each message from its workers: heartbeats' answers, configuration
acknowledgements, results, transfer progress, telemetry and errors.

Only reports about the current attempt of an awaited request count, and only from a device with a part
in that attempt's plan (an output only from the plan's sink, with the model's output shape and dtype);
but the rest of a transfer a device reported starting is heard whatever became of its request (the
sender's report of its end can come after the sink's result, once the plan is retired). Every time a
worker stamped is moved onto the controller's clock as it arrives. A malformed report is
logged and ignored: it never stops the controller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from runtime.attempts import Attempts, PendingRequest
from runtime.connections import WorkerConnections
from runtime.deployed import DeployedPlans
from runtime.graph import LayerGraph
from runtime.telemetry import Telemetry
from runtime.timeline import checked_event, on_controller_clock
from runtime.transport import Kind, Message

log = logging.getLogger("runtime.controller")


class WorkerReports:
    """Files every message from a worker where it belongs (see the module docstring).

    ``reconfigure(device)`` is called for a worker that answers a heartbeat after it was down: it must be
    configured again.
    """

    def __init__(
        self,
        graph: LayerGraph,
        workers: WorkerConnections,
        deployed: DeployedPlans,
        attempts: Attempts,
        telemetry: Telemetry,
        reconfigure: Callable[[str], None],
    ):
        self.graph, self.workers, self.deployed = graph, workers, deployed
        self.attempts, self.telemetry, self.reconfigure = attempts, telemetry, reconfigure

    def handle(self, dev: str, msg: Message) -> None:
        try:
            self._dispatch(dev, msg)
        except (KeyError, TypeError, ValueError) as exc:  # a malformed reply must not stop the controller
            log.warning("ignoring a malformed %s from worker %s: %s", msg.header.kind.value, dev, exc)

    def _dispatch(self, dev: str, msg: Message) -> None:
        kind, meta = msg.header.kind, self._on_our_clock(dev, msg)
        peer = self.workers.peers[dev]
        if kind == Kind.PONG:
            if self.workers.on_pong(dev, msg):
                self.reconfigure(dev)
        elif kind == Kind.ACK and peer.configuring:
            peer.up, peer.configuring, peer.boot, peer.silent_since = True, False, meta.get("boot"), None
        elif kind == Kind.RESULT:
            p = self._attempt_of(dev, msg)
            if p is not None and p.output is None:
                self._accept_result(dev, p, msg)
        elif kind == Kind.PROGRESS and self.telemetry.on_air(dev, meta.get("id")):
            # the rest of a transfer this device reported starting: it may end after its request's
            # result arrived from the sink and its plan was retired, and must still be heard ending
            self._on_transfer(dev, msg.header.rid, meta)
        elif kind in (Kind.PROGRESS, Kind.TELEMETRY, Kind.ERROR) and not self._in_plans(dev, msg):
            log.warning("dropped a %s from worker %s, which has no part in its plan", kind.value, dev)
        elif kind == Kind.PROGRESS and meta.get("ev") == "compute":
            self.attempts.charge_compute(dev, msg.header.rid, meta.get("start"), meta.get("end"))
        elif kind == Kind.PROGRESS:
            self._on_transfer(dev, msg.header.rid, meta)
        elif kind == Kind.TELEMETRY:
            self._on_telemetry(dev, msg.header.rid, meta)
        elif kind == Kind.ERROR and meta.get("kind") == "config" and peer.configuring:
            peer.configuring, peer.config_error = False, meta.get("message")
            log.error("worker %s refused its configuration: %s", dev, peer.config_error)
        elif kind == Kind.ERROR:
            self._on_error(dev, msg.header.rid, meta)

    def _on_our_clock(self, dev: str, msg: Message) -> dict[str, Any]:
        """A report's fields, with every time its worker stamped moved onto the controller's clock (a
        RESULT's time is moved as it is accepted)."""
        kind, meta, clock = msg.header.kind, msg.header.meta, self.workers.peers[dev].clock
        if kind == Kind.PROGRESS:
            return on_controller_clock(meta, clock)
        if kind == Kind.TELEMETRY and isinstance(meta.get("events"), list):
            events = [on_controller_clock(e, clock) if isinstance(e, dict) else e for e in meta["events"]]
            return meta | {"events": events}
        return meta

    def _on_transfer(self, dev: str, wire: int, meta: dict[str, Any]) -> None:
        if (report := self.telemetry.progress(dev, meta)) is not None:
            self.attempts.on_transfer(wire, meta.get("plan"), report)

    def _on_telemetry(self, dev: str, wire: int, meta: dict[str, Any]) -> None:
        p = self.attempts.current(wire)
        if p is not None and meta.get("plan") == p.plan_id:
            parts = self.deployed.by_id[p.plan_id].parts
            p.telemetry[dev] = [checked_event(e, dev, parts) for e in meta["events"]]
        elif self.attempts.is_abandoned(wire):  # sent before the worker heard of the abandon
            self.attempts.charge_events(dev, wire, meta.get("events") or ())

    def _on_error(self, dev: str, wire: int, meta: dict[str, Any]) -> None:
        p = self.attempts.current(wire)
        if p is not None and meta.get("plan") == p.plan_id:
            if meta.get("transient"):
                log.warning("request %d: %s (waiting for recovery)", p.rid, meta.get("message"))
            else:
                p.error = meta
        else:
            log.info("worker %s: %s", dev, meta.get("message"))

    def _attempt_of(self, dev: str, msg: Message) -> PendingRequest | None:
        """The running attempt a message from ``dev`` is about, if ``dev`` has a part in its plan."""
        p = self.attempts.current(msg.header.rid)
        if (
            p is None
            or msg.header.meta.get("plan") != p.plan_id
            or dev not in self.deployed.by_id[p.plan_id].parts
        ):
            return None
        return p

    def _in_plans(self, dev: str, msg: Message) -> bool:
        """Whether ``dev`` has a part in the plan of the attempt a report is about (an attempt no longer
        known: in any plan still deployed)."""
        p = self.attempts.current(msg.header.rid)
        if p is not None:
            return dev in self.deployed.by_id[p.plan_id].parts
        return (
            msg.header.rid == 0
            or any(dev in d.parts for d in self.deployed.by_id.values())
            or self.attempts.is_abandoned(msg.header.rid)
        )

    def _accept_result(self, dev: str, p: PendingRequest, msg: Message) -> None:
        """Take an output only from the attempt's sink, with the model's output shape and dtype."""
        want = (len(p.x), *self.graph.boundary_shape(len(self.graph.units)))
        done = msg.header.meta.get("done")
        sink = self.deployed.by_id[p.plan_id].plan.sink
        if dev != sink or len(msg.tensors) != 1 or type(done) is not float:
            log.warning("dropped a result for request %d from %s, not its plan's sink", p.rid, dev)
            return
        out = msg.tensors[0]
        if out.dtype != torch.float32 or tuple(out.shape) != want:
            log.warning(
                "dropped a %s%s result for request %d (want float32%s)",
                out.dtype,
                tuple(out.shape),
                p.rid,
                want,
            )
            return
        clock = self.workers.peers[dev].clock
        p.output, p.done_at, p.received = out.clone(), clock.to_controller(done), time.time()
