"""Live serving: a stream of requests on a running cluster, re-planned online from its own telemetry.

The loop keeps a live Snapshot (env/telemetry.py: bandwidth from real transfers, speed from compute
times, liveness from heartbeats) and asks the planner for a new plan every ``replan_every`` requests or
as soon as conditions move: a link the current plan uses measures more than ``threshold`` away from what
the plan was made for, a device's speed does, or a device leaves or returns. The new plan replaces the
one in force only when it pays (``worth_swapping``): both priced by the cost model on the same snapshot,
its gain must beat ``replan_margin`` x the plan in force's score plus the swap's own cost (the measured
time of recent hot swaps), so estimates that wobble do not swap plans back and forth (``replan_margin``
None: any different plan is swapped in, the rule before this one). In an open loop that fell behind, the
gain counts for the requests already waiting too (``backlog_weight``: each also waits for the ones ahead of
it). If even the fallback finds no plan (an outage cuts the source or sink off), the plan in force stays.
The planner runs on a thread of its own (``PlanningThread``): the loop waits ``plan_wait_s`` for a plan it
asked for, so a policy's plan (milliseconds) serves the very next request, while the robust optimiser
(seconds) plans as requests keep running on the plan in force, and its plan is taken up when done.
Plans are hot-swapped
between requests (the controller finishes in-flight requests on their own plan), and a dead worker is
handled by the controller, which asks the same planner for a plan without it and re-runs what it
touched. If the planner fails or returns an invalid plan, the robust optimiser (`optimal`) decides instead.
``static=True`` plans once at the start and never again: the reference an adaptive run is measured
against.

Rescue (adaptive runs): conditions can collapse in the middle of a request, and the request then pays
the plan made for the old conditions for as long as it runs (at 20 -> 2 Mbit/s, 12-15 s for a 2.5 s
plan, while a plan made for 2 Mbit/s takes 5-6 s). So the loop also watches while a request runs
(the controller's watcher, every 0.2 s): the live view sees transfers that are overdue before they end,
the plan is re-made as soon as conditions moved, and it is swapped in at once only to restart a running
request on it (otherwise it waits for the request's end), when ``worth_restarting``: the cost model's
time for the rest of its attempt under the new conditions exceeds ``rescue_margin`` x a fresh start on
the new plan. The margin pays for what the estimate of the rest gets wrong (progress is measured in
radio bytes, compute is not) and for the work thrown away; a request is rescued at most ``MAX_RESCUES``
times. The rules are in serving/rules.py, the policies that apply them in serving/policies.py.

What exists once serving is set up (modules, the model, its reference outputs, the planner's caches: some
370,000 objects for the tiny model) is frozen out of the garbage collector's full collections for the run
(serving/heap.py): walking them held the GIL for up to 0.7-1.7 s at a time while a planner allocated,
stalling the requests in flight; and the GIL switches every 0.5 ms instead of 5 (serving/gil.py): the
thread driving the cluster waited for it 40 ms in the median, and up to 0.6 s, while the robust
optimiser planned beside it.

Every output is checked against the unsplit model on a pool of seeded inputs whose reference outputs
are computed before serving starts (so the check costs the cluster nothing while it runs).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psutil
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from env.snapshot import Snapshot
from env.telemetry import LiveView
from runtime.cluster import LocalCluster
from runtime.controller import Result, Watcher
from runtime.exactness import matches, reference_pool
from runtime.plan import Plan
from serving.gil import prompt_switches
from serving.heap import setup_frozen
from serving.policies import Adaptive, Decider, ReplanPolicy, Rescue, Static
from serving.records import RequestLog, ServeReport, Tally
from serving.rules import waiting_requests


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
    # adaptive runs: how long the loop waits for a plan it asked for; a slower planner plans in the
    # background while requests run on the plan in force, and its plan is taken up when done
    plan_wait_s: float = 0.25
    # link and speed schedules start at t=0 with the first request (after warm-up), and the first plan is
    # made without what earlier runs on the cluster measured (on the old clock, at another point of the traces)
    restart_clock: bool = False


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
    """Serve ``options.requests`` requests on a started cluster with the policies ``options`` asks for:
    ``Static`` or ``Adaptive`` replanning, and ``Rescue`` in adaptive runs with a ``rescue_margin``.

    ``observe`` gives the planner its Snapshot; by default a LiveView of the cluster's own telemetry (a
    benchmark may pass the emulated world's exact snapshots, to measure what perfect knowledge would gain).
    """
    ctl = cluster.controller
    observe = observe or LiveView(cluster.spec, ctl).snapshot
    replanning: ReplanPolicy
    rescue: Rescue | None = None
    if options.static:
        replanning = Static(ctl, decide, observe)
    else:
        replanning = Adaptive(
            ctl, decide, observe, options.threshold, options.replan_margin, options.plan_wait_s
        )
        if options.rescue_margin is not None:
            rescue = Rescue(replanning, options.rescue_margin)
    server = Server(cluster, model, options, replanning, rescue, agent=agent, console=console)
    return server.run(on_result)


class Server:
    """One serving run on a started cluster (see the module docstring), with its replan policy and
    optional rescue policy handed in.

    Closed loop by default: the next request enters as soon as the window has room. With
    ``options.arrival_every_s`` requests arrive on a fixed schedule instead (open loop, one at a time) and
    count their wait for the cluster in their latency, so a slow spell is not hidden by fewer requests
    being issued during it.
    """

    def __init__(
        self,
        cluster: LocalCluster,
        model: torch.nn.Module,
        options: ServeOptions,
        replanning: ReplanPolicy,
        rescue: Watcher | None = None,
        *,
        agent: str,
        console: Console | None = None,
    ):
        if options.arrival_every_s is not None and options.window != 1:
            raise ValueError("open-loop serving (arrival_every_s) runs one request at a time (window=1)")
        self.cluster, self.controller, self.options = cluster, cluster.controller, options
        self.replanning, self.rescue = replanning, rescue
        self.agent, self.console = agent, console
        shape = self.controller.input_shape
        self.pool = reference_pool(model, shape, options.input_pool, options.seed)  # (input, expected output)
        self.tally = Tally()
        self.kills = 0
        self.rss: list[tuple[int, float]] = []  # (request index, controller RSS in MB), every 100 requests
        self.waits: deque[float] = deque()  # per request in flight, oldest first: seconds it waited
        self._chaos = {i: (action, device) for i, action, device in options.chaos}
        # the plan in service and its JSON, shared by its records
        self._served: tuple[Plan | None, str] = (None, "")
        self._start = 0.0  # when the first request was due (set by ``run``)
        self._process = psutil.Process()

    def run(self, on_result: Callable[[RequestLog], None] | None = None) -> ServeReport:
        """Serve every request, handing each record to ``on_result`` (CSV, TensorBoard) as it comes."""
        ctl, options = self.controller, self.options
        ctl.attach(self.replanning.for_devices, self.rescue)  # the watcher only runs once requests do
        try:
            if options.restart_clock:  # a replay of the traces: the first plan knows what the first run knew
                ctl.forget_telemetry()
            self.replanning.start()
            # what is set up stays out of full collections, and the planning thread never holds the GIL for
            # long, while serving (module doc)
            with setup_frozen(), prompt_switches():
                recoveries_before = ctl.replans  # the controller's own replans (dead workers), per run
                if options.restart_clock:
                    ctl.restart_clock()
                start = self._start = ctl.now()
                with Progress(*_COLUMNS, console=self.console, transient=True) as progress:
                    task = progress.add_task(self.agent, total=options.requests, status="")
                    for index, result in enumerate(self._results(start)):
                        record = self._record(index, result)
                        if on_result is not None:
                            on_result(record)
                        status = "exact" if record.outputs_match else "MISMATCH"
                        progress.update(task, advance=1, status=f"{result.latency_s:.3f}s {status}")
        finally:
            ctl.attach(self.replanning.for_devices)  # the watcher leaves: the cluster may serve another run
            self.replanning.close()
        return ServeReport(
            self.agent,
            self.tally,
            len(self.tally.latency_s) if options.duration_s else options.requests,
            self.replanning.replans + ctl.replans - recoveries_before,
            self.kills,
            self.replanning.decide.fallbacks,
            self.rss,
        )

    def _inputs(self, start: float) -> Iterator[torch.Tensor]:
        """The requests' inputs, each as it arrives (open loop) or at once (closed loop)."""
        ctl, options = self.controller, self.options
        for i in range(options.requests):
            due = ctl.now() if options.arrival_every_s is None else start + i * options.arrival_every_s
            if options.duration_s is not None and due - start > options.duration_s:
                return
            if options.arrival_every_s is not None:
                time.sleep(max(0.0, due - ctl.now()))  # nothing is in flight meanwhile (window 1)
            self.waits.append(0.0 if options.arrival_every_s is None else max(0.0, ctl.now() - due))
            yield self.pool[i % len(self.pool)][0]

    def _results(self, start: float) -> Iterator[Result]:
        if self.options.window > 1:  # pipelined: the next requests are in flight before a result is seen
            yield from self.controller.stream(self._inputs(start), window=self.options.window)
            return
        for x in self._inputs(start):  # one at a time: a plan chosen after a result serves the very next
            yield self.controller.infer(x)

    def _record(self, index: int, result: Result) -> RequestLog:
        """Check ``result``, run the chaos due after it, re-plan, and tally its record."""
        match = matches(result.output, self.pool[index % len(self.pool)][1])
        replanned = self.replanning.changed_mid_request()
        if self._served[0] is not result.plan:
            self._served = (result.plan, result.plan.to_json())
        self._enact_chaos(index + 1)
        waiting = waiting_requests(
            self.controller.now(), self._start, self.options.arrival_every_s, index + 1
        )
        if self.replanning.after_request(due=(index + 1) % self.options.replan_every == 0, backlog=waiting):
            replanned = True
        record = RequestLog(
            index,
            result.rid,
            self.controller.now(),
            result.latency_s,
            result.energy_j,
            match,
            self._served[1],
            replanned,
            self.waits.popleft(),
            result.rescues,
        )
        self.tally.add(record)
        if index % 100 == 0:
            self.rss.append((index, self._process.memory_info().rss / 2**20))
        return record

    def _enact_chaos(self, count: int) -> None:
        """After ``count`` requests: kill or restart the worker the options schedule then."""
        if count not in self._chaos:
            return
        action, device = self._chaos[count]
        if action == "kill":
            self.cluster.kill(device)
            self.kills += 1
        else:
            self.cluster.restart(device)


_COLUMNS = (
    TextColumn("[bold]{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TimeElapsedColumn(),
    TextColumn("{task.fields[status]}"),
)
