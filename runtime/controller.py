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

The controller composes its connections to the workers (``runtime/connections.py``: sockets,
heartbeats, liveness, clocks), their configuration (``runtime/configuring.py``), the plans deployed on
them (``runtime/deployed.py``), the requests it awaits and their attempts (``runtime/attempts.py``), the
handling of every report the workers send (``runtime/reports.py``) and its telemetry; it drives requests
through its plans, recovers from failures and hands back ``Result``s (``runtime/results.py``).

Plans swap between requests: requests in flight finish on the plan they started with, the old plan is
retired on the workers once its last request is done.

Lanes: several streams of requests (cameras) can share the cluster, each on its own plan. ``deploy(plan,
lane=...)`` makes ``plan`` the plan in force of one lane and ``submit(x, lane=...)`` sends a request on it
without waiting (``collect`` returns finished results). A lane's hot swap, rescue or failure recovery only
touches that lane's requests. Liveness: the controller pings every worker while it waits; a worker that
stays silent for ``dead_after_s`` (or comes back with a new boot id) is marked down, the lane's replanner
(``attach``: ``replan(available_devices) -> Plan``; by default ``fallback_plan`` drops the device from
the current plan) gives a plan without it, and every request the failure touched is sent again under a
fresh attempt id. Only the current attempt of a request is accepted, so each
request yields exactly one result: nothing is lost, nothing duplicated. When no plan can be routed over
the devices still up (a relay on every path from the source is down), the requests wait until a worker
comes back, and are then planned and sent again.

Rescue: a request can be restarted on the plan in force while its attempt is still running
(``restart``), for when conditions collapsed under it and finishing the old attempt would take longer
than starting over. The caller decides when (``in_flight`` says how far each attempt got; the watcher
it ``attach``es is called while the controller waits, so a serving loop can re-plan in the middle of a request); the
controller sends the request again under a fresh attempt id and cancels the old attempt on its workers,
which drop its queued work and cut short the transfer or computation they are in the middle of.

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
from pathlib import Path

import torch

from runtime import models
from runtime.attempts import Attempts, PendingRequest
from runtime.configuring import WorkerConfiguration
from runtime.connections import DEAD_AFTER_S, WorkerConnections, WorkerStatus
from runtime.deployed import DeployedPlan, DeployedPlans, DeployFailed, Unroutable
from runtime.deployment import Deployment
from runtime.emulation import Emulation
from runtime.fidelity import FidelityMeter
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.replanning import Replanner, fallback_plan
from runtime.reports import WorkerReports
from runtime.results import DEFAULT_LANE, ControllerError, InFlight, RequestFailed, Result, result_of
from runtime.spec import ClusterSpec
from runtime.telemetry import Telemetry
from runtime.transport import MAX_MESSAGE_BYTES, Header, Kind, Message
from runtime.verify import Verifier

WATCH_EVERY_S = 0.2  # how often the watcher a serving loop attaches is called while requests run

log = logging.getLogger("runtime.controller")

Watcher = Callable[[], None]  # called while requests run


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
        dead_after_s: float = DEAD_AFTER_S,
        request_timeout_s: float = 120.0,
        connect_timeout_s: float = 60.0,
        max_attempts: int = 4,
        telemetry_grace_s: float = 2.0,
        history: int = 4096,
        watch: Watcher | None = None,
        watch_every_s: float = WATCH_EVERY_S,
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
        self._cut_off: frozenset[str] | None = None  # the devices up when no plan could be routed
        self.watch = watch  # called every ``watch_every_s`` while a request waits for its result
        self.watch_every_s = watch_every_s
        self._last_watch = 0.0
        self.telemetry = Telemetry(spec, history)
        self.attempts = Attempts(spec)
        self._submitted: set[int] = set()  # requests sent by ``submit``, for ``collect``
        self._results: dict[int, Result] = {}
        self.workers = self._connect(endpoints, curve_keys, curve_name, max_message_bytes)
        self.deployed = DeployedPlans(spec, self.graph, model, seed, self.workers, self.attempts, self._pump)
        self.configuration = WorkerConfiguration(spec, self.workers, self._pump, kernel_links)
        parts = self.graph, self.workers, self.deployed, self.attempts, self.telemetry
        self.reports = WorkerReports(*parts, reconfigure=self._reconfigure)
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
    def compute_samples(self) -> deque[tuple[float, str, int, float, float | None]]:
        """(end, device, FLOPs, seconds, seconds at the device's nominal speed: emulated devices only, else
        None) of the tasks of every finished request."""
        return self.telemetry.compute_samples

    @property
    def fidelity(self) -> FidelityMeter:
        """Achieved over nominal compute speed per device (emulation)."""
        return self.telemetry.fidelity

    def transfers_in_progress(self) -> list[tuple[str, str, int, float]]:
        """(sender, receiver, bytes, start wall time) of every transfer reported started and not ended,
        nor through (every byte carried, awaiting only the receiver's acknowledgement)."""
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
        dep = self.deployed.in_force(lane)
        return None if dep is None else dep.plan

    def deployment_of(self, device: str, lane: str = DEFAULT_LANE) -> Deployment | None:
        """What ``device`` was sent of ``lane``'s plan in force (its DEPLOY), if it has a part in it."""
        dep = self.deployed.in_force(lane)
        return None if dep is None else dep.parts.get(device)

    def deploy(self, plan: Plan, lane: str = DEFAULT_LANE) -> Plan:
        """Make ``plan`` the plan of every request of ``lane`` submitted from now on; returns the plan in
        force.

        Requests already in flight finish on their own plan. If a device fails during the deployment,
        the replanner is asked for a plan without it, and that plan is returned.
        """
        plan.validate(self.graph, self.available)
        try:
            self.deployed.deploy(plan, self._new_id(), lane)
        except DeployFailed:
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

    def _configure(self, devices: list[str], timeout_s: float) -> None:
        self.configuration.configure(devices, timeout_s, self.emulation, self.epoch)

    def _reconfigure(self, dev: str) -> None:
        """Configure again a worker back from down, dropping every deployment it may still hold."""
        self.configuration.send(dev, self.emulation, self.epoch, reset=True)

    def restart_clock(self, at: float = 0.0) -> None:
        """Start every emulation schedule again from t=``at``: replays the same traces, e.g. for another
        planner (a live comparison gives each planner's request the same seconds of them).

        Telemetry gathered so far is dropped, since its times refer to the old clock.
        """
        self.epoch = time.time() - at * self.dilation
        self.forget_telemetry()
        self.configure(self.emulation)

    def forget_telemetry(self) -> None:
        """Drop every link and compute sample and the transfers on the air: what the next serving run
        measures starts from nothing, as the first run's did."""
        self.telemetry.clear()

    def in_flight(self) -> list[InFlight]:
        """The requests whose attempt is still running (no output yet), oldest first."""
        now = time.time()
        out = []
        for p in self.attempts.pending.values():
            if p.output is None:
                dep = self.deployed.by_id[p.plan_id]
                progress = min(1.0, p.radio_done / dep.radio_bytes) if dep.radio_bytes else 0.0
                elapsed = (now - p.sent) / self.dilation
                current = p.plan_id == self.deployed.current[p.lane]
                out.append(InFlight(p.rid, dep.plan, current, elapsed, progress, p.rescues, p.lane))
        return out

    def restart(self, rid: int) -> bool:
        """Rescue request ``rid``: start it again on the plan in force and abandon its running attempt.

        Only a request still running on another plan than its lane's (starting over on the same plan gains
        nothing); returns whether it was. Rescues do not count against ``max_attempts``, which bounds
        restarts after failures.
        """
        p = self.attempts.pending.get(rid)
        if p is None or p.output is not None or p.plan_id == self.deployed.current[p.lane]:
            return False
        in_force = self.deployed.current[p.lane]
        log.info("request %d: rescued onto plan %d after %.1f s", rid, in_force, time.time() - p.sent)
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
        self.workers.shutdown(timeout_s)

    # ---- messages from the workers ---------------------------------------------------------------
    def _pump(self, timeout_s: float, intercept: Callable[[str, Message], bool] | None = None) -> None:
        """Heartbeats, incoming messages and failure detection (failures are queued, not handled).

        ``intercept(device, message)`` sees every message first and returns True for those it consumed.
        """
        self.workers.heartbeat(time.time())
        for dev, msg in self.workers.receive(min(timeout_s, self.heartbeat_s)):
            if intercept is None or not intercept(dev, msg):
                self.reports.handle(dev, msg)
        self.workers.mark_silent_down()

    # ---- requests --------------------------------------------------------------------------------
    def _submit(self, x: torch.Tensor, lane: str = DEFAULT_LANE) -> int:
        if lane not in self.deployed.current:
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
        self.attempts.renew(p, self.deployed.current[p.lane], self._new_id())
        self.deployed.retire_unused(old)
        if old_wire != -1 and old in self.deployed.by_id:
            self.deployed.cancel(old, old_wire)
        source = self.deployed.by_id[p.plan_id].plan.source
        self.workers.send(source, Header(Kind.INPUT, p.wire, {"plan": p.plan_id}), [p.x])

    def _forget(self, p: PendingRequest) -> None:
        self.attempts.forget(p)
        self.deployed.retire_unused(p.plan_id)

    def _step(self, timeout_s: float) -> None:
        """Wait a little for messages, then recover from failures and finish what can be finished."""
        self._pump(timeout_s)
        if self.workers.newly_down or (self._cut_off is not None and self.available - self._cut_off):
            self._recover()  # a worker went down, or one came back while nothing could be routed
        now = time.time()
        for p in list(self.attempts.pending.values()):
            if p.error is not None:
                self._forget(p)
                raise RequestFailed(
                    f"request {p.rid}: worker {p.error.get('device')}: {p.error.get('message')}"
                )
            dep = self.deployed.by_id[p.plan_id]
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
        requests. When no plan can be routed over the devices still up (a relay on every path from the
        source or to the sink is down), the requests wait: this runs again once a worker comes back, and
        then re-runs every request that waited."""
        newly_down = self.workers.newly_down
        waited, self._cut_off = self._cut_off is not None, None
        while newly_down or waited:
            down = set(newly_down)
            newly_down.clear()
            try:
                for lane, pid in list(self.deployed.current.items()):
                    # after a wait, every lane: a worker back from down holds none of its old plans
                    if waited or not set(self.deployed.by_id[pid].parts) <= self.available:
                        self.deployed.deploy(self._next_plan(lane), self._new_id(), lane)
            except DeployFailed:
                continue  # the newly failed devices are queued: plan again
            except Unroutable as exc:
                log.warning("%s: the requests wait for a worker to come back", exc)
                self._cut_off = self.available
                return
            for p in list(self.attempts.pending.values()):
                if p.output is None and (
                    waited or self._uses(p.plan_id, down | (set(self.spec.devices) - self.available))
                ):
                    self._start(p)
            waited = False

    def _uses(self, pid: int, devices: set[str]) -> bool:
        return bool(set(self.deployed.by_id[pid].parts) & devices)

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

    def _finish(self, p: PendingRequest, dep: DeployedPlan) -> None:
        verified = None if self.verifier is None else self.verifier.check(p.rid, p.x, p.output)
        result, events = result_of(p, dep.plan, dep.parts, self.spec, self.epoch, self.dilation, verified)
        self.telemetry.add_request(events)
        self._results[p.rid] = result
        self._forget(p)
