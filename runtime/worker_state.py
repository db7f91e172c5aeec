"""What a worker's threads share, under one lock: the plans deployed on it (and being built), the
requests open under them, and the configuration its controller sent.

A plan is bound to the client that deployed it (``bound``) from the moment its DEPLOY is accepted, and
deployed (``plans``) once its model is built; only that client may use, retire or cancel it. A request's
state lives from its first event or piece here until its last expected telemetry event. Finished and
cancelled attempts are remembered for a while (a bounded number): a late band of theirs is dropped, and
an input cannot start them again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from runtime.auth import Refused, Sender
from runtime.deployment import Deployment
from runtime.emulation import DeviceEmulation
from runtime.fields import checked_int
from runtime.graph import LayerGraph
from runtime.halo import Rows
from runtime.inbound import Config
from runtime.limits import Limits
from runtime.radio import AirState

Attempt = tuple[int, int]  # (plan, request)
Piece = tuple[str, Rows, torch.Tensor]  # (sender, rows, tensor)


@dataclass
class OpenRequest:
    """One request's state on this worker, dropped once its events are all recorded."""

    pending: int
    pieces: dict[int, list[Piece]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


class WorkerState:
    """Plans, requests and configuration of one worker (see the module docstring); every method takes
    the lock."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._lock = threading.Lock()
        self._plans: dict[int, Deployment] = {}
        self._owners: dict[int, bytes] = {}  # plan -> the connection its results and reports go to
        self._bound: dict[int, object] = {}  # plan (deployed or being built) -> the sender it is bound to
        self._graphs: dict[int, LayerGraph] = {}
        self._requests: dict[Attempt, OpenRequest] = {}
        self._finished: OrderedDict[Attempt, None] = OrderedDict()
        self._cancelled: OrderedDict[Attempt, None] = OrderedDict()
        self._computing: tuple[int, int, float] | None = None  # (plan, request, start) of the task running
        self._peers: dict[str, str] = {}
        self._emulation: DeviceEmulation | None = None
        # kernel network mode: the kernel shapes the links, no radio timer; a hop ends on the receiver's ACK
        self._kernel_radio = False

    # ---- configuration ---------------------------------------------------------------------------
    def configure(self, config: Config, owner: object) -> None:
        """Apply a checked CONFIG from ``owner``; a reset drops that client's own plans."""
        with self._lock:
            self._peers = config.peers
            self._emulation = config.emulation
            self._kernel_radio = config.kernel_radio
            if config.reset:
                self._drop_plans([pid for pid, o in self._bound.items() if o == owner])

    def peer_ids(self) -> set[str]:
        with self._lock:
            return set(self._peers)

    def emulation(self) -> DeviceEmulation | None:
        with self._lock:
            return self._emulation

    def air_state(self, plan_id: int) -> AirState:
        """What the radio needs, when a hop's turn comes: the plan (if still deployed) and the links."""
        with self._lock:
            return AirState(
                self._plans.get(plan_id),
                self._emulation,
                dict(self._peers),
                self._kernel_radio,
                self._owners.get(plan_id),
            )

    # ---- plans -----------------------------------------------------------------------------------
    def deployment(self, meta: dict[str, Any], sender: Sender | None = None) -> Deployment:
        """The plan a message names; with ``sender``, only if that sender deployed it."""
        pid = checked_int(meta.get("plan"), "plan")
        with self._lock:
            dep = self._plans.get(pid)
            owner = self._bound.get(pid)
        if dep is None:
            raise ValueError(f"unknown plan {pid}")
        if sender is not None and owner != sender.owner:
            raise Refused(f"plan {pid} belongs to another client")
        return dep

    def graph_of(self, plan_id: int) -> LayerGraph:
        with self._lock:
            return self._graphs[plan_id]

    def owner_of(self, plan_id: int) -> bytes | None:
        """The connection plan ``plan_id``'s results and reports go to."""
        with self._lock:
            return self._owners.get(plan_id)

    def deployed(self) -> list[Deployment]:
        with self._lock:
            return list(self._plans.values())

    def load(self) -> tuple[list[int], int]:
        """The plans deployed and the number of open requests."""
        with self._lock:
            return sorted(self._plans), len(self._requests)

    def accept_deploy(
        self, sender: Sender, retire: list[int], cancel: list[Attempt], dep: Deployment | None, building: int
    ) -> list[tuple[Attempt, float, float]]:
        """Retire plans, cancel attempts and bind a new plan (``dep``, not yet built) to ``sender``, within
        its rights and limits (``building``: deployments being built); returns the compute the dropped
        attempts did here, not yet reported (``_abandon``)."""
        with self._lock:
            self._check_rights(sender, retire, cancel, dep, building)
            spent = self._abandon(retire, cancel)
            if dep is not None:
                self._bound[dep.plan_id] = sender.owner
                self._plans.pop(dep.plan_id, None)  # a re-deployment replaces the plan once built
        return spent

    def install(self, dep: Deployment, peer: bytes, owner: object, graph: LayerGraph) -> bool:
        """Make a built plan live, unless it was retired (or reset) while it was built."""
        with self._lock:
            if self._bound.get(dep.plan_id) != owner:
                return False
            self._plans[dep.plan_id], self._owners[dep.plan_id] = dep, peer
            self._graphs[dep.plan_id] = graph
            return True

    def unbind(self, dep: Deployment, owner: object) -> None:
        """Forget a plan whose build failed (unless it was re-bound or deployed meanwhile)."""
        with self._lock:
            if self._bound.get(dep.plan_id) == owner and dep.plan_id not in self._plans:
                del self._bound[dep.plan_id]

    def _check_rights(
        self, sender: Sender, retire: list[int], cancel: list[Attempt], dep: Deployment | None, building: int
    ) -> None:
        """A client touches only its own plans, within its plan and build limits (caller holds the lock)."""
        if foreign := {
            p for p in retire + [c[0] for c in cancel] if self._bound.get(p, sender.owner) != sender.owner
        }:
            raise Refused(f"plan(s) {sorted(foreign)} belong to another client")
        if dep is not None:
            if self._bound.get(dep.plan_id, sender.owner) != sender.owner:
                raise Refused(f"plan {dep.plan_id} belongs to another client")
            mine = sum(owner == sender.owner for pid, owner in self._bound.items() if pid not in retire)
            if dep.plan_id not in self._bound and mine >= self.limits.max_plans_per_client:
                raise ValueError(f"{mine} plans deployed (limit {self.limits.max_plans_per_client})")
            if building >= self.limits.max_queued:
                raise ValueError(f"{building} deployments are being built: try later")

    def _abandon(self, retire: list[int], cancel: list[Attempt]) -> list[tuple[Attempt, float, float]]:
        """Drop retired plans and cancelled attempts (caller holds the lock); returns the compute
        ``((plan, request), start, end)`` the dropped attempts did here, not yet reported."""
        # (no request still open under a retired plan is wanted: the controller retires a plan once
        # nothing it awaits uses it)
        dropped = self._drop_plans(retire)
        for key in cancel:
            if (req := self._requests.pop(key, None)) is not None:
                dropped.append((key, req))
            self._finished[key] = self._cancelled[key] = None
            if len(self._cancelled) > 4 * self.limits.max_open_requests:
                self._cancelled.popitem(last=False)
        spent = [
            (key, e["start"], e["end"]) for key, req in dropped for e in req.events if e["ev"] == "compute"
        ]
        if self._computing is not None and (
            self._computing[0] in retire or self._computing[:2] in cancel
        ):  # the computation in progress stops at the next abort check, ~now
            spent.append((self._computing[:2], self._computing[2], time.time()))
        return spent

    def _drop_plans(self, plan_ids: Iterable[int]) -> list[tuple[Attempt, OpenRequest]]:
        """Forget plans (deployed or being built) and their requests (caller holds the lock); returns the
        dropped requests."""
        plan_ids = set(plan_ids)
        dropped = [(k, self._requests.pop(k)) for k in [k for k in self._requests if k[0] in plan_ids]]
        for pid in plan_ids:
            for table in (self._plans, self._owners, self._bound, self._graphs):
                table.pop(pid, None)
        return dropped

    # ---- requests --------------------------------------------------------------------------------
    def live(self, dep: Deployment, rid: int) -> bool:
        """Whether attempt ``rid`` of ``dep`` still matters: its plan is deployed, it is not cancelled."""
        with self._lock:
            return self._current(dep, rid)

    def _current(self, dep: Deployment, rid: int) -> bool:
        return self._plans.get(dep.plan_id) is dep and (dep.plan_id, rid) not in self._cancelled

    def check_not_started(self, dep: Deployment, rid: int) -> None:
        with self._lock:
            if (dep.plan_id, rid) in self._requests or (dep.plan_id, rid) in self._finished:
                raise ValueError(f"request {rid} of plan {dep.plan_id} was already started")

    def _request(self, dep: Deployment, rid: int) -> OpenRequest:
        """The state of request ``rid`` under ``dep``, opened if need be (caller holds the lock)."""
        key = (dep.plan_id, rid)
        req = self._requests.get(key)
        if req is None:
            if key in self._finished:
                raise ValueError(f"request {rid} of plan {dep.plan_id} is already finished here")
            if len(self._requests) >= self.limits.max_open_requests:
                raise ValueError(f"too many open requests ({self.limits.max_open_requests})")
            req = self._requests[key] = OpenRequest(dep.expected_events)
        return req

    def record(
        self, dep: Deployment, rid: int, event: dict[str, Any]
    ) -> tuple[bytes | None, list[dict[str, Any]]] | None:
        """Add one telemetry event; once the last one expected is in, returns the request's events and
        who they go to."""
        with self._lock:
            if not self._current(dep, rid):
                return None  # retired or cancelled meanwhile
            req = self._request(dep, rid)
            req.events.append(event)
            req.pending -= 1
            if req.pending > 0:
                return None
            del self._requests[(dep.plan_id, rid)]
            self._finished[(dep.plan_id, rid)] = None
            if len(self._finished) > 4 * self.limits.max_open_requests:
                self._finished.popitem(last=False)
            return self._owners.get(dep.plan_id), req.events

    def file_piece(
        self, dep: Deployment, rid: int, stage: int, piece: Piece, expected: int
    ) -> list[Piece] | None:
        """File one piece of ``stage``'s input; returns all of them once the ``expected`` number is in."""
        src, rows, _ = piece
        with self._lock:
            if not self._current(dep, rid):
                return None
            req = self._request(dep, rid)
            got = req.pieces.setdefault(stage, [])
            if any(p[0] == src and p[1] == rows for p in got):
                raise ValueError(f"rows {list(rows)} of stage {stage} from {src!r} arrived twice")
            got.append(piece)
            if len(got) < expected:
                return None
            return req.pieces.pop(stage)

    def fail(self, dep: Deployment, rid: int) -> None:
        """Drop a request whose computation failed here."""
        with self._lock:
            self._requests.pop((dep.plan_id, rid), None)
            self._finished[(dep.plan_id, rid)] = None

    @contextmanager
    def computing(self, dep: Deployment, rid: int) -> Iterator[None]:
        """Mark the computation in progress (an abandon reports the compute it cut short)."""
        with self._lock:
            self._computing = (dep.plan_id, rid, time.time())
        try:
            yield
        finally:
            with self._lock:
                self._computing = None
