"""A worker: one device of the cluster, running its share of every deployed plan.

``python -m runtime.worker --bind tcp://HOST:PORT [--bind ...] --device-id ID [--model-file F]
[--curve-keys DIR | --insecure]``

The worker binds one ROUTER socket. The controller (a DEALER) configures it (peers' addresses,
emulation, power profile), deploys plans to it and hands the input image to the source; peers (DEALERs
of other workers) send it row bands. Four threads share the work:

- the I/O thread owns the ROUTER: it answers control messages at once (so heartbeats are answered
  while the device computes), holds emulated arrivals until their delivery time and files bands;
- the compute thread runs tasks one at a time, in the order they become ready, paced by emulation;
- the radio thread (``runtime/radio.py``) sends hops one at a time, peer to peer, in the order they
  were queued (the device's one radio), and reports each transfer as it goes;
- the build thread builds the models of new deployments (``runtime/weights.py``: only the weights of
  the units this device runs are loaded), so the I/O thread keeps answering meanwhile.

A ``Deployment`` (``runtime/deployment.py``: one per plan) tells the worker its tasks, who sends it
which rows, what it sends to whom along which route, and which transfers it relays. Telemetry (one
TELEMETRY message per request per worker, once all its events for the request are done) and results go
back to the controller that deployed the plan.

Cancelling: a DEPLOY message may retire whole plans and cancel single attempts (``cancel``: [[plan,
request], ...], an attempt the controller restarted elsewhere). Either way the worker drops the
attempt's state, its queued computations and sends, cuts short the emulated compute or transfer it is in
the middle of, and silently drops its bands still on their way in: the abandoned attempt stops using
the device's compute and radio at once. The compute a dropped attempt did here (up to now for a computation
it cuts short) is reported with the DEPLOY's answer (PROGRESS, ``ev: compute``), so that its request's
energy includes it.

Anything malformed (bad frames, wrong version, unknown plan or request, a plan naming an unknown
device) gets an ERROR reply or a log line (``runtime/inbound.py`` checks every message before it is
used), and the worker keeps serving.

Secure and bounded by default: a worker bound beyond loopback refuses to start without CURVE keys
unless ``--insecure`` (then it warns at start and in every PONG); under CURVE only the controller's key
configures and deploys, and a device's key only sends its own bands along the plan's routes
(``runtime.auth``). Every band is checked against the deployed plan (route, rows, shape, dtype) before
it is held or queued; received bytes count against per-sender budgets, queues, plans per client, input
size and model builds are bounded (``runtime.limits``: a named default and a flag each).
"""

from __future__ import annotations

import argparse
import ctypes
import heapq
import itertools
import logging
import math
import os
import queue
import signal
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
import zmq

from runtime import models
from runtime.auth import INSECURE_WARNING, Access, Refused, Sender, check_bind
from runtime.deployment import Deployment, Send
from runtime.emulation import DeviceEmulation, EnergyMeter, paced
from runtime.executor import assemble, compute_band, take_rows
from runtime.fields import checked_int
from runtime.graph import LayerGraph
from runtime.halo import Rows
from runtime.inbound import Band, check_abandon, check_band, check_config, check_input
from runtime.limits import ByteBudget, Limits
from runtime.limits import add_arguments as add_limit_arguments
from runtime.limits import from_arguments as limits_from_arguments
from runtime.radio import AirState, Hop, Radio
from runtime.security import CONTROLLER, authorized_keys, secure_server
from runtime.transport import Header, Kind, Message, ProtocolError, encode, recv
from runtime.weights import WeightStore

log = logging.getLogger("runtime.worker")

POLL_MS = 100  # the I/O loop wakes at least this often (parent check, shutdown)


@dataclass
class _Request:
    """One request's state on this worker, dropped once its events are all recorded."""

    pending: int
    pieces: dict[int, list[tuple[str, Rows, torch.Tensor]]] = field(default_factory=dict)
    ready_at: dict[int, float] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


class Worker:
    """One device's worker process (see the module docstring)."""

    def __init__(
        self,
        bind: str | list[str],
        device: str,
        *,
        model_file: Path | None = None,
        curve_keys: Path | None = None,
        controller_key: str = CONTROLLER,
        insecure: bool = False,
        parent_pid: int | None = None,
        limits: Limits | None = None,
    ):
        binds = [bind] if isinstance(bind, str) else list(bind)
        for endpoint in binds:
            check_bind(endpoint, curve_keys is not None, insecure)
        self.device = device
        self.boot = uuid.uuid4().hex[:12]
        self.limits = limits = limits or Limits()
        self.parent_pid = parent_pid
        self.curve_keys = curve_keys
        self.insecure = insecure
        self.access = Access(None if curve_keys is None else authorized_keys(curve_keys), controller_key)
        self.weights = WeightStore(model_file, limits, self._models_in_use)
        self.budget = ByteBudget(limits.peer_budget_bytes, limits.total_budget_bytes)
        self.ctx = zmq.Context()
        self._auth = None
        self._bind_router(binds)
        self._outbox = self.ctx.socket(zmq.PULL)
        self._outbox.bind(f"inproc://outbox-{id(self)}")
        self._io_thread = threading.get_ident()
        self._local = threading.local()
        self._init_state()
        self.meter = EnergyMeter()
        self.computed = 0
        self._start_threads()
        if insecure:
            log.warning(INSECURE_WARNING.format(endpoint=self.endpoint))

    def _bind_router(self, binds: list[str]) -> None:
        """Bind the ROUTER every peer and controller talks to; the first endpoint is the one reported."""
        try:
            self.router = self.ctx.socket(zmq.ROUTER)
            self.router.linger = 0
            self.router.router_mandatory = 1
            self.router.router_handover = 1
            self.router.maxmsgsize = (
                self.limits.max_message_bytes
            )  # per frame: libzmq drops a bigger one unread
            if self.curve_keys is not None:
                self._auth = secure_server(self.router, self.curve_keys, self.ctx, self.device)
            for i, endpoint in enumerate(binds):  # the first is reported (READY): the controller's
                self.router.bind(endpoint)
                if i == 0:
                    self.endpoint = self.router.last_endpoint.decode()
        except BaseException:  # a missing key or a bad endpoint: leave no socket behind
            self.ctx.destroy(linger=0)
            raise

    def _init_state(self) -> None:
        """The plans, requests and configuration the threads share (under ``_lock``)."""
        self._lock = threading.Lock()
        self._plans: dict[int, Deployment] = {}
        self._owners: dict[int, bytes] = {}  # plan -> the connection its results and reports go to
        self._bound: dict[int, object] = {}  # plan (deployed or being built) -> the sender it is bound to
        self._graphs: dict[int, LayerGraph] = {}
        self._requests: dict[tuple[int, int], _Request] = {}
        self._finished: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._cancelled: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._computing: tuple[int, int, float] | None = None  # (plan, request, start) of the task running
        self._held: list[tuple[float, int, Band]] = []
        self._seq = itertools.count()
        self._peers: dict[str, str] = {}
        self._emulation: DeviceEmulation | None = None
        # kernel network mode: the kernel shapes the links, no radio timer; a hop ends on the receiver's ACK
        self._kernel_radio = False

    def _start_threads(self) -> None:
        """The compute, radio and build threads (started by ``serve``) and their queues."""
        self._compute_q: queue.SimpleQueue = queue.SimpleQueue()
        self._build_q: queue.SimpleQueue = queue.SimpleQueue()  # deployments whose model is being built
        self._stop = threading.Event()
        self.radio = Radio(
            self.device,
            self.ctx,
            self.curve_keys,
            self.meter,
            state=self._air_state,
            live=self._live,
            emit=self._emit,
            error=self._error,
            record=self._record,
            stopping=self._stop,
            max_message_bytes=self.limits.max_message_bytes,
        )
        self._threads = [
            threading.Thread(target=self._compute_loop, name="compute", daemon=True),
            threading.Thread(target=self.radio.run, name="radio", daemon=True),
            threading.Thread(target=self._build_loop, name="build", daemon=True),
        ]

    # ---- I/O thread ----------------------------------------------------------------------------
    def serve(self) -> None:
        """Run until SHUTDOWN, SIGTERM or the death of the parent process."""
        for t in self._threads:
            t.start()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self._outbox, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                try:
                    self._serve_once(poller)
                except Exception:  # a bug must not take the device down: log it and keep serving
                    log.exception("%s: I/O loop error", self.device)
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.warning("%s: parent process %d is gone, exiting", self.device, self.parent_pid)
                    break
        finally:
            self.close()

    def _serve_once(self, poller: zmq.Poller) -> None:
        wait = POLL_MS
        if self._held:
            wait = min(wait, max(0, math.ceil((self._held[0][0] - time.time()) * 1000)))
        events = dict(poller.poll(wait))
        if self._outbox in events:
            self._flush_outbox()
        if self.router in events:
            for _ in range(64):  # bounded, so held deliveries and the outbox are not starved
                if not self._handle_one():
                    break
        self._release_held()

    def close(self) -> None:
        self._stop.set()
        self.radio.stop()
        for q in (self._compute_q, self._build_q):
            q.put(None)
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=2.0)
        if self._auth is not None:
            self._auth.stop()
        self.ctx.destroy(linger=200)  # long enough to flush the last replies (e.g. the SHUTDOWN ack)

    def _flush_outbox(self) -> None:
        while True:
            try:
                frames = self._outbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._send_router(frames)

    def _send_router(self, frames: list) -> None:
        try:
            self.router.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the controller went away, or its queue is full
            log.warning("%s: cannot reach %r: %s", self.device, bytes(frames[0])[:32], exc)

    def _emit(self, peer: bytes | None, header: Header, tensors: list[torch.Tensor] = (), rows=None) -> None:
        """Send a message to a controller (``peer``) from any thread."""
        if peer is None:
            return
        frames = [peer, *encode(header, tensors, rows=rows)]
        if threading.get_ident() == self._io_thread:
            self._send_router(frames)
            return
        push = getattr(self._local, "push", None)
        if push is None:
            push = self._local.push = self.ctx.socket(zmq.PUSH)
            push.linger = 0
            push.connect(f"inproc://outbox-{id(self)}")
        push.send_multipart(frames, copy=False)

    def _error(
        self, peer: bytes | None, rid: int, message: str, kind: str | None = None, **extra: Any
    ) -> None:
        """Tell ``peer`` what went wrong; ``extra`` may name the ``plan`` and say it is ``transient``."""
        log.warning("%s: %s", self.device, message)
        meta = {"message": message[:2000], "kind": kind, "device": self.device} | extra
        self._emit(peer, Header(Kind.ERROR, rid, meta))

    def _handle_one(self) -> bool:
        try:
            msg = recv(
                self.router,
                flags=zmq.NOBLOCK,
                max_bytes=self.limits.max_message_bytes,
                authenticated=self.access.secure,
            )
        except zmq.Again:
            return False
        except ProtocolError as exc:
            self._error(exc.peer, exc.rid or 0, f"bad message: {exc}")
            return True
        kind, plan = msg.header.kind.value, msg.header.meta.get("plan")
        plan = plan if type(plan) is int else None
        try:
            sender = self.access.sender(msg)
            sender.check(msg.header.kind)
            self._dispatch(msg, sender)
        except (ValueError, KeyError, TypeError, IndexError, models.ModelError) as exc:
            self._error(msg.peer, msg.header.rid, f"{kind}: {exc}", kind, plan=plan)
        except Exception as exc:  # keep serving whatever a message does
            log.exception("%s: handling %s failed", self.device, kind)
            self._error(msg.peer, msg.header.rid, f"{kind}: internal error {exc!r}", kind, plan=plan)
        return True

    def _dispatch(self, msg: Message, sender: Sender) -> None:
        kind = msg.header.kind
        if kind == Kind.PING:  # the ping's number comes back with this clock: the controller times it
            status = (self.status() | {"clock": time.time()}) if sender.controls else {}
            if self.insecure:
                status["warning"] = INSECURE_WARNING.format(endpoint=self.endpoint)
            self._emit(msg.peer, Header(Kind.PONG, msg.header.rid, status))
        elif kind == Kind.BAND:
            band = self._check_band(msg, sender)
            self.budget.charge(sender.owner, msg.tensors)  # checked first: nothing unwanted is held
            if "ack" in msg.header.meta:  # kernel-shaped link: the sender's radio waits for this
                ack = {"ack": checked_int(msg.header.meta["ack"], "ack")}
                self._emit(msg.peer, Header(Kind.ACK, msg.header.rid, ack))
            if band.deliver_at is not None and band.deliver_at > time.time():
                if len(self._held) >= self.limits.max_open_requests:
                    raise ValueError(f"cannot hold a band: {len(self._held)} held")
                heapq.heappush(self._held, (band.deliver_at, next(self._seq), band))
            else:
                self._on_band(band)
        elif kind == Kind.INPUT:
            self._on_input(msg, sender)
        elif kind == Kind.DEPLOY:
            self._on_deploy(msg, sender)
        elif kind == Kind.CONFIG:
            self._on_config(msg, sender)
        elif kind == Kind.SHUTDOWN:
            self._emit(msg.peer, Header(Kind.ACK, msg.header.rid, {"device": self.device}))
            self._stop.set()
        else:
            raise ValueError(f"a worker does not accept {kind.value} messages")

    def status(self) -> dict[str, Any]:
        """What PONG reports to the controller: identity, load and meters."""
        with self._lock:
            plans, open_requests = sorted(self._plans), len(self._requests)
        return {
            "device": self.device,
            "boot": self.boot,
            "plans": plans,
            "open_requests": open_requests,
            "computed": self.computed,
            "loaded_units": self.weights.loaded(),
            "loaded_bytes": self.weights.loaded_bytes(),
            "buffered_bytes": self.budget.used(),
            "rss_bytes": psutil.Process().memory_info().rss,
            "busy_s": dict(self.meter.seconds),
            "energy_j": self.meter.joules,
        }

    def _release_held(self) -> None:
        now = time.time()
        while self._held and self._held[0][0] <= now:
            band = heapq.heappop(self._held)[2]
            try:
                self._on_band(band)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                self._error(band.peer, band.rid, f"band: {exc}", "band", plan=band.dep.plan_id)

    # ---- control ---------------------------------------------------------------------------------
    def _on_config(self, msg: Message, sender: Sender) -> None:
        config = check_config(msg, self.device)
        with self._lock:
            self._peers = config.peers
            self._emulation = config.emulation
            self._kernel_radio = config.kernel_radio
            self.meter.power = config.power
            if config.reset:  # the sender's own plans only
                self._drop_plans([pid for pid, owner in self._bound.items() if owner == sender.owner])
        self._emit(msg.peer, Header(Kind.ACK, msg.header.rid, {"device": self.device, "boot": self.boot}))

    def _drop_plans(self, plan_ids: Iterable[int]) -> list[tuple[tuple[int, int], _Request]]:
        """Forget plans (deployed or being built) and their requests (caller holds the lock); returns the
        dropped requests."""
        plan_ids = set(plan_ids)
        dropped = [(k, self._requests.pop(k)) for k in [k for k in self._requests if k[0] in plan_ids]]
        for pid in plan_ids:
            for table in (self._plans, self._owners, self._bound, self._graphs):
                table.pop(pid, None)
        return dropped

    def _on_deploy(self, msg: Message, sender: Sender) -> None:
        """Retire plans and cancel attempts at once; a new plan is checked here and built on the build
        thread (a model build takes seconds: the I/O thread keeps answering meanwhile)."""
        meta = msg.header.meta
        retire, cancel = check_abandon(meta)
        dep = None if meta.get("deploy") is None else self._check_deployment(meta["deploy"], sender)
        with self._lock:
            self._check_rights(sender, retire, cancel, dep)
            spent = self._abandon(retire, cancel)
            if dep is not None:
                self._bound[dep.plan_id] = sender.owner
                self._plans.pop(dep.plan_id, None)  # a re-deployment replaces the plan once built
        for (plan_id, rid), start, end in spent:  # before DEPLOY_OK: the controller has them when it acts
            self._report_abandoned_compute(msg.peer, plan_id, rid, start, end)
        if dep is not None:
            self._build_q.put((dep, msg.peer, msg.header.rid, sender.owner))
            return
        reply = {"plan": None, "device": self.device, "boot": self.boot}
        self._emit(msg.peer, Header(Kind.DEPLOY_OK, msg.header.rid, reply))

    def _check_rights(
        self, sender: Sender, retire: list[int], cancel: list[tuple[int, int]], dep: Deployment | None
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
            if self._build_q.qsize() >= self.limits.max_queued:
                raise ValueError(f"{self._build_q.qsize()} deployments are being built: try later")

    def _abandon(
        self, retire: list[int], cancel: list[tuple[int, int]]
    ) -> list[tuple[tuple[int, int], float, float]]:
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

    def _check_deployment(self, meta: Any, sender: Sender) -> Deployment:
        """Everything about a new deployment that needs no model build."""
        dep = Deployment.from_meta(meta)
        if dep.device != self.device:
            raise ValueError(f"deployment for {dep.device!r} sent to {self.device!r}")
        if math.prod(dep.input_shape) > self.limits.max_input_elements:
            raise ValueError(
                f"input shape {list(dep.input_shape)} exceeds {self.limits.max_input_elements} elements "
                "(--max-input-elements)"
            )
        with self._lock:
            peers = set(self._peers)
        sends = [*dep.feed, *(s for t in dep.tasks for s in t.sends), *dep.relays]
        hops = {s.path[s.path.index(self.device) + 1] for s in sends if s.path[-1] != self.device}
        if unknown := hops - peers:
            raise ValueError(f"plan {dep.plan_id} sends to unknown device(s) {sorted(unknown)}")
        return dep

    def _build_loop(self) -> None:
        """Build the models of new deployments, then make them live and confirm (DEPLOY_OK)."""
        torch.set_num_threads(1)
        while (job := self._build_q.get()) is not None:
            dep, peer, rid, owner = job
            try:
                graph = self._build(dep)
            except (ValueError, models.ModelError) as exc:
                with self._lock:
                    if self._bound.get(dep.plan_id) == owner and dep.plan_id not in self._plans:
                        del self._bound[dep.plan_id]
                self._error(peer, rid, f"deploy: {exc}", "deploy", plan=dep.plan_id)
                continue
            except Exception as exc:  # a broken model must not take the build thread down
                log.exception("%s: building plan %d failed", self.device, dep.plan_id)
                self._error(peer, rid, f"deploy: internal error {exc!r}", "deploy", plan=dep.plan_id)
                continue
            with self._lock:
                if self._bound.get(dep.plan_id) != owner:
                    continue  # retired (or reset) while it was built
                self._plans[dep.plan_id], self._owners[dep.plan_id] = dep, peer
                self._graphs[dep.plan_id] = graph
            reply = {"plan": dep.plan_id, "device": self.device, "boot": self.boot}
            self._emit(peer, Header(Kind.DEPLOY_OK, rid, reply))

    def _build(self, dep: Deployment) -> LayerGraph:
        graph = self.weights.prepare(dep.model, dep.seed, dep.input_shape)
        if dep.bounds[-1] > len(graph.units):
            raise ValueError(f"plan units up to {dep.bounds[-1]} beyond the model's {len(graph.units)}")
        self.weights.prepare(dep.model, dep.seed, dep.input_shape, dep.units())
        return graph

    def _models_in_use(self) -> set[tuple]:
        """The model builds deployed plans (and plans being built) need: the weight store keeps them."""
        with self._lock:
            plans = list(self._plans.values())
        return {self.weights.key(d.model, d.seed, d.input_shape) for d in plans}

    # ---- request flow ----------------------------------------------------------------------------
    def _air_state(self, plan_id: int) -> AirState:
        """What the radio needs, when a hop's turn comes: the plan (if still deployed) and the links."""
        with self._lock:
            return AirState(
                self._plans.get(plan_id),
                self._emulation,
                dict(self._peers),
                self._kernel_radio,
                self._owners.get(plan_id),
            )

    def _live(self, dep: Deployment, rid: int) -> bool:
        """Whether attempt ``rid`` of ``dep`` still matters: its plan is deployed, it is not cancelled."""
        with self._lock:
            return self._plans.get(dep.plan_id) is dep and (dep.plan_id, rid) not in self._cancelled

    def _request(self, dep: Deployment, rid: int, create: bool) -> _Request | None:
        """The state of request ``rid`` under ``dep`` (caller holds the lock)."""
        key = (dep.plan_id, rid)
        req = self._requests.get(key)
        if req is None and create:
            if key in self._finished:
                raise ValueError(f"request {rid} of plan {dep.plan_id} is already finished here")
            if len(self._requests) >= self.limits.max_open_requests:
                raise ValueError(f"too many open requests ({self.limits.max_open_requests})")
            req = self._requests[key] = _Request(dep.expected_events)
        return req

    def _record(self, dep: Deployment, rid: int, event: dict[str, Any]) -> None:
        """Add one telemetry event; the last one expected flushes them to the controller."""
        with self._lock:
            if self._plans.get(dep.plan_id) is not dep or (dep.plan_id, rid) in self._cancelled:
                return  # retired or cancelled meanwhile
            req = self._request(dep, rid, create=True)
            req.events.append(event)
            req.pending -= 1
            if req.pending > 0:
                return
            del self._requests[(dep.plan_id, rid)]
            self._finished[(dep.plan_id, rid)] = None
            if len(self._finished) > 4 * self.limits.max_open_requests:
                self._finished.popitem(last=False)
            owner = self._owners.get(dep.plan_id)
        meta = {"plan": dep.plan_id, "device": self.device, "events": req.events}
        self._emit(owner, Header(Kind.TELEMETRY, rid, meta))

    def _report_abandoned_compute(self, owner, plan_id: int, rid: int, start: float, end: float) -> None:
        """Report compute an abandoned attempt used (its telemetry never will): its request pays for it."""
        meta = {"ev": "compute", "plan": plan_id, "from": self.device, "start": start, "end": end}
        self._emit(owner, Header(Kind.PROGRESS, rid, meta))

    def _deployment(self, meta: dict[str, Any], sender: Sender | None = None) -> Deployment:
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

    def _on_input(self, msg: Message, sender: Sender) -> None:
        now = time.time()
        dep = self._deployment(msg.header.meta, sender)
        rid = msg.header.rid
        x = check_input(msg, dep, self.device, self.limits)
        with self._lock:
            if (dep.plan_id, msg.header.rid) in self._requests or (dep.plan_id, rid) in self._finished:
                raise ValueError(f"request {rid} of plan {dep.plan_id} was already started")
        self.budget.charge(sender.owner, msg.tensors)
        self._record(dep, rid, {"ev": "input", "t": now})
        full = (0, x.shape[-2])
        for s in dep.feed:
            self._send(dep, rid, s, take_rows(x, full, s.rows), now)

    def _send(self, dep: Deployment, rid: int, s: Send, tensor: torch.Tensor, now: float) -> None:
        if len(s.path) == 1:
            self._deliver(dep, rid, s.stage, self.device, s.rows, tensor, now)
        else:
            self.radio.put(Hop(dep.plan_id, rid, s.stage, s.rows, s.path, 0, tensor, now))

    def _check_band(self, msg: Message, sender: Sender) -> Band:
        """A band the deployed plan it names expects here (``runtime.inbound.check_band``)."""
        dep = self._deployment(msg.header.meta)
        with self._lock:
            graph = self._graphs[dep.plan_id]
        return check_band(msg, sender, dep, graph, self.device, self.limits)

    def _on_band(self, band: Band) -> None:
        now = time.time()
        if band.hop < len(band.path) - 1:  # relay: store and forward on this device's radio
            if self.radio.waiting() >= self.limits.max_queued:
                raise ValueError(f"{self.radio.waiting()} hops wait for the radio")
            hop = Hop(
                band.dep.plan_id, band.rid, band.stage, band.rows, band.path, band.hop, band.tensor, now
            )
            self.radio.put(hop)
            return
        self._deliver(band.dep, band.rid, band.stage, band.path[0], band.rows, band.tensor, now)

    def _deliver(
        self, dep: Deployment, rid: int, stage: int, src: str, rows: Rows, tensor: torch.Tensor, now: float
    ):
        """File one piece; queue the task it completes, or assemble the output at the sink."""
        expected = dep.expected_pieces(stage)
        if (src, rows) not in expected:
            raise ValueError(f"{self.device} expects no rows {list(rows)} of stage {stage} from {src!r}")
        if stage < dep.n_stages and self._compute_q.qsize() >= self.limits.max_queued:
            raise ValueError(f"{self._compute_q.qsize()} tasks wait for the compute thread")
        with self._lock:
            if self._plans.get(dep.plan_id) is not dep or (dep.plan_id, rid) in self._cancelled:
                return
            req = self._request(dep, rid, create=True)
            got = req.pieces.setdefault(stage, [])
            if any(p[0] == src and p[1] == rows for p in got):
                raise ValueError(f"rows {list(rows)} of stage {stage} from {src!r} arrived twice")
            got.append((src, rows, tensor))
            if len(got) < len(expected):
                return
            pieces = req.pieces.pop(stage)
        if stage < dep.n_stages:
            self._compute_q.put((dep, rid, dep.task_for(stage), pieces, now))
            return
        output = assemble([(r, t) for _, r, t in pieces], (0, dep.out_extent))
        self._emit(
            self._owners.get(dep.plan_id),
            Header(Kind.RESULT, rid, {"plan": dep.plan_id, "done": now}),
            [output],
        )
        self._record(dep, rid, {"ev": "done", "t": now})

    # ---- compute thread --------------------------------------------------------------------------
    def _compute_loop(self) -> None:
        torch.set_num_threads(1)
        while (item := self._compute_q.get()) is not None:
            dep, rid, task, pieces, ready = item
            with self._lock:
                emulation = self._emulation
            if not self._live(dep, rid):
                continue
            try:
                units = range(task.start, task.end)
                graph = self.weights.prepare(dep.model, dep.seed, dep.input_shape, units)

                def run(task=task, pieces=pieces, graph=graph):
                    band = assemble([(r, t) for _, r, t in pieces], task.in_rows)
                    return compute_band(graph, task.start, task.end, band, task.in_rows, task.out_rows)

                with self._lock:
                    self._computing = (dep.plan_id, rid, time.time())
                try:
                    out, p = paced(run, emulation, abort=lambda dep=dep, rid=rid: not self._live(dep, rid))
                finally:
                    with self._lock:
                        self._computing = None
            except Exception as exc:  # a bad band or a broken model: report, keep serving
                log.exception("%s: task of stage %d failed", self.device, task.stage)
                with self._lock:
                    self._requests.pop((dep.plan_id, rid), None)
                    self._finished[(dep.plan_id, rid)] = None
                self._error(
                    self._owners.get(dep.plan_id), rid, f"compute failed: {exc!r}", "band", plan=dep.plan_id
                )
                continue
            self.computed += 1
            self.meter.add("compute", p.end - p.start)
            if not self._live(dep, rid):
                continue  # cancelled while it computed (and reported as such): the output is not wanted
            event = {"ev": "compute", "stage": task.stage, "ready": ready, "start": p.start, "end": p.end}
            self._record(dep, rid, event | {"cpu": p.cpu_s, "target": p.target_s, "flops": task.flops})
            for s in task.sends:
                try:
                    self._send(dep, rid, s, take_rows(out, task.out_rows, s.rows), p.end)
                except ValueError as exc:
                    self._error(
                        self._owners.get(dep.plan_id), rid, f"local hand-over failed: {exc}", plan=dep.plan_id
                    )


def keep_freed_memory() -> None:
    """Make glibc keep freed activation buffers for reuse instead of returning them to the OS.

    By default buffers of more than a few MB are mmapped and unmapped on every request, so each
    request page-faults its activations in again (measured: ~20k faults and 15-25% more CPU time per
    VGG-16 stage than the same computation in a warm process). No-op where glibc is absent.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 << 20)  # the largest value glibc accepts
    libc.mallopt(m_trim_threshold, 1 << 30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.worker", description="Run one device's worker.")
    parser.add_argument(
        "--bind",
        required=True,
        action="append",
        help="endpoint to bind, e.g. tcp://0.0.0.0:5555 (port * = any); repeat to bind more (READY names the first)",
    )
    parser.add_argument("--device-id", required=True, help="this device's id in the cluster spec")
    parser.add_argument(
        "--model-file", type=Path, help="state_dict checkpoint (loaded memory-mapped, per unit)"
    )
    parser.add_argument(
        "--curve-keys",
        type=Path,
        help="CurveZMQ key directory holding DEVICE_ID.key_secret and authorized/ (runtime.security keygen)",
    )
    parser.add_argument(
        "--controller-key",
        default=CONTROLLER,
        help="name of the key (in authorized/) that controls this worker",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve a non-loopback endpoint without CURVE: anyone who reaches it controls the worker",
    )
    parser.add_argument("--parent-pid", type=int, help="exit when this process is no longer the parent")
    parser.add_argument("--log-level", default="WARNING")
    add_limit_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format=f"%(asctime)s worker {args.device_id} %(levelname)s %(message)s"
    )
    torch.set_num_threads(1)
    keep_freed_memory()
    if args.model_file is not None and not args.model_file.is_file():
        parser.exit(2, f"worker: error: model file {args.model_file} does not exist\n")
    try:
        worker = Worker(
            args.bind,
            args.device_id,
            model_file=args.model_file,
            curve_keys=args.curve_keys,
            controller_key=args.controller_key,
            insecure=args.insecure,
            parent_pid=args.parent_pid,
            limits=limits_from_arguments(args),
        )
    except (zmq.ZMQError, OSError, ValueError) as exc:  # a bad endpoint, a missing key, an insecure bind
        parser.exit(2, f"worker: error: cannot serve on {' '.join(args.bind)}: {exc}\n")
    # Shape inference on the meta device imports torch's meta kernels (seconds on a busy host): do it
    # now, or the first deployment would stall the I/O thread and the worker would look dead.
    LayerGraph.from_model(models.skeleton("tiny"), models.input_shape("tiny"))
    signal.signal(signal.SIGTERM, lambda *_: worker._stop.set())
    print(f"READY {worker.endpoint}", flush=True)  # the only line on stdout: LocalCluster waits for it
    worker.serve()


if __name__ == "__main__":
    main()
