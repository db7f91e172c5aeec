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

It is a search, not an enumeration: on large instances another planner can beat it on some requests, so
a regret may be negative there. Every comparison reports each agent's regret against it
(serving/comparison_report.py).
"""

from __future__ import annotations

from agents.base import CutOff, Decision, Planner
from agents.local_search import BLOCKED
from agents.optimizer import OptimalPlanner
from env.cost_model import CostModel, Objective
from env.network import NetworkState
from env.snapshot import Snapshot
from runtime.graph import LayerGraph
from runtime.plan import Plan


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
        **optimiser_options,
    ) -> None:
        super().__init__(cost_model)
        self.world = world
        self.first_horizon_s, self.max_horizon_s = first_horizon_s, max_horizon_s
        self.optimiser = OptimalPlanner(cost_model, **optimiser_options)
        self.last_score: float | None = None

    def plan(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Plan:
        model = self.cost_model(graph, snapshot.spec)
        t, horizon = snapshot.time, self.first_horizon_s
        for _ in range(self.ROUNDS):
            plan, horizon = self._plan_on_future(t, horizon, graph, objective)
            latency = model.cost(plan, self.world, t).latency_s
            if not self.world.down_during(model.skeleton(plan).devices, t, t + latency):
                break
            horizon = max(latency, 2 * horizon)
        self.last_score = objective.score(model.cost(plan, self.world, t))
        return plan

    def _plan_on_future(
        self, t: float, horizon: float, graph: LayerGraph, objective: Objective
    ) -> tuple[Plan, float]:
        """The optimiser's plan on the world over [t, t + horizon], and that horizon, doubled while the
        window cuts the source or sink off (module doc)."""
        while True:
            try:
                return self.optimiser.plan(self.world.foresight(t, horizon), graph, objective), horizon
            except CutOff:
                if horizon >= self.max_horizon_s:
                    raise
                horizon = min(2 * horizon, self.max_horizon_s)

    def decide(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Decision:
        """The plan with its objective in the world."""
        plan = self.plan(snapshot, graph, objective)
        return Decision(
            plan, fallback=BLOCKED if self.optimiser.last_stats.blocked else None, score=self.last_score
        )
