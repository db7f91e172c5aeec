"""The robust online optimiser (``optimal``): the best plan for what a monitor knows about uncertainty.

The snapshot optimiser (agents/optimizer.py, ``snapshot-optimal``) takes the measured bandwidths as if
they held for the whole request; where links wander its plans are fragile, and it cannot see that a
device keeps failing. This planner prices both from the snapshot alone (never the future):

- **link variability**: a plan's objective is its mean over scenarios drawn from the history window:
  scenario j replays every link's last seconds from the j-th on, wrapping around (links that faded
  together stay together, and a transfer is integrated over the replay as over a trace). A transfer's
  time is bytes / rate, so a plan leaning on a wandering link pays for its slow seconds more than its
  fast ones repay. With ``persistence`` p > 0 the replays share the weight 1 - p and one more scenario
  (``persistence_scenario``) has weight p: every link holds its last second's mean for as long as the
  window, then replays it. Where links fade for seconds at a time (cellular ones do), the last second
  says more about the next ones than older seconds, and a replay starting earlier wraps back to the good
  seconds a link has just left;
- **failure risk**: each device fails at a rate estimated from its evidence (failures seen over
  seconds seen up, shrunk towards the cluster's pooled rate by ``prior_s`` seconds of it, so one
  quiet device is not trusted more than the cluster's record allows). A plan of latency L touching
  devices D fails with probability 1 - exp(-L * sum of their rates); a failed attempt ends when the
  failure is found (``DEAD_AFTER_S`` after it, as the controller's heartbeats find it) and the request
  is retried on the best single device (env/simulator.py's rule). So with that probability the plan is
  charged the share of its objective that runs before a failure on average (``ran_before_failing``),
  the wait and the retry's objective, priced over the same scenarios as every plan (the single
  device's image and output cross the same wandering links: priced on the snapshot's rates alone, the
  retry looked a third of what it cost where links fade).

Search: candidates are the snapshot optimiser's plans on the snapshot, on a *harmonic* view (each
link at the harmonic mean of its history's two-second means, about the rate at which a transfer's
expected time is right) and, with persistence, on the latest view (each link at its last second); its
plan on the harmonic view without the devices that failed in the window (only when some did), and every
baseline's plan; all are priced as above, and a local search (agents/local_search.py) under the same
pricing improves the best.

A snapshot whose links carry nothing between the source and the sink right now (``CutOff``: an outage)
still gets a plan when the history says those links carried data: the request waits the outage out, and
the history views price what it costs after. ``Decision.fallback`` says so (``CUT_OFF_NOW``).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from agents.base import CutOff, Decision, Planner, PlannerError
from agents.bound import lower_bound
from agents.local_search import BLOCKED, PlanSearch
from agents.optimizer import OptimalPlanner, seed_plans
from env.cost_model import Cost, CostModel, Objective
from env.net_view import net_view
from env.network import NetworkState
from env.simulator import reference_plan
from env.snapshot import FLOOR_MBPS, Snapshot, link_key
from env.traces import Trace, constant
from runtime.connections import DEAD_AFTER_S
from runtime.graph import LayerGraph
from runtime.plan import Plan

CUT_OFF_NOW = "the snapshot's links cut the source or sink off: planned on their history"


def _histories(snapshot: Snapshot) -> dict[tuple[str, str], np.ndarray]:
    """Every link's history window (the width all links have), a second at 0 Mbit/s as ``FLOOR_MBPS``
    (a transfer waits out an outage: a loop dark throughout takes long, not forever); empty without
    history."""
    keys = [link_key(ln.a, ln.b) for ln in snapshot.spec.links]
    width = min((len(snapshot.link_history.get(k, ())) for k in keys), default=0)
    return {k: np.maximum(snapshot.link_history[k][-width:], FLOOR_MBPS) for k in keys} if width else {}


def _replay(snapshot: Snapshot, series: dict[tuple[str, str], np.ndarray]) -> NetworkState:
    """A world whose links loop through ``series`` (one value a second) at the snapshot's speeds."""
    speeds = {d: constant(snapshot.speed[d]) for d in snapshot.spec.devices}
    traces = {k: Trace(np.arange(h.size, dtype=np.float64), h, h.size, "history") for k, h in series.items()}
    return NetworkState(snapshot.spec, traces, speeds)


def history_scenarios(snapshot: Snapshot) -> list[tuple[Snapshot | NetworkState, float]]:
    """Worlds that replay the links' history window, each starting at another of its seconds and
    wrapping around, with the start time to price a plan at: what the next seconds would cost if they
    repeat the last ones. The snapshot itself when the history is constant or missing."""
    history = _histories(snapshot)
    if all(h.min() == h.max() for h in history.values()):
        return [(snapshot, snapshot.time)]
    width = len(next(iter(history.values())))
    return [(_replay(snapshot, {k: np.roll(h, -j) for k, h in history.items()}), 0.0) for j in range(width)]


def persistence_scenario(snapshot: Snapshot) -> tuple[NetworkState, float]:
    """A world in which every link holds its last second's rate for as long as the history window, then
    replays the window from its oldest second: the next seconds if the last one persists. A link that
    has just gone dark costs a plan the wait for the window, not its bytes at ``FLOOR_MBPS`` (which
    would favour whichever plan sends the fewest bytes over links that are all dark)."""
    series = {k: np.concatenate((np.full(h.size, h[-1]), h)) for k, h in _histories(snapshot).items()}
    return _replay(snapshot, series), 0.0


def latest_view(snapshot: Snapshot) -> Snapshot:
    """The snapshot with each link at its history's last one-second mean (0 counts as ``FLOOR_MBPS``):
    the conditions now, if the last second persists."""
    latest = {key: float(history[-1]) for key, history in _histories(snapshot).items()}
    return replace(snapshot, link_mbps=snapshot.link_mbps | latest)


def harmonic_view(snapshot: Snapshot, pair_s: int = 2) -> Snapshot:
    """The snapshot with each link at the harmonic mean of its history's ``pair_s``-second means (the
    rate at which a transfer of about that length takes its expected time; 0 counts as ``FLOOR_MBPS``)."""
    rates = {}
    for key, mbps in snapshot.link_mbps.items():
        history = np.asarray(snapshot.link_history.get(key, ()), dtype=np.float64)
        if history.size < pair_s:
            rates[key] = mbps
            continue
        means = np.maximum(np.convolve(history, np.ones(pair_s) / pair_s, mode="valid"), FLOOR_MBPS)
        rates[key] = float(means.size / np.sum(1.0 / means))
    return replace(snapshot, link_mbps=rates)


def failure_rates(snapshot: Snapshot, prior_s: float) -> dict[str, float]:
    """Failures per second of every device: its own evidence shrunk towards the cluster's pooled rate
    by ``prior_s`` seconds of it (all 0 when nothing failed in the window)."""
    seen = sum(snapshot.failures.values())
    if seen == 0:
        return dict.fromkeys(snapshot.spec.devices, 0.0)
    pooled = seen / max(sum(snapshot.uptime_s.values()), 1.0)
    return {
        d: (snapshot.failures.get(d, 0) + pooled * prior_s) / (snapshot.uptime_s.get(d, 0.0) + prior_s)
        for d in snapshot.spec.devices
    }


def without_failed(view: Snapshot, snapshot: Snapshot) -> list[Snapshot]:
    """``view`` without the devices that failed in ``snapshot``'s window, if some did and others are up."""
    failed = {d for d, n in snapshot.failures.items() if n} - {snapshot.source, snapshot.sink}
    return [replace(view, available=view.available - failed)] if failed and view.available - failed else []


def distinct(views: list[Snapshot]) -> list[Snapshot]:
    """``views`` without repeats: without history every view is the snapshot, and a search on a view
    already searched finds the same plans again."""
    return [view for i, view in enumerate(views) if view not in views[:i]]


def planning_views(snapshot: Snapshot, persistence: float = 0.0) -> list[Snapshot]:
    """The conditions the robust optimiser plans on before it prices: the snapshot, the harmonic view,
    with ``persistence`` the latest view, and the harmonic view ``without_failed`` (``distinct``)."""
    view = harmonic_view(snapshot)
    latest = [latest_view(snapshot)] if persistence > 0 else []
    return distinct([snapshot, view, *latest, *without_failed(view, snapshot)])


PRIOR_S = 60.0  # seconds of the cluster's pooled failure rate each device's own evidence is shrunk towards
PERSISTENCE = 0.25  # the weight of the scenario in which the last second persists


class RobustSearch(PlanSearch):
    """A plan search whose price is the expected objective over history scenarios with the failure risk:
    each device fails at its ``rates``, and a failed attempt is cut short and retried on the single best
    device once the failure is found, the retry's objective (as every plan's) a mean over the scenarios
    (module docstring)."""

    def __init__(
        self,
        model: CostModel,
        snapshot: Snapshot,
        graph: LayerGraph,
        objective: Objective,
        rates: dict[str, float],
        persistence: float = 0.0,
    ):
        super().__init__(model, snapshot, graph, objective)
        self.scenarios = history_scenarios(snapshot)
        self.weights = np.full(len(self.scenarios), 1.0 / len(self.scenarios))
        if persistence > 0 and len(self.scenarios) > 1:
            self.scenarios.append(persistence_scenario(snapshot))
            self.weights = np.append(self.weights * (1.0 - persistence), persistence)
        self.rates, self.retry = rates, 0.0
        if any(rates.values()):
            retry_plan = reference_plan(graph, net_view(snapshot)).plan  # what a failed request is retried on
            # the retry starts once the failure is found (env/simulator.py's rule, the controller's)
            self.retry = self.expected(retry_plan)[0] + objective.score(Cost(DEAD_AFTER_S, 0.0))

    def expected(self, plan: Plan) -> tuple[float, float]:
        """``plan``'s objective and latency, each its mean over the scenarios."""
        costs = [self.model.cost(plan, conditions, t0) for conditions, t0 in self.scenarios]
        return (
            float(self.weights @ [self.objective.score(c) for c in costs]),
            float(self.weights @ [c.latency_s for c in costs]),
        )

    def price(self, plan: Plan) -> float:
        expected, latency = self.expected(plan)
        hazard = sum(self.rates[d] for d in self.model.skeleton(plan).devices)
        if hazard == 0 or latency <= 0 or not math.isfinite(expected):
            return expected
        fails = -math.expm1(-hazard * latency)
        return expected - fails * (1.0 - ran_before_failing(hazard, latency)) * expected + fails * self.retry


def ran_before_failing(hazard: float, latency: float) -> float:
    """The share of an attempt of ``latency`` seconds that runs, on average, before it fails, given that
    it fails (devices failing at ``hazard`` per second in all): E[T | T < L] / L for T exponential."""
    x = hazard * latency
    if x < 1e-6:
        return 0.5  # failures spread evenly over a short attempt
    if x > 700.0:
        return 1.0 / x  # 1 / (e^x - 1) is below any float's precision next to it (and e^x overflows)
    return 1.0 / x - 1.0 / math.expm1(x)


def robust_search(
    model: CostModel,
    snapshot: Snapshot,
    graph: LayerGraph,
    objective: Objective,
    prior_s: float = PRIOR_S,
    persistence: float = PERSISTENCE,
) -> RobustSearch:
    """A search that prices plans as the robust optimiser does, each device's failure rate from the
    snapshot's evidence."""
    return RobustSearch(model, snapshot, graph, objective, failure_rates(snapshot, prior_s), persistence)


class RobustPlanner(Planner):
    """The snapshot optimiser's plans and the baselines', priced on history scenarios and failure risk,
    improved by a local search under that price (module doc). Optimiser options go to the snapshot
    optimiser it is built on. ``persistence`` (``PERSISTENCE``) was chosen on a development split (mesh
    sizes no reported figure uses; docs/benchmarks.md, twenty-third round); 0 prices the replays alone."""

    name = "optimal"

    def __init__(
        self,
        cost_model: CostModel | None = None,
        *,
        refine_evaluations: int = 120,
        prior_s: float = PRIOR_S,
        persistence: float = PERSISTENCE,
        seed: int = 0,
        **optimiser_options,
    ) -> None:
        super().__init__(cost_model)
        if not 0.0 <= persistence < 1.0:
            raise PlannerError(f"optimal: persistence is a weight in [0, 1) (got {persistence})")
        self.optimiser = OptimalPlanner(cost_model, seed=seed, **optimiser_options)
        self.refine_evaluations = refine_evaluations
        self.prior_s = prior_s
        self.persistence = persistence
        self.seed = seed
        self.last_score: float | None = None  # the expected objective of the last plan
        self.last_blocked = False  # whether every feasible plan relayed through a device that is down
        self.last_cut_off = False  # whether the snapshot itself was cut off (planned on history only)

    def plan(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Plan:
        model = self.cost_model(graph, snapshot.spec)
        search = robust_search(model, snapshot, graph, objective, self.prior_s, self.persistence)
        cut_off = None
        for v in planning_views(snapshot, self.persistence):
            try:
                search.consider(self.optimiser.plan(v, graph, objective))
            except CutOff as exc:
                cut_off = cut_off or exc
        self.last_cut_off = cut_off is not None
        for plan in seed_plans(self.optimiser.seed_planners, snapshot, graph, objective):
            search.consider(plan)
        search.local_search(self.refine_evaluations, np.random.default_rng(self.seed))
        if cut_off is not None and search.best is None:
            raise cut_off  # the history too says nothing gets through
        plan, self.last_score, self.last_blocked = search.outcome()
        return plan

    def decide(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Decision:
        """The plan with its expected objective and a certified lower bound on every plan's
        (``price_bound``)."""
        plan = self.plan(snapshot, graph, objective)
        fallback = BLOCKED if self.last_blocked else CUT_OFF_NOW if self.last_cut_off else None
        bound = price_bound(snapshot, graph, objective, self.cost_model(graph, snapshot.spec))
        return Decision(plan, score=self.last_score, fallback=fallback, bound=bound)


def price_bound(snapshot: Snapshot, graph: LayerGraph, objective: Objective, model: CostModel) -> float:
    """A certified lower bound on the robust price of every plan: agents/bound.py's bound with each link
    at the most it carried in its history or carries now. Every scenario replays those seconds, so each
    transfer in it takes at least its bytes at that rate, the bound's physics hold of each scenario's
    run, and the price, their mean plus a failure charge that is never negative, is at least the
    bound."""
    fastest = {
        k: max(mbps, max(snapshot.link_history.get(k, ()), default=0.0))
        for k, mbps in snapshot.link_mbps.items()
    }
    return lower_bound(replace(snapshot, link_mbps=fastest), graph, objective, model)
