"""The simulator the environments, training and the oracle share: a trace-driven world, its clock, the
cost model, the completion of plan shapes, and what a request costs.

**World and clock.** ``enter(world, t)`` puts the simulator in a ``NetworkState`` (link traces, device
load, failures) at time ``t``; ``sample_world(rng)`` draws one from the config's domain randomisation (a
cluster, optionally random source and sink, a dynamics entry, a fresh seed). What may be known at ``t``
is ``snapshot`` (measured up to ``t``, never the future) and its ``view``; completions and world costs are
memoised until the clock moves.

**The reference** of a request at ``t`` is the single-device shape completed on the snapshot at ``t``:
the whole model on the best single device. Rewards are measured against it and a failed request is
retried on it.

**Failures**: a request fails when a device it touches (computing, source, sink or relay) is down at any
moment of ``[t, t + latency]``. As the live controller does, it is restarted once heartbeats find that
device down (``DEAD_AFTER_S`` after the first such moment), on the reference plan of that moment: it is
charged the attempt up to the restart (its energy in proportion to the time it ran) plus the reference's
cost from then (``charge``). Charging the whole attempt and a retry priced at the start, as before,
overcharged a long attempt that lost a device early (docs/benchmarks.md, thirty-sixth round). Serving's
controller restarts it on its planner's plan for the devices still up instead; an evaluation that
replays serving passes that planner (``charged_in_world``'s ``retry``, serving/world_rescue.py).

**Backends** execute requests (env/backends.py): ``sim`` predicts each with the cost model in the world;
``live`` runs it on a local cluster through the runtime and measures it. ``serve`` runs one request on
the backend, prices it against the reference (always predicted) and advances the clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from env.actions import single_device_shape
from env.backends import Outcome, make_backend
from env.completion import complete_arrays
from env.config import EnvConfig, EnvConfigError, cluster_specs, model_graph
from env.cost_model import Cost, CostModel, Objective, Prediction
from env.dynamics import DynamicsConfig
from env.net_view import NetView, net_view
from env.network import NetworkState
from env.plan_arrays import PlanArrays
from env.profiles import ProfileError, resolve_profile
from env.shapes import Shape
from env.snapshot import Snapshot
from runtime.connections import DEAD_AFTER_S
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.spec import ClusterSpec


def reference_plan(graph: LayerGraph, view: NetView) -> PlanArrays:
    """The reference of a request (module docstring) given what is known when it arrives."""
    return complete_arrays(graph, view, single_device_shape(graph))


def charge(outcome: Outcome, reference: Cost | Prediction) -> Outcome:
    """What a request costs in all: a failed attempt is retried on the reference plan, on top."""
    if not outcome.failed:
        return outcome
    return Outcome(
        outcome.latency_s + reference.latency_s,
        outcome.energy_j + reference.energy_j,
        outcome.outputs_match,
        failed=True,
    )


def attempt_in_world(
    cost_model: CostModel, world: NetworkState, plan: Plan | PlanArrays, t: float, cost: Cost
) -> Outcome:
    """The attempt of ``plan`` started at ``t`` (``cost``: what it costs in ``world`` run to the end):
    whole when no device it touches is down during it; else ``failed``, ended by the restart
    ``DEAD_AFTER_S`` after the first moment one is down, its energy in proportion to the time it ran."""
    down = world.first_down(cost_model.skeleton(plan).devices, t, t + cost.latency_s)
    if down is None:
        return Outcome(cost.latency_s, cost.energy_j)
    ran = down - t
    share = ran / cost.latency_s if cost.latency_s > 0 else 1.0
    return Outcome(ran + DEAD_AFTER_S, cost.energy_j * share, failed=True)


def charged_in_world(
    cost_model: CostModel,
    world: NetworkState,
    plan: Plan,
    t: float,
    cost: Cost | None = None,
    retry: Callable[[Snapshot], Plan | None] | None = None,
) -> Outcome:
    """What ``plan`` started at ``t`` costs in ``world`` in all, by the failure rule (module docstring):
    a failed attempt up to its restart, then the retry's cost from the restart, paid on top (``charge``).
    The retry is ``retry``'s plan for the snapshot at the restart without the plan's devices that were
    down during the attempt (as the controller asks serving's planner), or the reference plan of that
    snapshot when there is no ``retry``, it answers None, or the source or sink was down. ``cost``: the
    plan's ``cost_model.cost`` in ``world`` at ``t``, if already known."""
    cost = cost or cost_model.cost(plan, world, t)
    attempt = attempt_in_world(cost_model, world, plan, t, cost)
    if not attempt.failed:
        return attempt
    restart = t + attempt.latency_s
    snapshot = world.snapshot(restart)
    found = {d for d in cost_model.skeleton(plan).devices if world.down_during((d,), t, restart)}
    replanned = None
    if retry is not None and not found & {snapshot.source, snapshot.sink}:
        replanned = retry(replace(snapshot, available=snapshot.available - found))
    retried = replanned or reference_plan(cost_model.graph, net_view(snapshot)).plan
    return charge(attempt, cost_model.cost(retried, world, restart))


@dataclass(frozen=True)
class ServedRequest:
    """One request served by ``Simulator.serve``: when, what the backend reported, what it cost in all,
    and what the reference plan costs in the same world at the same time."""

    time_s: float
    outcome: Outcome
    charged: Outcome
    reference: Cost

    def reward(self, objective: Objective) -> float:
        """``-score / score(reference)``: near -1 for any model or cluster, above it when beating the
        best single device."""
        charged = Cost(self.charged.latency_s, self.charged.energy_j)
        return -objective.score(charged) / max(objective.score(self.reference), 1e-12)


@dataclass
class _Cluster:
    spec: ClusterSpec
    cost: CostModel


class Simulator:
    """See the module docstring. ``config`` is an EnvConfig; ``backend`` is ``sim`` or ``live``."""

    def __init__(self, config: EnvConfig, backend: str = "sim", **backend_options: Any):
        self.config = config
        self.graph = model_graph(config.model)
        self.objective = config.objective.build()
        self.dynamics = [DynamicsConfig.parse(d, base_dir=config.base_dir) for d in config.dynamics]
        specs = cluster_specs(config)
        profile = None if config.profile is None else Path(config.base_dir or ".") / config.profile
        try:
            self.profile = resolve_profile(self.graph, config.cost, profile)
        except ProfileError as exc:
            raise EnvConfigError(f"profile: {exc}") from None
        self.clusters = [_Cluster(spec, CostModel(self.graph, spec, self.profile)) for spec in specs]
        # device slots an observation needs: the config's, else the largest cluster's (before any replayed world's)
        self.max_devices = config.max_devices or max(len(spec.devices) for spec in specs)
        self.single = single_device_shape(self.graph)
        self.backend = make_backend(backend, **backend_options)
        self._cluster = self.clusters[0]
        self.world: NetworkState | None = None
        self.time = 0.0
        self.snapshot: Snapshot | None = None
        self.view: NetView | None = None
        self._plans: dict[Shape, PlanArrays] = {}  # per shape, for the current view
        self._costs: dict[int, tuple[Plan | PlanArrays, float, Cost]] = {}  # per plan object, current view

    @property
    def cluster_spec(self) -> ClusterSpec:
        return self.world.spec if self.world is not None else self._cluster.spec

    @property
    def cost_model(self) -> CostModel:
        return self._cluster.cost

    # ---- the world and its clock ----------------------------------------------------------------
    def sample_world(self, rng: np.random.Generator) -> NetworkState:
        """A world of the config's distribution: a cluster (random source and sink if configured), a
        dynamics entry and a fresh seed, all drawn from ``rng``."""
        spec = self.clusters[int(rng.integers(len(self.clusters)))].spec
        if self.config.random_endpoints:
            source, sink = rng.choice(spec.device_ids, size=2, replace=True)
            spec = spec.with_source_sink(str(source), str(sink))
        dynamics = self.dynamics[int(rng.integers(len(self.dynamics)))]
        return NetworkState.sample(spec, dynamics, np.random.default_rng(int(rng.integers(2**63))))

    def enter(self, world: NetworkState, t: float) -> None:
        """Continue in ``world`` at time ``t`` (the backend follows it)."""
        self._cluster = self._cluster_for(world.spec)
        self.world = world
        self.time = t
        self.backend.reset(self)
        self.look()

    def look(self) -> None:
        """Take the snapshot at the current time; forget the previous one's completions and costs."""
        self.snapshot = self.snapshot_at(self.time)
        self.view = net_view(self.snapshot)
        self._plans.clear()
        self._costs.clear()

    def snapshot_at(self, t: float) -> Snapshot:
        return self.world.snapshot(t, self.config.window_s, self.config.history)

    def _cluster_for(self, spec: ClusterSpec) -> _Cluster:
        for c in self.clusters:
            if c.spec.name == spec.name and c.spec.links == spec.links:
                return c
        cluster = _Cluster(spec, CostModel(self.graph, spec, self.profile))
        self.clusters.append(cluster)
        return cluster

    # ---- plans ----------------------------------------------------------------------------------
    def completed(self, shape: Shape) -> PlanArrays:
        """``shape`` completed on the current view, memoised until the clock moves (the reference is
        also action 0's plan, and callers ask about a request's plan more than once)."""
        plan = self._plans.get(shape)
        if plan is None:
            plan = self._plans[shape] = complete_arrays(self.graph, self.view, shape)
        return plan

    def reference_plan(self, t: float | None = None) -> PlanArrays:
        """The reference of a request at ``t`` (module docstring; default: now)."""
        if t is None or t == self.time:
            return self.completed(self.single)
        return reference_plan(self.graph, net_view(self.snapshot_at(t)))

    # ---- what requests cost ---------------------------------------------------------------------
    def world_cost(self, plan: Plan | PlanArrays, t: float) -> Cost:
        """``cost_model.cost`` in the world, memoised per plan object and time until the clock moves."""
        hit = self._costs.get(id(plan))
        if hit is not None and hit[0] is plan and hit[1] == t:
            return hit[2]
        cost = self.cost_model.cost(plan, self.world, t)
        self._costs[id(plan)] = (plan, t, cost)
        return cost

    def predicted_outcome(self, plan: Plan | PlanArrays, t: float) -> Outcome:
        """The cost model's prediction of a request's attempt in the world at ``t``, cut short where it
        fails (``attempt_in_world``)."""
        return attempt_in_world(self.cost_model, self.world, plan, t, self.world_cost(plan, t))

    def serve(self, plan: PlanArrays, gap_s: float) -> ServedRequest:
        """Run one request with ``plan`` now on the backend, price it, and move the clock to the next
        request: after its latency and ``gap_s``."""
        t = self.time
        outcome = self.backend.run(self, plan, t)
        reference = self.world_cost(self.reference_plan(), t)
        charged = outcome
        if outcome.failed:  # restarted on the reference plan of the moment it was restarted
            restart = t + outcome.latency_s
            charged = charge(outcome, self.world_cost(self.reference_plan(restart), restart))
        self.time = self.backend.advance(self, t + charged.latency_s + gap_s)
        self.look()
        return ServedRequest(t, outcome, charged, reference)

    def close(self) -> None:
        self.backend.close()
