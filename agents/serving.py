"""Live serving: a stream of requests on a running cluster, re-planned online from its own telemetry.

The loop keeps a live Snapshot (env/telemetry.py: bandwidth from real transfers, speed from compute
times, liveness from heartbeats) and asks the planner for a new plan every ``replan_every`` requests or
as soon as conditions move: a link the current plan uses measures more than ``threshold`` away from what
the plan was made for, a device's speed does, or a device leaves or returns. The new plan replaces the
one in force only when it pays (``worth_swapping``): both priced by the cost model on the same snapshot,
its gain must beat ``replan_margin`` x the plan in force's score plus the swap's own cost (the measured
time of recent hot swaps), so estimates that wobble do not swap plans back and forth (``replan_margin``
None: any different plan is swapped in, the rule before this one). Plans are hot-swapped
between requests (the controller finishes in-flight requests on their own plan), and a dead worker is
handled by the controller, which asks the same planner for a plan without it and re-runs what it
touched. If the planner fails or returns an invalid plan, the robust optimiser (`optimal`) decides instead.
``static=True`` plans once at the start and never again: the reference an adaptive run is measured
against.

Rescue (adaptive runs): conditions can collapse in the middle of a request, and the request then pays
the plan made for the old conditions for as long as it runs (at 20 -> 2 Mbit/s, 12-15 s for a 2.5 s
plan, while a plan made for 2 Mbit/s takes 5-6 s). So the loop also watches while a request runs
(``Controller.watch``, every 0.2 s): the live view sees transfers that are overdue before they end, the
plan is re-made as soon as conditions moved, and it is swapped in at once only to restart a running
request on it (otherwise it waits for the request's end), when ``worth_restarting``: the cost model's
time for the rest of its attempt under the new conditions exceeds ``rescue_margin`` x a fresh start on
the new plan. The margin pays for what the
estimate of the rest gets wrong (progress is measured in radio bytes, compute is not) and for the work
thrown away; a request is rescued at most ``MAX_RESCUES`` times.

Every output is checked against the unsplit model on a pool of seeded inputs whose reference outputs
are computed before serving starts (so the check costs the cluster nothing while it runs).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import psutil
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agents.base import Planner
from agents.robust import RobustPlanner
from env.cost_model import Cost, CostModel, Objective
from env.snapshot import Snapshot, link_key
from env.telemetry import LiveView
from runtime.cluster import LocalCluster
from runtime.controller import InFlight
from runtime.graph import LayerGraph
from runtime.plan import Plan, PlanError

log = logging.getLogger("agents.serving")

MAX_RESCUES = 2  # per request: a third restart would mostly throw away work the second one did


@dataclass
class ServeOptions:
    requests: int = 50
    duration_s: float | None = None  # stop after this many seconds instead (requests is then a cap)
    replan_every: int = 10
    threshold: float = 0.5
    static: bool = False
    window: int = 1  # requests in flight (pipelining)
    arrival_every_s: float | None = None  # open loop: request k arrives at k * this, however slow the cluster
    chaos: list[tuple[int, str, str]] = field(
        default_factory=list
    )  # (request index, "kill"|"restart", device)
    input_pool: int = 4
    seed: int = 0
    rescue_margin: float | None = 1.2  # adaptive runs: restart a stuck request (None: never)
    # a new plan must gain this share of the score in force (None: any different plan is swapped in)
    replan_margin: float | None = 0.1
    # link and speed schedules start at t=0 with the first request (after warm-up)
    restart_clock: bool = False


@dataclass
class RequestLog:
    index: int
    rid: int
    time_s: float
    latency_s: float
    energy_j: float
    outputs_match: bool
    plan: str
    replanned: bool
    waited_s: float = 0.0  # open loop: from the request's arrival until the cluster took it
    rescues: int = 0  # times it was restarted on a newer plan while it ran

    @property
    def response_s(self) -> float:
        """Latency as the client sees it: waiting for the cluster, then being served."""
        return self.waited_s + self.latency_s


class Tally:
    """What a run's summary needs, in 16 bytes and one bit per request.

    A serving process runs for hours: it keeps latencies and energies as packed doubles and the request ids
    it has seen as a bitmap (to count duplicates; ids are dense), never the records themselves
    (``on_result`` streams those to CSV and TensorBoard).
    """

    def __init__(self) -> None:
        self.latency_s = array("d")
        self.energy_j = array("d")
        self.duplicated = 0
        self.mismatched = 0
        self.rescued = 0
        self._seen = bytearray()  # bit k: request id self._base + k was seen
        self._base: int | None = None

    def add(self, record: RequestLog) -> None:
        self.latency_s.append(record.response_s)
        self.energy_j.append(record.energy_j)
        self.mismatched += not record.outputs_match
        self.rescued += record.rescues > 0
        if self._base is None:
            self._base = record.rid - record.rid % 8
        if record.rid < self._base:  # ids start anywhere (the controller's are random-based)
            grow = (self._base - record.rid) // 8 + 4096
            self._seen[:0] = bytes(grow)
            self._base -= 8 * grow
        byte, bit = divmod(record.rid - self._base, 8)
        if byte >= len(self._seen):
            self._seen.extend(bytes(byte + 1 - len(self._seen) + 4096))
        if self._seen[byte] >> bit & 1:
            self.duplicated += 1
        self._seen[byte] |= 1 << bit

    @property
    def completed(self) -> int:
        return len(self.latency_s) - self.duplicated


@dataclass
class ServeReport:
    agent: str
    tally: Tally
    requests: int
    replans: int
    worker_kills: int
    fallbacks: int
    rss_mb: list[tuple[int, float]]  # (request index, controller RSS in MB), every 100 requests

    def summary(self) -> dict:
        t = self.tally
        lat = np.asarray(t.latency_s) if t.latency_s else np.array([math.nan])
        return {
            "agent": self.agent,
            "requests": self.requests,
            "completed": t.completed,
            "lost": self.requests - t.completed,
            "duplicated": t.duplicated,
            "outputs_match": t.mismatched == 0,
            "replans": self.replans,
            "latency_mean_s": float(lat.mean()),
            "latency_p50_s": float(np.percentile(lat, 50)),
            "latency_p95_s": float(np.percentile(lat, 95)),
            "energy_mean_j": float(np.mean(t.energy_j)) if t.energy_j else math.nan,
            "worker_kills": self.worker_kills,
            "planner_fallbacks": self.fallbacks,
            "rescued": t.rescued,
        }


class Decider:
    """The planner, with the optimiser behind it when the planner fails."""

    def __init__(
        self, planner: Planner, graph: LayerGraph, objective: Objective, fallback: Planner | None = None
    ):
        self.planner, self.graph, self.objective = planner, graph, objective
        self.fallback = fallback or RobustPlanner()
        self.fallbacks = 0

    def __call__(self, snapshot: Snapshot) -> Plan:
        try:
            plan = self.planner.plan(snapshot, self.graph, self.objective)
            return plan.validate(self.graph, snapshot.available)
        except (PlanError, ValueError, RuntimeError) as exc:
            self.fallbacks += 1
            log.warning("planner %s failed (%s); the optimiser decides", self.planner, exc)
            return self.fallback.plan(snapshot, self.graph, self.objective)


def moved(plan: Plan, made_on: Snapshot, now: Snapshot, threshold: float) -> bool:
    """Whether conditions that matter to ``plan`` changed by more than ``threshold`` (relative)."""
    if made_on.available != now.available:
        return True
    devices = {d for s in plan.stages for d in s.devices} | {plan.source, plan.sink}
    for d in devices:
        if abs(now.speed[d] - made_on.speed[d]) > threshold * made_on.speed[d]:
            return True
    used = set()
    for a in devices:
        for b in devices:
            if a < b:
                route = now.spec.route(a, b)
                used |= {link_key(x, y) for x, y in zip(route[:-1], route[1:], strict=True)}
    return any(abs(now.link_mbps[k] - made_on.link_mbps[k]) > threshold * made_on.link_mbps[k] for k in used)


def worth_swapping(
    cost: CostModel,
    objective: Objective,
    in_force: Plan,
    candidate: Plan,
    snapshot: Snapshot,
    margin: float,
    swap_s: float,
) -> bool:
    """Whether ``candidate`` should replace the plan in force: priced on the same ``snapshot``, its gain
    beats ``margin`` x the plan in force's score plus what the swap itself costs (``swap_s`` seconds, in
    the objective's units). A plan in force that needs a device now down is always replaced."""
    if not in_force.devices <= snapshot.available:
        return True
    now = objective.score(cost.cost(in_force, snapshot))
    new = objective.score(cost.cost(candidate, snapshot))
    return now - new > margin * now + objective.score(Cost(swap_s, 0.0))


def worth_restarting(
    cost: CostModel, running: InFlight, plan: Plan, snapshot: Snapshot, margin: float
) -> bool:
    """Whether restarting ``running`` on ``plan`` beats letting it finish, under ``snapshot``.

    The rest of the running attempt is its plan's predicted latency under the new conditions scaled by
    the share of its radio bytes not yet delivered; a restart pays ``plan``'s whole predicted latency,
    times ``margin``.
    """
    rest = cost.latency(running.plan, snapshot) * (1.0 - running.progress)
    return rest > margin * cost.latency(plan, snapshot)


def serve(
    cluster: LocalCluster,
    model: torch.nn.Module,
    decide: Decider,
    options: ServeOptions,
    *,
    agent: str,
    console: Console | None = None,
    on_result: Callable[[RequestLog], None] | None = None,
    observe: Callable[[], Snapshot] | None = None,
) -> ServeReport:
    """Serve ``options.requests`` requests on a started cluster (see the module docstring).

    Closed loop by default: the next request enters as soon as the window has room. With
    ``options.arrival_every_s`` requests arrive on a fixed schedule instead (open loop, one at a time) and
    count their wait for the cluster in their latency, so a slow spell is not hidden by fewer requests
    being issued during it.

    ``observe`` gives the planner its Snapshot; by default a LiveView of the cluster's own telemetry (a
    benchmark may pass the emulated world's exact snapshots, to measure what perfect knowledge would gain).
    """
    if options.arrival_every_s is not None and options.window != 1:
        raise ValueError("open-loop serving (arrival_every_s) runs one request at a time (window=1)")
    ctl = cluster.controller
    observe = observe or LiveView(cluster.spec, ctl).snapshot
    gen = torch.Generator().manual_seed(options.seed)
    pool = [torch.randn(1, *ctl.input_shape, generator=gen) for _ in range(options.input_pool)]
    with torch.no_grad():
        expected = [model(x) for x in pool]
    ctl.replan = lambda available: decide(replace(observe(), available=frozenset(available)))
    made_on = observe()
    ctl.deploy(decide(made_on))
    replans, kills, tally, rss = 0, 0, Tally(), []
    switched = False  # the plan changed while a request was running
    cost = decide.planner.cost_model(
        decide.graph, cluster.spec
    )  # the replan and rescue rules' (the planner's)
    swaps: deque[float] = deque(maxlen=5)  # seconds of the latest hot swaps: what the next one will cost

    def swap_in(plan: Plan, now: Snapshot) -> bool:
        """Deploy ``plan`` if it is not the plan in force and pays for the swap; whether it was."""
        nonlocal replans
        if plan == ctl.plan:
            return False
        if options.replan_margin is not None and not worth_swapping(
            cost, decide.objective, ctl.plan, plan, now, options.replan_margin, float(np.mean(swaps or [0.0]))
        ):
            return False
        started = time.perf_counter()
        ctl.deploy(plan)
        swaps.append(time.perf_counter() - started)
        replans += 1
        return True

    def replan(now: Snapshot, due: bool) -> bool:
        """Between requests: re-make the plan when ``due`` or when conditions moved since it was made, and
        swap it in when it pays; whether the plan changed."""
        nonlocal made_on, watched_on
        if not (due or moved(ctl.plan, made_on, now, options.threshold)):
            return False
        made_on = watched_on = now
        return swap_in(decide(now), now)

    def watch() -> None:
        """While requests run: when conditions moved, ask for a plan and swap it in only if it rescues a
        running request (and pays for the swap); any other new plan waits for the request's end, when
        all its telemetry is in (plans swapped on a half-measured request's view made replans thrash).
        Requests still on a plan older than the one in force are rescued onto it when worth it."""
        nonlocal switched, made_on, watched_on
        now = observe()
        if moved(ctl.plan, watched_on, now, options.threshold):
            watched_on, plan = now, decide(now)
            stuck = any(
                r.rescues < MAX_RESCUES and worth_restarting(cost, r, plan, now, options.rescue_margin)
                for r in ctl.in_flight()
            )
            if stuck and swap_in(plan, now):
                made_on, switched = now, True
        for running in ctl.in_flight():
            if (
                not running.current
                and running.rescues < MAX_RESCUES
                and worth_restarting(cost, running, ctl.plan, now, options.rescue_margin)
            ):
                ctl.restart(running.rid)

    watched_on = made_on  # the snapshot the watch last decided on
    if not options.static:
        cost.latency(ctl.plan, made_on)  # loads its compiled kernels now (~0.6 s), not in the first decision
    if not options.static and options.rescue_margin is not None:
        ctl.watch = watch
    recoveries_before = ctl.replans  # the controller's own replans (dead workers), counted per run
    served: tuple[Plan | None, str] = (None, "")  # the plan in service and its JSON, shared by its records
    chaos = {i: (action, device) for i, action, device in options.chaos}
    process = psutil.Process()
    if options.restart_clock:
        ctl.restart_clock()
    start = ctl.now()

    waits: deque[float] = deque()  # per request in flight, oldest first: seconds it waited for the cluster

    def inputs():
        for i in range(options.requests):
            due = ctl.now() if options.arrival_every_s is None else start + i * options.arrival_every_s
            if options.duration_s is not None and due - start > options.duration_s:
                return
            if options.arrival_every_s is not None:
                time.sleep(max(0.0, due - ctl.now()))  # nothing is in flight meanwhile (window 1)
            waits.append(0.0 if options.arrival_every_s is None else max(0.0, ctl.now() - due))
            yield pool[i % len(pool)]

    def results():
        if options.window > 1:  # pipelined: the next requests are in flight before a result is seen
            yield from ctl.stream(inputs(), window=options.window)
            return
        for x in inputs():  # one at a time: a plan chosen after a result serves the very next request
            yield ctl.infer(x)

    columns = (
        TextColumn(f"[bold]{agent}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(agent, total=options.requests, status="")
            for index, result in enumerate(results()):
                match = bool(torch.allclose(result.output, expected[index % len(pool)], rtol=1e-4, atol=1e-5))
                replanned, switched = switched, False
                if served[0] is not result.plan:
                    served = (result.plan, result.plan.to_json())
                if index + 1 in chaos:
                    action, device = chaos[index + 1]
                    if action == "kill":
                        cluster.kill(device)
                        kills += 1
                    else:
                        cluster.restart(device)
                if not options.static and replan(observe(), due=(index + 1) % options.replan_every == 0):
                    replanned = True
                record = RequestLog(
                    index,
                    result.rid,
                    ctl.now(),
                    result.latency_s,
                    result.energy_j,
                    match,
                    served[1],
                    replanned,
                    waits.popleft(),
                    result.rescues,
                )
                tally.add(record)
                if index % 100 == 0:
                    rss.append((index, process.memory_info().rss / 2**20))
                if on_result is not None:
                    on_result(record)
                progress.update(
                    task, advance=1, status=f"{result.latency_s:.3f}s {'exact' if match else 'MISMATCH'}"
                )
    finally:
        ctl.watch = None  # the cluster may serve another run next
    return ServeReport(
        agent,
        tally,
        len(tally.latency_s) if options.duration_s else options.requests,
        replans + ctl.replans - recoveries_before,
        kills,
        decide.fallbacks,
        rss,
    )


class MetricsWriter:
    """Per-request metrics to CSV and TensorBoard."""

    def __init__(self, out_dir: Path, agent: str):
        from torch.utils.tensorboard import SummaryWriter

        out_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = out_dir / f"{agent}.csv"
        self._file = self.csv_path.open("w", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(
            [
                "index",
                "rid",
                "time_s",
                "latency_s",
                "waited_s",
                "energy_j",
                "outputs_match",
                "replanned",
                "rescues",
            ]
        )
        self._tb = SummaryWriter(str(out_dir / "tensorboard" / agent))

    def __call__(self, r: RequestLog) -> None:
        self._csv.writerow(
            [
                r.index,
                r.rid,
                f"{r.time_s:.4f}",
                f"{r.latency_s:.6f}",
                f"{r.waited_s:.6f}",
                f"{r.energy_j:.6f}",
                r.outputs_match,
                r.replanned,
                r.rescues,
            ]
        )
        self._tb.add_scalar("serve/latency_s", r.response_s, r.index)
        self._tb.add_scalar("serve/energy_j", r.energy_j, r.index)
        self._tb.add_scalar("serve/replanned", float(r.replanned), r.index)

    def close(self) -> None:
        self._file.close()
        self._tb.close()
