"""The requests a controller awaits, each under the id of its current attempt on the wire.

A request is sent again under a fresh attempt id when a worker it used fails, when it times out, or when
it is rescued onto a newer plan; only its current attempt's reports are accepted, so each request
yields exactly one result. An abandoned attempt may still report what it spent before its workers
heard of the abandon: its radio and compute time is charged to its request's energy.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from runtime.spec import ClusterSpec
from runtime.telemetry import TransferReport


@dataclass
class PendingRequest:
    """One request awaited by the controller, and its attempts so far."""

    rid: int
    x: torch.Tensor
    submitted: float
    lane: str
    plan_id: int = -1
    wire: int = -1  # id of the current attempt on the wire
    attempts: int = 0
    rescues: int = 0
    sent: float = 0.0
    first_sent: float = 0.0
    radio_done: int = 0  # bytes the current attempt's transfers have carried so far, every hop
    abandoned: list[int] = field(default_factory=list)  # wire ids of its abandoned attempts
    abandoned_j: float = 0.0  # their energy: radio (transfers reported) and compute (as workers drop them)
    output: torch.Tensor | None = None
    done_at: float = 0.0  # when the sink had the output (controller's clock)
    received: float = 0.0  # controller's clock
    telemetry: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    error: dict[str, Any] | None = None


class Attempts:
    """Every awaited request by id (``pending``), its current attempt by wire id, and the attempts it
    abandoned (see the module docstring)."""

    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        self.pending: dict[int, PendingRequest] = {}
        self._by_wire: dict[int, PendingRequest] = {}
        self._abandoned: dict[int, PendingRequest] = {}  # wire id of an abandoned attempt -> its request
        # request ids (never on the wire) count from a random point
        self._rids = itertools.count(secrets.randbits(52))

    def add(self, x: torch.Tensor, lane: str) -> PendingRequest:
        """A new request (not yet sent: ``renew`` gives it its first attempt)."""
        p = PendingRequest(next(self._rids), x, time.time(), lane)
        self.pending[p.rid] = p
        return p

    def current(self, wire: int) -> PendingRequest | None:
        """The request whose current attempt is ``wire``."""
        return self._by_wire.get(wire)

    def is_abandoned(self, wire: int) -> bool:
        return wire in self._abandoned

    def using(self, plan_id: int) -> bool:
        """Whether an awaited request runs on plan ``plan_id``."""
        return any(p.plan_id == plan_id for p in self.pending.values())

    def renew(self, p: PendingRequest, plan_id: int, wire: int) -> None:
        """Give ``p`` a fresh attempt ``wire`` on ``plan_id``; its previous attempt (if any) is abandoned,
        and the compute its workers already reported is charged to it."""
        self._by_wire.pop(p.wire, None)
        old_wire = p.wire
        p.plan_id, p.wire, p.attempts, p.sent = plan_id, wire, p.attempts + 1, time.time()
        reported, p.telemetry = p.telemetry, {}
        p.output, p.error, p.radio_done = None, None, 0
        p.first_sent = p.first_sent or p.sent
        self._by_wire[p.wire] = p
        if old_wire != -1:
            p.abandoned.append(old_wire)
            self._abandoned[old_wire] = p
            for dev, events in reported.items():  # workers whose part of the old attempt was done
                self.charge_events(dev, old_wire, events)

    def forget(self, p: PendingRequest) -> None:
        self.pending.pop(p.rid, None)
        self._by_wire.pop(p.wire, None)
        for wire in p.abandoned:
            self._abandoned.pop(wire, None)

    def on_transfer(self, wire: int, plan_id: Any, report: TransferReport) -> None:
        """A transfer of attempt ``wire`` (of plan ``plan_id``) carried bytes or ended: progress of its
        request when it is the current attempt (on any hop: each counts in ``radio_bytes``), the radio time
        of an abandoned one."""
        if report.radio_s is not None and (old := self._abandoned.get(wire)) is not None:
            power = self.spec.devices[report.a].power.transmit_w + self.spec.devices[report.b].power.receive_w
            old.abandoned_j += report.radio_s * power
        p = self._by_wire.get(wire)
        if report.carried and p is not None and plan_id == p.plan_id:
            p.radio_done += report.carried

    def charge_compute(self, dev: str, wire: int, start: Any, end: Any) -> None:
        """``dev`` computed from ``start`` to ``end`` for attempt ``wire``, since abandoned: its request's
        energy includes it (malformed times are ignored, like an unknown attempt)."""
        p = self._abandoned.get(wire)
        if p is not None and type(start) is float and type(end) is float and start <= end:
            p.abandoned_j += (end - start) * self.spec.devices[dev].power.compute_w

    def charge_events(self, dev: str, wire: int, events: Iterable[Any]) -> None:
        """Charge the compute in ``dev``'s telemetry events of abandoned attempt ``wire`` (its radio time
        was charged as its transfers ended)."""
        for e in events:
            if isinstance(e, dict) and e.get("ev") == "compute":
                self.charge_compute(dev, wire, e.get("start"), e.get("end"))
