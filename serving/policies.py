"""The serving loop's policies: what it plans with, when it replaces the plan in force, when it rescues a
running request.

The loop is handed a replan policy (``Static`` or ``Adaptive``, both a ``ReplanPolicy``) and optionally
a rescue policy (``Rescue``); it attaches their callbacks to the controller (``Controller.attach``): the
replan policy's ``for_devices`` when a worker dies, the rescue policy as the watcher called while
requests run.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Protocol

import numpy as np

from agents.base import CutOff, Planner
from agents.robust import RobustPlanner
from env.cost_model import CostModel, Objective
from env.snapshot import Snapshot
from runtime.controller import Controller, InFlight
from runtime.graph import LayerGraph
from runtime.plan import Plan, PlanError
from runtime.results import DEFAULT_LANE
from serving.rules import MAX_RESCUES, moved, settled, worth_restarting, worth_swapping

log = logging.getLogger("serving.policies")

Observe = Callable[[], Snapshot]  # what the planner may know now


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


class PlanningThread:
    """The Decider on one background thread, so that a slow planner (the robust optimiser takes 0.7-2.5 s
    a decision on this host) does not stall serving: requests keep running on the plan in force while it
    plans, and its plan is taken up as soon as it is done. A plan asked for is waited for ``wait_s``
    first, so a fast planner's plan (a policy's: milliseconds) still serves the very next request. Every
    decision runs on this one thread, the synchronous ones too (``now``), so the planner is never called
    twice at once."""

    def __init__(self, decide: Decider, wait_s: float, thread: ThreadPoolExecutor | None = None):
        self.decide, self.wait_s = decide, wait_s
        # several lanes' planning threads may share one (their planners share caches): its owner closes it
        self._own = thread is None
        self._thread = thread or ThreadPoolExecutor(max_workers=1, thread_name_prefix="planner")
        self._running: Future | None = None  # the plan being made, if any
        self._done: Future | None = None  # a finished plan nobody has taken yet
        self._closed = False

    def now(self, snapshot: Snapshot) -> Plan:
        """A plan made on ``snapshot``, waited for (the first plan; a plan without a dead worker). After
        ``close`` (a worker dies between runs) the caller's thread makes it: nothing else is planning."""
        if self._closed:
            return self.decide(snapshot)
        return self._thread.submit(self.decide, snapshot).result()

    def ask(self, snapshot: Snapshot) -> bool:
        """Start a plan on ``snapshot`` and wait ``wait_s`` for it, unless one is being made (then it is
        taken up when done, and nothing waits: a slow planner would otherwise slow every request);
        whether it was started."""
        if self._running is not None and not self._running.done():
            return False
        self._settle()
        self._running = self._thread.submit(self.decide, snapshot)
        wait([self._running], timeout=self.wait_s)
        return True

    def finished(self) -> Plan | None:
        """The latest finished plan not yet taken (it stays until ``take``); None if there is none, or if
        even the fallback found the snapshot cut off (an outage: the plan in force stays)."""
        self._settle()
        if self._done is None:
            return None
        try:
            return self._done.result()
        except CutOff as exc:
            log.warning("no new plan (%s): the plan in force stays", exc)
            self._done = None
            return None

    def take(self) -> None:
        """The finished plan was acted on (swapped in or judged not worth it)."""
        self._done = None

    def close(self) -> None:
        self._closed = True
        if self._own:
            self._thread.shutdown(wait=False, cancel_futures=True)

    def _settle(self) -> None:
        if self._running is not None and self._running.done():
            self._done, self._running = self._running, None


class ReplanPolicy(Protocol):
    """How a serving run keeps its plan in force."""

    decide: Decider  # every plan comes from it (its ``fallbacks`` count the planner's failures)
    replans: int  # plans it swapped in

    def start(self, plan: Plan | None = None) -> None:
        """Deploy the first plan (``plan``, or one of its own)."""

    def for_devices(self, available: frozenset[str]) -> Plan:
        """A plan over ``available``: the controller's replanner when a worker dies."""

    def after_request(self, due: bool, backlog: int = 0) -> bool:
        """Between requests (``due`` every ``replan_every``; ``backlog`` requests already waiting): swap in
        a better plan; whether it did."""

    def changed_mid_request(self) -> bool:
        """Whether the plan was swapped while a request ran, since the last time this was asked."""

    def close(self) -> None:
        """The run is over: stop planning."""


class Static:
    """Plans once at the start, and again only when a worker dies: the reference an adaptive run is
    measured against. It keeps the plan of one ``lane`` of the controller (a camera's, serving/streams.py)."""

    def __init__(self, controller: Controller, decide: Decider, observe: Observe, lane: str = DEFAULT_LANE):
        self.controller, self.decide, self.observe, self.lane = controller, decide, observe, lane

    def start(self, plan: Plan | None = None) -> None:
        self.controller.deploy(plan or self.decide(self.observe()), lane=self.lane)
        self.cost_model()  # built once the plan is deployed (the workers warm up meanwhile), then cached

    def cost_model(self) -> CostModel:
        """The planner's cost model of this cluster, which the replan and rescue rules price on."""
        return self.decide.planner.cost_model(self.decide.graph, self.controller.spec)

    @property
    def replans(self) -> int:
        return 0  # never swaps a plan in (a dead worker's replacement is the controller's replan)

    def for_devices(self, available: frozenset[str]) -> Plan:
        return self.decide(replace(self.observe(), available=frozenset(available)))

    def after_request(self, due: bool, backlog: int = 0) -> bool:
        return False

    def changed_mid_request(self) -> bool:
        return False

    def close(self) -> None:
        pass


class Adaptive(Static):
    """Re-plans when due or as soon as conditions that matter to the plan in force ``moved`` by more than
    ``threshold``, and swaps the new plan in when it is ``worth_swapping`` (``margin`` None: whenever it
    differs), the swap priced at the mean of the latest hot swaps' measured times."""

    cost: CostModel  # the planner's (set by ``start``)
    made_on: Snapshot  # what the plan in force was made on (set by ``start``)
    watched_on: Snapshot  # what the last plan asked for was made on

    def __init__(
        self,
        controller: Controller,
        decide: Decider,
        observe: Observe,
        threshold: float,
        margin: float | None,
        plan_wait_s: float,
        lane: str = DEFAULT_LANE,
        thread: ThreadPoolExecutor | None = None,
    ):
        super().__init__(controller, decide, observe, lane)
        self.threshold, self.margin = threshold, margin
        self.planning = PlanningThread(decide, plan_wait_s, thread)
        self.swaps: deque[float] = deque(maxlen=5)  # seconds of the latest hot swaps
        self.swapped: list[tuple[float, Plan]] = []  # (controller time, plan) of every plan swapped in
        self._swapped_mid_request = False

    def start(self, plan: Plan | None = None) -> None:
        self.made_on = self.watched_on = self.observe()
        self.controller.deploy(plan or self.planning.now(self.made_on), lane=self.lane)
        self.cost = self.cost_model()
        self.cost.latency(self.in_force, self.made_on)  # loads its compiled kernels now (~0.6 s)

    def for_devices(self, available: frozenset[str]) -> Plan:
        return self.planning.now(replace(self.observe(), available=frozenset(available)))

    def after_request(self, due: bool, backlog: int = 0) -> bool:
        """Ask for a plan when due or when conditions moved; swap in the latest finished one if it pays.
        A plan still being made is taken up after a later request (a slow planner never stalls serving)."""
        now = self.observe()
        if (due or moved(self.in_force, self.made_on, now, self.threshold)) and self.planning.ask(now):
            self.made_on = self.watched_on = now
        plan = self.planning.finished()
        if plan is None:
            return False
        self.planning.take()
        return self._swap_in(plan, now, backlog)

    def changed_mid_request(self) -> bool:
        changed, self._swapped_mid_request = self._swapped_mid_request, False
        return changed

    def close(self) -> None:
        self.planning.close()

    @property
    def replans(self) -> int:
        return len(self.swapped)  # plans it swapped in

    @property
    def in_force(self) -> Plan:
        return self.controller.plan_of(self.lane)

    def replan_if_moved(self, now: Snapshot) -> Plan | None:
        """While requests run: asks for a plan when conditions moved since the view the last plan was asked
        on; the latest finished plan, if any (it stays for ``after_request`` unless ``swap_mid_request``
        swaps it in). A move seen while a plan is being made is asked for once that plan is done: just
        after a collapse the first plan is made on a half-formed view, and the settled view that follows
        must not count as seen."""
        if moved(self.in_force, self.watched_on, now, self.threshold) and self.planning.ask(now):
            self.watched_on = now
        return self.planning.finished()

    def swap_mid_request(self, plan: Plan, now: Snapshot) -> None:
        """Swap ``plan`` (the latest finished one) in while requests run, if it pays for the swap."""
        if self._swap_in(plan, now):
            self.planning.take()
            self.made_on, self._swapped_mid_request = now, True

    def _swap_in(self, plan: Plan, now: Snapshot, backlog: int = 0) -> bool:
        """Deploy ``plan`` if it is not the plan in force and pays for the swap (``backlog`` requests
        waiting gain from it too); whether it was."""
        in_force = self.in_force
        if plan == in_force:
            return False
        swap_s = float(np.mean(self.swaps or [0.0]))
        if self.margin is not None and not worth_swapping(
            self.cost, self.decide.objective, in_force, plan, now, self.margin, swap_s, backlog
        ):
            return False
        log.info(
            "swapping plans at %.1f s: predicted %.3f s -> %.3f s on the snapshot, %d requests waiting",
            now.time,
            self.cost.latency(in_force, now),
            self.cost.latency(plan, now),
            backlog,
        )
        started = time.perf_counter()
        try:
            self.controller.deploy(plan, lane=self.lane)
        except PlanError as exc:  # a device it needs went down since it was made (made in the background)
            log.warning("not swapped in: %s", exc)
            return False
        self.swaps.append(time.perf_counter() - started)
        self.swapped.append((self.controller.now(), plan))
        return True


class Rescue:
    """The controller's watcher in adaptive runs: a request stuck on a plan made for conditions that
    collapsed is restarted on a newer plan when it is ``worth_restarting`` (at most ``MAX_RESCUES`` times).

    When conditions moved, a new plan is made and swapped in at once only if it rescues a running request;
    any other new plan waits for the request's end, when all its telemetry is in (plans swapped on a
    half-measured request's view made replans thrash). Requests still on a plan older than the one in
    force are then restarted on it when worth it. Nothing is done on a view that is still moving (not
    ``settled`` since the previous call): the next call, one ``watch_every_s`` later, sees where it went.
    """

    def __init__(self, keeper: Adaptive, margin: float):
        self.keeper, self.margin = keeper, margin
        self._seen: Snapshot | None = None  # the view at the previous call

    def __call__(self) -> None:
        keeper, controller = self.keeper, self.keeper.controller
        now = keeper.observe()
        seen, self._seen = self._seen, now
        if not settled(seen, now):
            return
        plan = keeper.replan_if_moved(now)
        if plan is not None and any(self._worth(r, plan, now) for r in self._running()):
            keeper.swap_mid_request(plan, now)
        for running in self._running():
            if not running.current and self._worth(running, keeper.in_force, now):
                controller.restart(running.rid)

    def _running(self) -> list[InFlight]:
        """The requests of the keeper's lane in flight."""
        return [r for r in self.keeper.controller.in_flight() if r.lane == self.keeper.lane]

    def _worth(self, running: InFlight, plan: Plan, now: Snapshot) -> bool:
        return running.rescues < MAX_RESCUES and worth_restarting(
            self.keeper.cost, running, plan, now, self.margin
        )
