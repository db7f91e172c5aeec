"""The clairvoyant reference (``clairvoyant``, evaluation only): the ceiling for any online planner.

It plans each request on the world's true future over that request (``NetworkState.foresight``: the
traces themselves, device load, and who stays up), with the snapshot optimiser, so every candidate is
priced on the world itself. The future it looks at has to cover the request, whose length depends on the
plan: it plans on the next ``first_horizon_s`` seconds (the devices up throughout them, the mean rates
over them), and while the plan it found would lose a device before it ends, it plans again on a window as
long as that plan and at least twice the last (a device that fails only after the request is no risk).
A window whose links carry nothing between the source and the sink (an outage: ``CutOff``) is doubled
until they do, up to ``max_horizon_s``: a request sent into an outage waits it out, so what it costs
is decided by the links after it.

The plan found so is then improved by a local search priced on the world itself (``ForesightSearch``:
the plan's cost on the traces from t, infinite if a device it uses goes down before it ends), from it and
from the optimiser's plan on the snapshot an online planner sees: the snapshot optimiser's own local
search is short (it must answer online), and the online planners' candidates are not always on the
foresight's search path (a 5-device cluster without traces: the robust optimiser was 1.6% and a
polished policy 10.8% below the clairvoyant before, 1.697 s against 1.987 s for the optimiser with
12x its budget).

It is still a search, not an enumeration (except on instances small enough for the full plan space), so
in a comparison it plans last and also weighs every other agent's plan for the same request
(``consider_also``), priced as the comparison charges it (a plan that loses a device pays its retry): an
agent can then at best tie with it on a request, never beat it. With failures it used to lose to the
robust optimiser (a new user's 7-device cluster, 2 failures a minute: regret -0.8%, 14.5 s against 5.8 s
on one request), its search missing plans the optimiser found. Every comparison reports each agent's
regret against it (serving/comparison_report.py).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from agents.base import CutOff, Decision, Planner
from agents.local_search import BLOCKED, PlanSearch
from agents.optimizer import OptimalPlanner
from env.cost_model import CostModel, Objective
from env.network import NetworkState
from env.simulator import charged_in_world
from env.snapshot import Snapshot
from runtime.graph import LayerGraph
from runtime.plan import Plan

SEARCH_EVALUATIONS = 2000  # the snapshot optimiser's budget here (400 online): evaluation has no deadline


class ForesightSearch(PlanSearch):
    """A plan search priced on the world: a plan's objective on the traces from the snapshot's time, as
    an evaluation charges it (``charged_in_world``: a plan that loses a device is restarted on the
    reference plan once the failure is found, paid on top). It may use any device, since a failure is in the price."""

    def __init__(
        self,
        model: CostModel,
        foresight: Snapshot,
        graph: LayerGraph,
        objective: Objective,
        world: NetworkState,
    ):
        # every device may be tried: one that goes down during a plan is priced (its retry), not excluded
        everyone = replace(foresight, available=frozenset(foresight.spec.device_ids))
        super().__init__(model, everyone, graph, objective)
        self.world = world

    def price(self, plan: Plan) -> float:
        return self.objective.score(charged_in_world(self.model, self.world, plan, self.snapshot.time))


class Clairvoyant(Planner):
    """The snapshot optimiser on the world's true future over each request (module doc). Optimiser
    options go to the snapshot optimiser it is built on."""

    name = "clairvoyant"
    ROUNDS = 4  # plans on a longer window at most this often

    def __init__(
        self,
        cost_model: CostModel | None = None,
        *,
        world: NetworkState,
        first_horizon_s: float = 1.0,
        max_horizon_s: float = 300.0,
        refine_evaluations: int = 400,
        **optimiser_options,
    ) -> None:
        super().__init__(cost_model)
        self.world = world
        self.first_horizon_s, self.max_horizon_s = first_horizon_s, max_horizon_s
        self.refine_evaluations = refine_evaluations
        self.optimiser = OptimalPlanner(
            cost_model, **({"max_evaluations": SEARCH_EVALUATIONS} | optimiser_options)
        )
        self.last_score: float | None = None
        self.last_blocked = False  # whether every feasible plan relayed through a device that is down
        self._others: list[Plan] = []  # the other agents' plans for the next request (``consider_also``)

    def consider_also(self, plans: list[Plan]) -> None:
        """Plans the agents compared with it made for the request it plans next: the ceiling is at least
        as good as each of them, priced the same way, so no agent's regret is negative."""
        self._others = list(plans)

    def plan(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Plan:
        model = self.cost_model(graph, snapshot.spec)
        others, self._others = self._others, []  # for this request only
        t, horizon = snapshot.time, self.first_horizon_s
        world = self.world_at(t)
        for _ in range(self.ROUNDS):
            plan, horizon = self._plan_on_future(world, t, horizon, graph, objective)
            latency = model.cost(plan, world, t).latency_s
            if not world.down_during(model.skeleton(plan).devices, t, t + latency):
                break
            horizon = max(latency, 2 * horizon)
        search = ForesightSearch(model, world.foresight(t, horizon), graph, objective, world)
        search.consider(plan)
        try:
            search.consider(self.optimiser.plan(snapshot, graph, objective))
        except CutOff:
            pass  # the snapshot sees an outage: the foresight's plan waits it out
        for other in others:
            search.consider(other)
        search.local_search(self.refine_evaluations, np.random.default_rng(0))
        if search.best is None and search.blocked is None:
            self.last_blocked = False  # the plan loses a device whatever: priced with the loss
            self.last_score = objective.score(model.cost(plan, world, t))
            return plan
        plan, self.last_score, self.last_blocked = search.outcome()
        return plan

    def world_at(self, t: float) -> NetworkState:
        """The world a request at ``t`` is planned and priced on: the true one."""
        return self.world

    def _plan_on_future(
        self, world: NetworkState, t: float, horizon: float, graph: LayerGraph, objective: Objective
    ) -> tuple[Plan, float]:
        """The optimiser's plan on ``world`` over [t, t + horizon], and that horizon, doubled while the
        window cuts the source or sink off (module doc)."""
        while True:
            try:
                return self.optimiser.plan(world.foresight(t, horizon), graph, objective), horizon
            except CutOff:
                if horizon >= self.max_horizon_s:
                    raise
                horizon = min(2 * horizon, self.max_horizon_s)

    def decide(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Decision:
        """The plan with its objective in the world."""
        plan = self.plan(snapshot, graph, objective)
        return Decision(plan, fallback=BLOCKED if self.last_blocked else None, score=self.last_score)


LOOKBACK_S = 8.0  # the seconds of past the hindsight reference replays: as long as a snapshot's history


class Hindsight(Clairvoyant):
    """The clairvoyant's planner, search and budget on the past instead of the future (``hindsight``,
    evaluation only): each request is planned and priced on the world as its last ``lookback_s`` seconds
    make it look (``NetworkState.past_replayed``: every link and device repeats them exactly, who is
    down stays down). It is an online planner with a perfect record of the past, at the traces' own
    resolution, that searches as long as the clairvoyant, so it says what an online planner's regret is
    made of: where a planner loses to it, a better record of the past or a longer search would help;
    where a planner beats it, the planner reads the past better than as one exact repeat (the robust
    optimiser reads it as a spread of scenarios), and a longer search or a finer record of the past alone is
    not what its regret lacks. It does not price failure risk: the device that fails next is not in the
    past.
    """

    name = "hindsight"

    def __init__(
        self,
        cost_model: CostModel | None = None,
        *,
        world: NetworkState,
        lookback_s: float = LOOKBACK_S,
        **options,
    ):
        super().__init__(cost_model, world=world, **options)
        self.lookback_s = lookback_s

    def world_at(self, t: float) -> NetworkState:
        """The world as its last ``lookback_s`` seconds before ``t`` make it look."""
        return self.world.past_replayed(t, self.lookback_s)
