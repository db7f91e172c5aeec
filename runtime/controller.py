"""Controller: deploys plans on the workers of a cluster and runs inference requests through them.

::

    with Controller(spec, endpoints, model="tiny", emulation=Emulation(host_gflops)) as ctl:
        ctl.deploy(plan)
        result = ctl.infer(x)                       # one request: output, latency, energy, timeline
        for r in ctl.stream(xs, window=3): ...      # pipelined: request r+1 enters stage 0 early

The controller only hands the input to the source worker and receives the output from the sink;
bands travel peer to peer. Workers report per-request telemetry, from which each ``Result`` gets a
``Timeline`` (``runtime/timeline.py``: per device compute / send / receive / wait seconds and energy, per
link bytes and radio seconds), and the controller keeps recent measurements for live planning
(``runtime/telemetry.py``: ``link_samples``, ``compute_samples``, ``transfers_in_progress``; and
``available``).

The controller composes three parts: its connections to the workers (``runtime/connections.py``:
sockets, heartbeats, liveness, clocks), the requests it awaits and their attempts
(``runtime/attempts.py``), and its telemetry; it deploys plans and drives requests through them.

Plans swap between requests: requests in flight finish on the plan they started with, the old plan is
retired on the workers once its last request is done.

Lanes: several streams of requests (cameras) can share the cluster, each on its own plan. ``deploy(plan,
lane=...)`` makes ``plan`` the plan in force of one lane and ``submit(x, lane=...)`` sends a request on it
without waiting (``collect`` returns finished results). A lane's hot swap, rescue or failure recovery only
touches that lane's requests; a lane's replanner is ``replanners[lane]`` (``replan`` for the default
lane). Liveness: the controller pings every worker while it waits; a worker that stays silent for
``dead_after_s`` (or comes back with a new boot id) is marked down, the planner callback ``replan(available_devices) -> Plan`` gives a plan without it (by
default ``fallback_plan`` drops it from the current plan), and every request the failure touched is
sent again under a fresh attempt id. Only the current attempt of a request is accepted, so each
request yields exactly one result: nothing is lost, nothing duplicated.

Rescue: a request can be restarted on the plan in force while its attempt is still running
(``restart``), for when conditions collapsed under it and finishing the old attempt would take longer
than starting over. The caller decides when (``in_flight`` says how far each attempt got; ``watch`` is
called while the controller waits, so a serving loop can re-plan in the middle of a request); the
controller sends the request again under a fresh attempt id and cancels the old attempt on its workers,
which drop its queued work and cut short the transfer or computation they are in the middle of.

Transfers are reported by the workers as they start, as they go (the bytes carried so far, every
quarter second of a long one) and as they end (PROGRESS), so ``link_samples`` holds every piece of a
transfer at once and ``transfers_in_progress`` the ones still on the air: a crawling transfer measures
its link's present rate, and one running for a long time bounds it, before any request has finished.

Clocks: the controller's clock is the one of record. Workers stamp what they report with their own
clocks, which on separate hosts do not agree; every heartbeat is also an NTP-style exchange
(``runtime/clock.py``) that estimates each worker's offset, and every time a worker reports (telemetry
events, transfer progress, results) is moved onto the controller's clock as it arrives. So ``latency_s``
(from the moment the source holds the input to the moment the sink holds the whole output), timelines and
link samples are on the controller's clock; ``wall_s`` is the controller's own round trip. (Emulated link
delays between two workers still assume their clocks agree: emulation runs them on one host.)

Not thread-safe: one thread drives a controller (it does its networking while waiting in calls).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from runtime import models
from runtime.attempts import Attempts, PendingRequest
from runtime.connections import WorkerConnections, WorkerStatus
from runtime.deployment import Deployment, deployments
from runtime.emulation import Emulation, emulation_to_wire
from runtime.fidelity import FidelityMeter
from runtime.graph import LayerGraph
from runtime.layout import layout
from runtime.plan import Assignment, Plan, PlanError, Stage
from runtime.spec import ClusterSpec, SpecError
from runtime.telemetry import Telemetry
from runtime.timeline import Timeline, build_timeline, checked_event, on_controller_clock, undilated
from runtime.transport import MAX_MESSAGE_BYTES, Header, Kind, Message
from runtime.verify import Verifier

log = logging.getLogger("runtime.controller")

DEFAULT_LANE = ""  # the lane of ``infer``, ``stream`` and ``deploy`` without a lane

Replanner = Callable[[frozenset[str]], Plan]  # the devices up -> a plan over them
Watcher = Callable[[], None]  # called while requests run


class ControllerError(RuntimeError):
    """The cluster cannot do what was asked (no plan, no live workers, a request that keeps failing)."""


class RequestFailed(ControllerError):
    """A worker reported an error that re-running the request will not fix."""


@dataclass(frozen=True)
class Result:
    rid: int
    output: torch.Tensor
    latency_s: float  # source holds the input (of the first attempt) -> sink holds the whole output
    energy_j: float  # the timeline's, plus the radio and compute of abandoned attempts (rescued or re-run)
    timeline: Timeline
    plan: Plan
    wall_s: float  # controller hands the input over -> controller has the result
    attempts: int
    rescues: int = 0  # attempts abandoned by ``restart`` (counted in ``attempts``)
    verified: bool | None = None  # recomputed locally and equal (False: a mismatch); None: not sampled


@dataclass(frozen=True)
class InFlight:
    """A request whose attempt is running, as ``Controller.in_flight`` reports it."""

    rid: int
    plan: Plan
    current: bool  # its plan is the plan in force
    elapsed_s: float  # since its current attempt was sent
    progress: float  # fraction of the attempt's radio bytes (first hops) already delivered, 0..1
    rescues: int
    lane: str = DEFAULT_LANE


@dataclass
class _Deployed:
    plan_id: int
    plan: Plan
    parts: dict[str, Deployment]
    radio_bytes: int = 0  # bytes a request sends over radios (first hops): what ``progress`` counts


class _DeployFailed(Exception):
    """A device went down while a plan was being deployed."""


def fallback_plan(plan: Plan, available: frozenset[str], spec: ClusterSpec) -> Plan:
    """The default replanner: ``plan`` without the devices that are down.

    A stage left without devices goes to the fastest available device, and so do a source or sink that
    is down (unless the spec's own source or sink is up). Good enough to keep serving until a real
    planner chooses better.
    """
    if not available:
        raise ControllerError("no device is available")
    fastest = max(sorted(available), key=lambda d: spec.devices[d].gflops)
    stages = tuple(
        Stage(
            s.start,
            s.end,
            tuple(a for a in s.assignments if a.device in available) or (Assignment(fastest, 1.0),),
        )
        for s in plan.stages
    )

    def keep(dev: str, default: str) -> str:
        return dev if dev in available else default if default in available else fastest

    return Plan(keep(plan.source, spec.source), keep(plan.sink, spec.sink), stages)


class Controller:
    """Drives the workers of one cluster (see the module docstring)."""

    def __init__(
        self,
        spec: ClusterSpec,
        endpoints: Mapping[str, str] | None = None,
        *,
        model: str = "tiny",
        seed: int = 0,
        input_shape: tuple[int, int, int] | None = None,
        emulation: Emulation | None = None,
        replan: Replanner | None = None,
        curve_keys: str | Path | None = None,
        curve_name: str = "controller",
        heartbeat_s: float = 0.2,
        dead_after_s: float = 2.0,
        request_timeout_s: float = 120.0,
        connect_timeout_s: float = 60.0,
        max_attempts: int = 4,
        telemetry_grace_s: float = 2.0,
        history: int = 4096,
        watch: Watcher | None = None,
        watch_every_s: float = 0.2,
        kernel_links: Mapping[str, Mapping[str, str]] | None = None,
        verify: float = 0.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ):
        self.spec = spec
        self.model = model
        self.seed = seed
        self.input_shape = tuple(input_shape or models.input_shape(model))
        self.graph = LayerGraph.from_model(models.skeleton(model), self.input_shape, model)
        self.emulation = emulation
        # kernel network mode: per device, the endpoints of its neighbours across the kernel-shaped links
        # (runtime.kernel_network); its workers then send with no radio timer
        self.kernel_links = kernel_links
        self.replan = replan
        self.replanners: dict[str, Replanner | None] = {}  # per lane other than the default one
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.request_timeout_s = request_timeout_s
        self.max_attempts = max_attempts
        self.telemetry_grace_s = telemetry_grace_s
        self.epoch = time.time()  # t=0 of every emulation schedule
        self.verifier = Verifier(verify, models.build(model, seed=seed).eval()) if verify else None
        self.replans = 0
        self.watch = watch  # called every ``watch_every_s`` while a request waits for its result
        self.watch_every_s = watch_every_s
        self._last_watch = 0.0
        self.telemetry = Telemetry(spec, history)
        self.attempts = Attempts(spec)
        self._current: dict[str, int] = {}  # lane -> id of its plan in force
        self._submitted: set[int] = set()  # requests sent by ``submit``, for ``collect``
        self._deployed: dict[int, _Deployed] = {}
        self._results: dict[int, Result] = {}
        self._live_specs: dict[frozenset[str], ClusterSpec] = {frozenset(spec.devices): spec}
        self.workers = self._connect(endpoints, curve_keys, curve_name, max_message_bytes)
        try:
            self._configure(list(self.workers.peers), connect_timeout_s)
        except BaseException:
            self.close()
            raise

    def _connect(
        self,
        endpoints: Mapping[str, str] | None,
        curve_keys: str | Path | None,
        curve_name: str,
        max_message_bytes: int,
    ) -> WorkerConnections:
        """A socket to every device's worker (at ``endpoints``, or the addresses in the spec)."""
        endpoints = dict(endpoints) if endpoints is not None else self._spec_endpoints()
        if missing := set(self.spec.devices) - set(endpoints):
            raise ControllerError(f"no endpoint for device(s) {sorted(missing)}")
        return WorkerConnections(
            {d: endpoints[d] for d in self.spec.devices},
            f"controller-{secrets.token_hex(16)}".encode(),
            curve_keys=curve_keys,
            curve_name=curve_name,
            heartbeat_s=self.heartbeat_s,
            dead_after_s=self.dead_after_s,
            max_message_bytes=max_message_bytes,
            on_down=self.telemetry.forget_transfers_of,
        )

    def _new_id(self) -> int:
        """An unpredictable 63-bit plan or attempt id (a repeat is as likely as a guess: never, in practice):
        a worker outside a plan would have to guess one to forge a report."""
        return secrets.randbits(63)

    def _spec_endpoints(self) -> dict[str, str]:
        return {d: f"tcp://{dev.address}" for d, dev in self.spec.devices.items() if dev.address}

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets (the workers keep running; ``shutdown_workers`` stops them)."""
        self.workers.close()

    # ---- public API ------------------------------------------------------------------------------
    @property
    def available(self) -> frozenset[str]:
        """Devices whose workers are up."""
        return self.workers.available

    @property
    def failures(self) -> list[tuple[float, str]]:
        """(time, device) of every worker found down."""
        return self.workers.failures

    @property
    def link_samples(self) -> deque[tuple[float, str, str, int, float]]:
        """(end, sender, receiver, bytes, radio seconds) of every piece of every transfer measured."""
        return self.telemetry.link_samples

    @property
    def compute_samples(self) -> deque[tuple[float, str, int, float]]:
        """(end, device, FLOPs, seconds) of the tasks of every finished request."""
        return self.telemetry.compute_samples

    @property
    def fidelity(self) -> FidelityMeter:
        """Achieved over nominal compute speed per device (emulation)."""
        return self.telemetry.fidelity

    def transfers_in_progress(self) -> list[tuple[str, str, int, float]]:
        """(sender, receiver, bytes, start wall time) of every transfer reported started and not ended."""
        return self.telemetry.transfers_in_progress()

    @property
    def dilation(self) -> float:
        """The emulation's time dilation D (1 without emulation): wall time runs D x the emulated time,
        so every time this controller reports is wall time / D (runtime/emulation.py)."""
        return self.emulation.dilation if self.emulation is not None else 1.0

    def now(self) -> float:
        """Emulated seconds since the emulation epoch: the time axis of link and speed schedules."""
        return (time.time() - self.epoch) / self.dilation

    @property
    def plan(self) -> Plan | None:
        """The plan in force of the default lane."""
        return self.plan_of(DEFAULT_LANE)

    def plan_of(self, lane: str) -> Plan | None:
        """The plan in force of ``lane`` (None before its first ``deploy``)."""
        pid = self._current.get(lane)
        return None if pid is None else self._deployed[pid].plan

    def deployment_of(self, device: str, lane: str = DEFAULT_LANE) -> Deployment | None:
        """What ``device`` was sent of ``lane``'s plan in force (its DEPLOY), if it has a part in it."""
        pid = self._current.get(lane)
        return None if pid is None else self._deployed[pid].parts.get(device)

    def deploy(self, plan: Plan, lane: str = DEFAULT_LANE) -> Plan:
        """Make ``plan`` the plan of every request of ``lane`` submitted from now on; returns the plan in
        force.

        Requests already in flight finish on their own plan. If a device fails during the deployment,
        the replanner is asked for a plan without it, and that plan is returned.
        """
        plan.validate(self.graph, self.available)
        try:
            self._deploy(plan, lane)
        except _DeployFailed:
            self._recover()
        return self.plan_of(lane)

    def submit(self, x: torch.Tensor, lane: str = DEFAULT_LANE) -> int:
        """Send one request on ``lane``'s plan without waiting; returns its id (see ``collect``)."""
        rid = self._submit(x, lane)
        self._submitted.add(rid)
        return rid

    def collect(self, timeout_s: float) -> list[Result]:
        """Wait up to ``timeout_s`` for messages; the results of ``submit``'s requests finished so far."""
        self._step(timeout_s)
        done = [rid for rid in self._submitted if rid in self._results]
        self._submitted.difference_update(done)
        return [self._results.pop(rid) for rid in sorted(done)]

    def infer(self, x: torch.Tensor) -> Result:
        """Run one request on the current plan and wait for its result."""
        rid = self._submit(x)
        while rid not in self._results:
            self._step(self.heartbeat_s)
        return self._results.pop(rid)

    def stream(self, xs: Iterable[torch.Tensor], window: int = 2) -> Iterator[Result]:
        """Run requests with up to ``window`` in flight; yields results in submission order.

        Between two yields the caller may ``deploy`` another plan: later requests use it. Closing
        the iterator early abandons the requests still in flight.
        """
        if window < 1:
            raise ValueError("window must be >= 1")
        inputs, order, exhausted = iter(xs), deque(), False
        pending = self.attempts.pending
        try:
            while True:
                while not exhausted and len(pending) < window:
                    x = next(inputs, None)
                    if x is None:
                        exhausted = True
                    else:
                        order.append(self._submit(x))
                if not order:
                    return
                if order[0] in self._results:
                    yield self._results.pop(order.popleft())
                else:
                    self._step(self.heartbeat_s)
        finally:
            for rid in order:
                self._results.pop(rid, None)
                if rid in pending:
                    self._forget(pending[rid])

    def ping(self, timeout_s: float | None = None) -> dict[str, WorkerStatus]:
        """Ping every worker, wait for the answers (or ``timeout_s``) and return their status."""
        deadline = time.time() + (timeout_s if timeout_s is not None else self.dead_after_s)
        round_ = self.workers.ping_all(time.time())
        # wait for this round's PONGs: a heartbeat's PONG still in flight would carry older stats
        while time.time() < deadline and not self.workers.answered(round_):
            self._step(0.05)
        return self.status()

    def status(self) -> dict[str, WorkerStatus]:
        """Last known status of every worker (stats as reported in its last PONG)."""
        return self.workers.status()

    def configure(self, emulation: Emulation | None) -> None:
        """Change the emulation (e.g. new link schedules) on every live worker; the epoch is kept."""
        self.emulation = emulation
        self._configure([d for d, p in self.workers.peers.items() if p.up], self.dead_after_s * 5)

    def restart_clock(self) -> None:
        """Start every emulation schedule again from t=0: replays the same traces, e.g. for another planner.

        Telemetry gathered so far is dropped, since its times refer to the old clock.
        """
        self.epoch = time.time()
        self.telemetry.clear()
        self.configure(self.emulation)

    def in_flight(self) -> list[InFlight]:
        """The requests whose attempt is still running (no output yet), oldest first."""
        now = time.time()
        out = []
        for p in self.attempts.pending.values():
            if p.output is None:
                dep = self._deployed[p.plan_id]
                progress = min(1.0, p.radio_done / dep.radio_bytes) if dep.radio_bytes else 0.0
                elapsed = (now - p.sent) / self.dilation
                current = p.plan_id == self._current[p.lane]
                out.append(InFlight(p.rid, dep.plan, current, elapsed, progress, p.rescues, p.lane))
        return out

    def restart(self, rid: int) -> bool:
        """Rescue request ``rid``: start it again on the plan in force and abandon its running attempt.

        Only a request still running on another plan than its lane's (starting over on the same plan gains
        nothing); returns whether it was. Rescues do not count against ``max_attempts``, which bounds
        restarts after failures.
        """
        p = self.attempts.pending.get(rid)
        if p is None or p.output is not None or p.plan_id == self._current[p.lane]:
            return False
        log.info(
            "request %d: rescued onto plan %d after %.1f s", rid, self._current[p.lane], time.time() - p.sent
        )
        p.rescues += 1
        self._start(p)
        return True

    def attach(
        self, replan: Replanner | None, watch: Watcher | None = None, *, lane: str = DEFAULT_LANE
    ) -> None:
        """Hand the controller a caller's policies (None: the default). ``replan(available)`` gives ``lane``
        a plan over the devices up when its plan needs one that went down (default: ``fallback_plan``);
        ``watch()``, the one watcher of every lane, is called every ``watch_every_s`` while requests run,
        so a serving loop can re-plan and ``restart`` them mid-request."""
        if lane == DEFAULT_LANE:
            self.replan = replan
        else:
            self.replanners[lane] = replan
        self.watch = watch

    def shutdown_workers(self, timeout_s: float = 2.0) -> None:
        """Ask every live worker to exit and wait (up to ``timeout_s``) for their acknowledgements."""
        asked = set(self.available)
        for d in asked:
            self.workers.send(d, Header(Kind.SHUTDOWN, 0))
        deadline = time.time() + timeout_s
        while asked and time.time() < deadline:
            for dev, msg in self.workers.receive(0.05):
                if msg.header.kind == Kind.ACK:
                    asked.discard(dev)
                    self.workers.peers[dev].up = False

    # ---- configuration ---------------------------------------------------------------------------
    def _configure(self, devices: list[str], timeout_s: float) -> None:
        """Configure ``devices`` and wait until they acknowledged (those that do not stay down).

        Their clocks are read first (for a while at most: a silent worker is dealt with below), so that
        each worker's emulation schedules start at the controller's epoch on its own clock.
        """
        peers = self.workers.peers
        deadline = time.time() + timeout_s
        clocks_by = min(deadline, time.time() + self.dead_after_s)
        for d in devices:  # (so that their PONGs meanwhile do not configure them on their own)
            peers[d].configuring = True
        while time.time() < clocks_by and not all(peers[d].clock.known for d in devices):
            self._pump(0.05)
        for d in devices:
            self._send_config(d)
        while time.time() < deadline and any(peers[d].configuring for d in devices):
            self._pump(0.05)
        if failed := [d for d in devices if peers[d].config_error]:
            raise ControllerError("; ".join(f"worker {d}: {peers[d].config_error}" for d in failed))
        if late := [d for d in devices if peers[d].configuring]:
            if len(late) == len(peers):
                raise ControllerError(f"no worker answered within {timeout_s:g} s")
            log.warning("worker(s) %s did not answer: down until they do", late)

    def _send_config(self, dev: str, reset: bool = False) -> None:
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
        if self.emulation is not None:
            meta["emulation"], tensors = emulation_to_wire(
                self.emulation.for_device(self.spec, dev, self.epoch + peer.clock.seconds)
            )
        peer.configuring, peer.config_error = True, None
        self.workers.send(dev, Header(Kind.CONFIG, 0, meta), tensors)

    # ---- messages from the workers ---------------------------------------------------------------
    def _pump(self, timeout_s: float, intercept: Callable[[str, Message], bool] | None = None) -> None:
        """Heartbeats, incoming messages and failure detection (failures are queued, not handled).

        ``intercept(device, message)`` sees every message first and returns True for those it consumed.
        """
        self.workers.heartbeat(time.time())
        for dev, msg in self.workers.receive(min(timeout_s, self.heartbeat_s)):
            if intercept is None or not intercept(dev, msg):
                self._handle(dev, msg)
        self.workers.mark_silent_down()

    def _handle(self, dev: str, msg: Message) -> None:
        try:
            self._dispatch(dev, msg)
        except (KeyError, TypeError, ValueError) as exc:  # a malformed reply must not stop the controller
            log.warning("ignoring a malformed %s from worker %s: %s", msg.header.kind.value, dev, exc)

    def _dispatch(self, dev: str, msg: Message) -> None:
        kind, meta = msg.header.kind, self._on_our_clock(dev, msg)
        peer = self.workers.peers[dev]
        if kind == Kind.PONG:
            if self.workers.on_pong(dev, msg):
                self._send_config(dev, reset=True)
        elif kind == Kind.ACK and peer.configuring:
            peer.up, peer.configuring, peer.boot, peer.silent_since = True, False, meta.get("boot"), None
        elif kind == Kind.RESULT:
            p = self._attempt_of(dev, msg)
            if p is not None and p.output is None:
                self._accept_result(dev, p, msg)
        elif kind in (Kind.PROGRESS, Kind.TELEMETRY, Kind.ERROR) and not self._in_plans(dev, msg):
            log.warning("dropped a %s from worker %s, which has no part in its plan", kind.value, dev)
        elif kind == Kind.PROGRESS and meta.get("ev") == "compute":
            self.attempts.charge_compute(dev, msg.header.rid, meta.get("start"), meta.get("end"))
        elif kind == Kind.PROGRESS:
            if (report := self.telemetry.progress(dev, meta)) is not None:
                self.attempts.on_transfer(msg.header.rid, meta.get("plan"), report)
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

    def _on_telemetry(self, dev: str, wire: int, meta: dict[str, Any]) -> None:
        p = self.attempts.current(wire)
        if p is not None and meta.get("plan") == p.plan_id:
            parts = self._deployed[p.plan_id].parts
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
            or dev not in self._deployed[p.plan_id].parts
        ):
            return None
        return p

    def _in_plans(self, dev: str, msg: Message) -> bool:
        """Whether ``dev`` has a part in the plan of the attempt a report is about (an attempt no longer
        known: in any plan still deployed)."""
        p = self.attempts.current(msg.header.rid)
        if p is not None:
            return dev in self._deployed[p.plan_id].parts
        return (
            msg.header.rid == 0
            or any(dev in d.parts for d in self._deployed.values())
            or self.attempts.is_abandoned(msg.header.rid)
        )

    def _accept_result(self, dev: str, p: PendingRequest, msg: Message) -> None:
        """Take an output only from the attempt's sink, with the model's output shape and dtype."""
        want = (len(p.x), *self.graph.boundary_shape(len(self.graph.units)))
        done = msg.header.meta.get("done")
        if dev != self._deployed[p.plan_id].plan.sink or len(msg.tensors) != 1 or type(done) is not float:
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

    # ---- deployment ------------------------------------------------------------------------------
    def _route(self, a: str, b: str) -> list[str]:
        """Route between two live devices, avoiding devices that are down."""
        up = self.available
        if up not in self._live_specs:
            self._live_specs[up] = replace(
                self.spec,
                devices={d: v for d, v in self.spec.devices.items() if d in up},
                links=tuple(ln for ln in self.spec.links if ln.a in up and ln.b in up),
                source=a,
                sink=b,
            )
        return self._live_specs[up].route(a, b)

    def _deploy(self, plan: Plan, lane: str = DEFAULT_LANE) -> None:
        pid = self._new_id()
        try:
            parts = deployments(self.graph, plan, pid, self.model, self.seed, self._route)
        except SpecError as exc:
            raise PlanError(f"plan cannot be routed over the live devices: {exc}") from None
        for d, dep in parts.items():
            # rid = plan id, so a refusal can be told apart from one of an older deployment that a
            # restarted worker may receive first (messages queued for it while it was down)
            self.workers.send(d, Header(Kind.DEPLOY, pid, {"deploy": dep.to_meta(), "retire": []}))
        self._await_confirmations(_Deployed(pid, plan, parts))
        radio = sum(t.nbytes for t in layout(self.graph, plan).transfers if t.src != t.dst)
        self._deployed[pid] = _Deployed(pid, plan, parts, radio)
        previous, self._current[lane] = self._current.get(lane), pid
        self._retire_unused(previous)

    def _await_confirmations(self, dep: _Deployed) -> None:
        """Wait until every device of ``dep`` confirmed it; on a refusal or a device found down, retire
        it and raise (ControllerError, _DeployFailed)."""
        pid, waiting, refused = dep.plan_id, set(dep.parts), []

        def confirmations(dev: str, msg: Message) -> bool:
            if msg.header.kind == Kind.DEPLOY_OK and msg.header.meta.get("plan") == pid:
                waiting.discard(dev)
                return True
            if (
                msg.header.kind == Kind.ERROR
                and msg.header.meta.get("kind") == "deploy"
                and msg.header.rid == pid
            ):
                refused.append(f"worker {dev} refused plan {pid}: {msg.header.meta.get('message')}")
                return True
            return False

        deadline = time.time() + max(30.0, 5 * self.dead_after_s)
        while waiting:
            if time.time() > deadline:
                raise ControllerError(f"worker(s) {sorted(waiting)} did not confirm plan {pid}")
            self._pump(self.heartbeat_s, confirmations)
            if refused:
                self._retire(dep)
                raise ControllerError("; ".join(refused))
            if down := waiting - self.available:
                self._retire(dep)
                raise _DeployFailed(sorted(down))

    def _retire_unused(self, pid: int | None) -> None:
        if pid is None or pid in self._current.values() or pid not in self._deployed:
            return
        if not self.attempts.using(pid):
            self._retire(self._deployed.pop(pid))

    def _retire(self, dep: _Deployed) -> None:
        for d in dep.parts:
            if d in self.available:
                self.workers.send(d, Header(Kind.DEPLOY, 0, {"deploy": None, "retire": [dep.plan_id]}))

    def _cancel(self, dep: _Deployed, wire: int) -> None:
        """Make the workers of ``dep`` drop attempt ``wire`` (the plan stays: other requests use it)."""
        meta = {"deploy": None, "retire": [], "cancel": [[dep.plan_id, wire]]}
        for d in dep.parts:
            if d in self.available:
                self.workers.send(d, Header(Kind.DEPLOY, 0, meta))

    # ---- requests --------------------------------------------------------------------------------
    def _submit(self, x: torch.Tensor, lane: str = DEFAULT_LANE) -> int:
        if lane not in self._current:
            raise ControllerError(
                f"no plan deployed on lane {lane!r}: call deploy(plan{f', lane={lane!r}' if lane else ''}) first"
            )
        x = torch.as_tensor(x, dtype=torch.float32)
        x = (x.unsqueeze(0) if x.dim() == 3 else x).contiguous()
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"input shape {tuple(x.shape)} does not fit the model's {self.input_shape}")
        p = self.attempts.add(x, lane)
        self._start(p)
        return p.rid

    def _start(self, p: PendingRequest) -> None:
        """Send (again) request ``p`` on its lane's plan in force under a fresh attempt id.

        A previous attempt is abandoned on the workers: retired with its plan if no other request uses
        that plan, cancelled on its own otherwise.
        """
        if p.attempts - p.rescues >= self.max_attempts:
            self._forget(p)
            raise ControllerError(f"request {p.rid} failed {p.attempts - p.rescues} times; giving up")
        old, old_wire = p.plan_id, p.wire
        self.attempts.renew(p, self._current[p.lane], self._new_id())
        self._retire_unused(old)
        if old_wire != -1 and old in self._deployed:
            self._cancel(self._deployed[old], old_wire)
        source = self._deployed[p.plan_id].plan.source
        self.workers.send(source, Header(Kind.INPUT, p.wire, {"plan": p.plan_id}), [p.x])

    def _forget(self, p: PendingRequest) -> None:
        self.attempts.forget(p)
        self._retire_unused(p.plan_id)

    def _step(self, timeout_s: float) -> None:
        """Wait a little for messages, then recover from failures and finish what can be finished."""
        self._pump(timeout_s)
        if self.workers.newly_down:
            self._recover()
        now = time.time()
        for p in list(self.attempts.pending.values()):
            if p.error is not None:
                self._forget(p)
                raise RequestFailed(
                    f"request {p.rid}: worker {p.error.get('device')}: {p.error.get('message')}"
                )
            dep = self._deployed[p.plan_id]
            if p.output is not None:
                if set(dep.parts) <= set(p.telemetry) or now - p.received > self.telemetry_grace_s:
                    self._finish(p, dep)
            elif now - p.sent > self.request_timeout_s:
                log.warning("request %d timed out after %.1f s: sending it again", p.rid, now - p.sent)
                self._start(p)
        if self.watch is not None and now - self._last_watch >= self.watch_every_s and self.in_flight():
            self._last_watch = now
            self.watch()

    def _recover(self) -> None:
        """Handle the workers found down: a new plan for each lane whose plan needs them, re-run their
        requests."""
        newly_down = self.workers.newly_down
        while newly_down:
            down = set(newly_down)
            newly_down.clear()
            try:
                for lane, pid in list(self._current.items()):
                    if not set(self._deployed[pid].parts) <= self.available:
                        self._deploy(self._next_plan(lane), lane)
            except _DeployFailed:
                continue  # the newly failed devices are queued: plan again
            for p in list(self.attempts.pending.values()):
                if p.output is None and self._uses(
                    p.plan_id, down | (set(self.spec.devices) - self.available)
                ):
                    self._start(p)

    def _uses(self, pid: int, devices: set[str]) -> bool:
        return bool(set(self._deployed[pid].parts) & devices)

    def _next_plan(self, lane: str = DEFAULT_LANE) -> Plan:
        available = self.available
        replan = self.replan if lane == DEFAULT_LANE else self.replanners.get(lane)
        plan = (
            replan(available)
            if replan is not None
            else fallback_plan(self.plan_of(lane), available, self.spec)
        )
        plan.validate(self.graph, available)
        self.replans += 1
        log.warning("replanned lane %r for devices %s: %s", lane, sorted(available), plan.describe())
        return plan

    def _finish(self, p: PendingRequest, dep: _Deployed) -> None:
        events = [e for evs in p.telemetry.values() for e in evs]
        starts = [e["t"] for e in events if e["ev"] == "input"]
        # a restarted request's latency includes the time its abandoned attempts ran
        latency = (p.done_at - starts[0] if starts else p.received - p.sent) + p.sent - p.first_sent
        self.telemetry.add_request(events)
        d = self.dilation
        complete = set(dep.parts) <= set(p.telemetry)
        timeline = build_timeline(
            self.spec, dep.parts, [undilated(e, self.epoch, d) for e in events], latency / d, complete
        )
        energy = sum(t.energy_j for t in timeline.devices.values()) + p.abandoned_j / d
        verified = None if self.verifier is None else self.verifier.check(p.rid, p.x, p.output)
        result = Result(
            p.rid,
            p.output,
            latency / d,
            energy,
            timeline,
            dep.plan,
            (p.received - p.submitted) / d,
            p.attempts,
            p.rescues,
            verified,
        )
        self._results[p.rid] = result
        self._forget(p)
