"""Side-by-side comparison of planners on identical snapshots: each request's decision and outcome.

Every agent sees the same sequence of snapshots (the same world, the same request times); what differs
is only the plan it chooses. A request's outcome comes from an ``executor`` callable: the cost model in
the trace-driven world (``sim``) or a live cluster (``live``), so both backends share all the reporting
(serving/comparison_report.py). Either backend may serve each request as adaptive serving does, restarted
on its agent's newer plan when conditions collapse under it (``SimExecutor``'s rescuers in the world,
``LiveRescue``'s watcher on the cluster).

Each request records the planner's ``Decision`` as well as its outcome, so the summary can say what a
mean latency alone hides: how many requests a planner answered with a fallback plan, how far the
optimiser's plans are from its certified bound, and, when ``clairvoyant`` is among the agents, every
agent's regret (latency over the clairvoyant's on the same request, minus 1).

A planner that finds the snapshot cut off (``CutOff``: an outage, nothing reaches the sink on the
measured rates) still has a request to answer: it is sent on the best single device (the reference
plan) and waits the outage out, and the record names it a fallback. Any other planner error stops the
comparison with its message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from rich.console import Console
from rich.progress import Progress

from agents.base import CutOff, Decision, Planner, PlannerError
from env.backends import Outcome
from env.cost_model import CostModel, Objective
from env.net_view import net_view
from env.network import NetworkState
from env.simulator import charged_in_world, reference_plan
from env.snapshot import Snapshot
from env.telemetry import LiveView
from runtime.cluster import LocalCluster
from runtime.exactness import reference_pool, run_checked
from runtime.fidelity import FidelityMeter
from runtime.graph import LayerGraph
from runtime.plan import Plan
from serving.gil import prompt_switches
from serving.heap import setup_frozen
from serving.loop import ServeOptions
from serving.policies import Adaptive, Decider, Rescue
from serving.world_rescue import SERVING_RULE, Replan, RescueRule, served_in_world

CLAIRVOYANT = "clairvoyant"  # the agent every other agent's regret is measured against


@dataclass(frozen=True)
class RequestRecord:
    agent: str
    index: int
    time_s: float
    latency_s: float
    energy_j: float
    decision_s: float
    outputs_match: bool | None
    plan: str
    fallback: str | None = None  # why the planner fell back (Decision.fallback), None when it planned
    bound_gap: float | None = None  # Decision.gap: predicted objective over the certified bound, minus 1
    failed: bool = False
    rescues: int = 0  # restarts on a newer plan when conditions collapsed mid-request


Executor = Callable[[str, int, float, Plan], Outcome]  # (agent, request index, time, plan) -> outcome
SnapshotAt = Callable[[int], Snapshot]  # request index -> what the planners may know before it


class SimExecutor:
    """Requests priced by the cost model in the trace-driven world, with the env's failure rule: a
    request fails when a device its plan touches (relays included) is down at some moment of it, and is
    restarted once the failure is found on the best single device of that moment, which it pays for on
    top of the attempt up to then (env/simulator.py).

    With ``rescuers`` (agent name -> its planner's plan for a view), those agents' requests are also
    served as adaptive serving serves them: restarted on a newer plan when conditions collapse under them,
    and after a failure on their planner's plan for the devices still up (serving/world_rescue.py). The
    clairvoyant is never rescued: it planned on what was coming (and is retried on the best single
    device)."""

    def __init__(
        self,
        cost_model: CostModel,
        world: NetworkState,
        rescuers: dict[str, Replan] | None = None,
        rule: RescueRule = SERVING_RULE,
    ):
        self.cost_model, self.world = cost_model, world
        self.rescuers, self.rule = rescuers or {}, rule
        self._views: dict[float, Snapshot] = {}  # one request's watched moments, shared by its agents
        self._request_t: float | None = None  # the request they belong to

    def __call__(self, agent: str, index: int, t: float, plan: Plan) -> Outcome:
        replan = self.rescuers.get(agent)
        if replan is None:
            return charged_in_world(self.cost_model, self.world, plan, t)
        if t != self._request_t:
            self._views.clear()
            self._request_t = t
        return served_in_world(self.cost_model, self.world, plan, t, replan, self.rule, self._view_at)

    def _view_at(self, w: float) -> Snapshot:
        view = self._views.get(w)
        if view is None:
            view = self._views[w] = self.world.snapshot(w)
        return view


def rescuers(planners: dict, graph, objective) -> dict[str, Replan]:
    """Each planner but the clairvoyant as a rescue's replanner: its plan for a view, None when it finds
    the view cut off (serving keeps the plan in force then)."""

    def replan_with(planner) -> Replan:
        def replan(view: Snapshot) -> Plan | None:
            try:
                return planner.decide(view, graph, objective).plan
            except CutOff:
                return None

        return replan

    return {name: replan_with(p) for name, p in planners.items() if name != CLAIRVOYANT}


class ComparisonInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a comparison, carrying the records of the requests every planner had
    finished: a long run stopped early still reports a fair comparison of what it measured."""

    def __init__(self, records: list[RequestRecord], requests: int):
        super().__init__()
        self.records, self.requests = records, requests


def run_comparison(
    planners: dict,
    snapshot_at: SnapshotAt,
    requests: int,
    graph,
    objective,
    execute: Executor,
    *,
    console: Console | None = None,
) -> list[RequestRecord]:
    """For each request, every planner plans on the same snapshot and its plan is executed.

    Request-major order makes an interrupted run's finished requests a fair comparison
    (``ComparisonInterrupted``); on a live cluster every agent's request of one index runs on the same
    seconds of the traces whatever the order (``LiveSession``). The clairvoyant plans last, weighing the
    others' plans too (agents/clairvoyant.py). The set-up is frozen out of full garbage collections
    (serving/heap.py), so a planner's decision time is its own, not a collection of everything another
    planner's allocations set off.
    """
    records: list[RequestRecord] = []  # whole requests only: every planner's record of each index
    try:
        with setup_frozen(), Progress(console=console, transient=True) as progress:
            task = progress.add_task("requests", total=requests * len(planners))
            for i in range(requests):
                snap = snapshot_at(i)
                request: dict[str, RequestRecord] = {}
                plans: list[Plan] = []
                for name in sorted(planners, key=lambda name: name == CLAIRVOYANT):  # the ceiling last
                    planner = planners[name]
                    if name == CLAIRVOYANT:
                        planner.consider_also(plans)
                    request[name], plan = _plan_and_run(name, planner, i, snap, graph, objective, execute)
                    plans.append(plan)
                    progress.advance(task)
                records += [request[name] for name in planners]
    except KeyboardInterrupt:
        raise ComparisonInterrupted(records, len(records) // len(planners)) from None
    return records


def _plan_and_run(
    name, planner, index, snap, graph, objective, execute: Executor
) -> tuple[RequestRecord, Plan]:
    start = time.perf_counter()
    try:
        decision = decide_or_wait(planner, snap, graph, objective)
    except PlannerError as exc:  # which agent and request: a long run says where it stopped
        raise PlannerError(f"{name}, request {index} (t = {snap.time:g} s): {exc}") from exc
    decision_s = time.perf_counter() - start
    outcome = execute(name, index, snap.time, decision.plan)
    record = RequestRecord(
        name,
        index,
        snap.time,
        outcome.latency_s,
        outcome.energy_j,
        decision_s,
        outcome.outputs_match,
        decision.plan.to_json(),
        decision.fallback,
        decision.gap,
        outcome.failed,
        outcome.rescues,
    )
    return record, decision.plan


def decide_or_wait(planner, snapshot: Snapshot, graph, objective) -> Decision:
    """The planner's decision, or on a snapshot it finds cut off the reference plan, marked (module doc)."""
    try:
        return planner.decide(snapshot, graph, objective)
    except CutOff as exc:
        return Decision(reference_plan(graph, net_view(snapshot)).plan, fallback=f"cut off: {exc}")


@dataclass(frozen=True)
class LiveRescue:
    """What a live comparison needs to serve each request as adaptive serving does (``--rescue``): every
    agent's planner (the clairvoyant's aside) and serving's options, for the controller's watcher."""

    planners: dict[str, Planner]
    graph: LayerGraph
    objective: Objective
    options: ServeOptions = field(default_factory=ServeOptions)


class LiveSession:
    """A running local emulated cluster plus the reference model that checks its outputs.

    ``execute`` runs an agent's request from its snapshot's time on the traces' clock (``restart_clock``
    once the plan is deployed): every agent's request of one index meets the same seconds of the traces,
    those its snapshot was taken at, as in the simulator, rather than whichever seconds the agents before
    it left to it. With a ``LiveRescue``, each agent's request is watched as adaptive serving watches its
    own (serving/loop.py's rescue, on the cluster's own telemetry, from a view that starts from the
    snapshot the agent planned on): when conditions collapse under it, the agent's planner re-plans and
    the request restarts on that plan when it is worth it. The clairvoyant is never rescued."""

    def __init__(self, cluster: LocalCluster, model, world, seed: int, rescue: LiveRescue | None = None):
        self.cluster, self.model, self.world, self.seed = cluster, model, world, seed
        self.controller = cluster.controller
        self.rescue = rescue
        self.fidelity = FidelityMeter()  # every request's, across the clock's restarts
        self._inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def run(self, index: int, plan: Plan) -> tuple[Outcome, float]:
        """Run request ``index`` (a seeded input) on ``plan``; returns the outcome and its start time."""
        x, expected = self._input(index)
        done = run_checked(self.controller, plan, x, expected)
        self.fidelity.absorb(self.controller.fidelity)
        self.controller.fidelity.clear()
        result = done.result
        return Outcome(result.latency_s, result.energy_j, done.exact, rescues=result.rescues), done.start_s

    def _input(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Request ``index``'s seeded input and the unsplit model's output for it (computed once)."""
        if index not in self._inputs:
            shape = self.controller.input_shape
            (self._inputs[index],) = reference_pool(self.model, shape, 1, self.seed + index)
        return self._inputs[index]

    def execute(self, agent: str, index: int, t: float, plan: Plan) -> Outcome:
        if self.rescue is None or agent == CLAIRVOYANT:
            return self._run_from(t, index, plan)
        view = LiveView(self.cluster.spec, self.controller, start=self.world.snapshot(t))
        with self._watched(agent, plan, view):
            return self._run_from(t, index, plan)

    def _run_from(self, t: float, index: int, plan: Plan) -> Outcome:
        """Request ``index`` on ``plan``, started at ``t`` on the traces' clock once the plan is deployed
        and the input ready (the unsplit model's output for it takes a second of the host for VGG-16:
        computed after the restart, it made the first agent of each index meet later seconds of the
        traces)."""
        self._input(index)
        if self.controller.plan != plan:
            self.controller.deploy(plan)
        self.controller.restart_clock(at=t)
        return self.run(index, plan)[0]

    @contextmanager
    def _watched(self, agent: str, plan: Plan, view: LiveView) -> Iterator[None]:
        """``plan`` deployed with serving's rescue watching the requests run meanwhile on ``view``,
        ``agent``'s planner re-planning on a thread of its own that yields the GIL as promptly as in
        serving; once they are done, the watcher leaves and a plan still being made is waited for (the
        planner plans the next request)."""
        rescue, ctl = self.rescue, self.controller
        options = rescue.options
        decide = Decider(rescue.planners[agent], rescue.graph, rescue.objective)
        threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rescue-{agent}")
        with prompt_switches(), threads as planning:
            keeper = Adaptive(
                ctl,
                decide,
                view.snapshot,
                options.threshold,
                options.replan_margin,
                options.plan_wait_s,
                thread=planning,
            )
            ctl.attach(keeper.for_devices, Rescue(keeper, options.rescue_margin))  # as serving attaches them
            try:
                keeper.start(plan)
                yield
            finally:
                ctl.attach(None)
                keeper.close()


@contextmanager
def live_session(
    spec, model_name: str, model, world, *, seed: int = 0, rescue: LiveRescue | None = None, **cluster_options
):
    """A local emulated cluster whose links and device speeds follow ``world``'s schedules (``rescue``:
    requests served with serving's rescue, ``LiveSession``)."""
    links = {(link.a, link.b): world.link_schedule(link.a, link.b) for link in spec.links}
    speeds = {d: world.speed_schedule(d) for d in spec.devices}
    with LocalCluster(
        spec, model=model_name, seed=seed, link_schedules=links, speed_schedules=speeds, **cluster_options
    ) as cluster:
        yield LiveSession(cluster, model, world, seed, rescue)
