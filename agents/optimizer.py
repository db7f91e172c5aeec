"""The analytic optimiser: the best plan the cost model can find, the yardstick for every other planner.

**Search space W** (what "exact" refers to). A plan in W is ``env.completion.complete(graph, view,
shape, profile)`` for a *shape*: a set of cut points (any subset of ``graph.cut_points``; consecutive groups
form a stage) and a split factor 1 <= k_s <= min(usable devices, output rows) per stage. The completion
picks the k_s devices and balances their shares analytically from the snapshot (env/completion.py), on
the cost model's own compute: its profile when it has one (a stage's work is then its measured seconds,
not its FLOPs: MobileNet-V2's depthwise layers take far longer than their FLOPs say; on the development
split the robust optimiser's sum fell 17%, measured), FLOPs otherwise. The shapes are the PPO planner's
action space; a policy completes them as it was trained to (agents/staged_policy.py ``completion``).
Shapes: |W| <= n (n + 1)^(G - 1) for n usable devices and G groups (5 devices, 6 groups: 38,880;
distinct plans can be fewer, the completion clamps and drops devices).

**Search.**

1. *Seeds*: the plans of every other planner (local, Neurosurgeon, MoDNN in both readings, DeepSlicing,
   DeepThings, DISNET) are scored and the best kept, so the result is never worse than theirs.
2. *Exact*: when the number of shapes is at most ``exact_limit`` every shape is completed and scored
   on the cost model. There is no pruning: nothing cheaper than the model bounds a partial plan's
   latency soundly, since a later stage's transfer can queue ahead of an earlier one on a relay radio.
3. *Otherwise*, steepest descent over shapes (``env.shapes.search_shape``: change a factor by one,
   add, remove or move a cut) from the best of the structured shapes (one stage k ways; a stage per
   resolution level, k ways) and the shapes of the seed plans. If none of them fits memory (the flat
   layers in one stage can outweigh every device: VGG-16's are 494 MB), a stage per group, one device
   each, is tried before the local search below starts from it.
4. *Mesh-path seeds* (agents/mesh_paths.py): the best plan so far with its row-split stages on the
   devices of a simple mesh path, in path order, shares by speed, for every path of about as many
   devices as its widest stage (``mesh_paths.PATH_WIDTH`` fewer to as many more; at most ``path_seeds`` paths, 0
   turns them off), so that neighbouring bands exchange their halos over one hop.
5. *Local search beyond W* (``refine``, agents/local_search.py), on the cost model, first improvement, seeded order, at most
   ``max_evaluations`` new plans, from the best few plans so far: scale one device's share up or down,
   swap two neighbouring bands, move a cut to the neighbouring cut point, merge two stages, split
   one, add / remove / replace a device (tried in that order of kinds, which pay off most often).

**The full plan space.** When it is small (``plan_space_size`` <= ``full_space_limit``: a tiny model on two
or three devices) every plan of it is scored instead (agents/plan_space.py): the best is then the optimum
over any cuts, devices, row splits, and its score is its own certified bound (gap 0).

**Bound** (``decide``): every decision reports a certified lower bound on the objective over the whole plan
space (agents/bound.py: an LP relaxation and, for latency, the chain bound of agents/chain_bound.py, both
solved by HiGHS) and the gap ``score / bound - 1``; ``plan`` alone does not pay for the LPs.

Every plan considered must use only available devices and respect every device's memory (the weights
of all stages it computes in, ``graph.stage_param_bytes``, within its ``memory_mb``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from agents.base import Decision, Planner, PlannerError, usable
from agents.baselines import DeepSlicing, DeepThings, LocalOnly, MoDNN, Neurosurgeon
from agents.bound import check_servable, lower_bound
from agents.disnet import DisnetPlanner
from agents.local_search import BLOCKED, PlanSearch
from agents.mesh_paths import path_layouts
from agents.plan_space import full_plan_space, plan_space_size
from env.completion import complete
from env.cost_model import CostModel, Objective
from env.net_view import NetView, net_view
from env.shapes import Shape, search_shape, structured_shapes
from env.snapshot import Snapshot
from runtime.graph import LayerGraph
from runtime.plan import Plan


def shape_count(graph: LayerGraph, n_devices: int) -> int:
    """Number of shapes with factors up to ``n_devices``: the size of W before deduplication."""
    points = graph.cut_points
    ways = {points[-1]: 1}
    for i in range(len(points) - 2, -1, -1):
        ways[points[i]] = sum(min(n_devices, graph.extent(e)) * ways[e] for e in points[i + 1 :])
    return ways[0]


def all_shapes(graph: LayerGraph, n_devices: int) -> Iterator[Shape]:
    """Every shape: each subset of the inner cut points, each factor 1..min(n, rows) per stage."""
    inner, n = graph.cut_points[1:-1], len(graph.units)
    for r in range(len(inner) + 1):
        for cuts in itertools.combinations(inner, r):
            bounds = (0, *cuts, n)
            ranges = [range(1, min(n_devices, graph.extent(e)) + 1) for e in bounds[1:]]
            for factors in itertools.product(*ranges):
                yield Shape(bounds, factors)


@dataclass(frozen=True)
class SearchStats:
    """How the last decision was reached: whether W (``exhaustive``) or the whole plan space
    (``full_space``) was enumerated, how many plans the cost model scored (seeds and duplicates scored
    once), and the certified ``bound`` when one is known (``decide``, or the full space enumerated)."""

    exhaustive: bool
    shapes: int  # shapes in W for this graph and number of usable devices
    evaluations: int
    score: float
    full_space: bool = False
    bound: float | None = None
    blocked: bool = False  # every feasible plan relays through a device that is down (``BLOCKED``)

    @property
    def gap(self) -> float | None:
        """``score / bound - 1``: how far the plan can be from the optimum at most (None without a bound)."""
        return None if self.bound is None or self.bound <= 0 else self.score / self.bound - 1.0


def seed_plans(planners: Sequence[Planner], snapshot: Snapshot, graph: LayerGraph, objective: Objective):
    """The plans of the schemes that can serve this cluster (local-only cannot when the source is too
    small for the model), as seeds of a search."""
    plans = []
    for planner in planners:
        try:
            plans.append(planner.plan(snapshot, graph, objective))
        except PlannerError:
            continue
    return plans


def shape_descent(search: PlanSearch, view: NetView, starts: list[Shape], budget: int) -> None:
    """A steepest descent over shapes (cut points and split factors) from the best of ``starts``, each
    shape completed on ``view`` (the completion places devices and shares) and scored by ``search``,
    until it has scored ``budget`` more plans."""
    end = search.evaluations + budget
    graph = search.graph

    def score(shape: Shape) -> float:
        """A shape's objective; infinite once the budget is spent, which ends the descent."""
        plan = complete(graph, view, shape, search.model.profile)
        return search.consider(plan) if search.evaluations < end else search.scores.get(plan, math.inf)

    search_shape(graph, score, starts, len(graph.groups), view.n_usable)


class OptimalPlanner(Planner):
    """Exact over W on small instances, shape descent plus local search on large ones (module doc)."""

    name = "optimal"
    SHAPE_SHARE = 0.6  # of max_evaluations that the shape descent may use

    def __init__(
        self,
        cost_model: CostModel | None = None,
        *,
        exact_limit: int = 40_000,
        full_space_limit: int = 5_000,
        max_evaluations: int = 400,
        path_seeds: int = 400,
        refine: bool = True,
        seed_planners: Sequence[Planner] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(cost_model)
        self.exact_limit = exact_limit
        self.full_space_limit = full_space_limit
        self.max_evaluations = max_evaluations
        self.path_seeds = path_seeds
        self.refine = refine
        self.seed = seed
        if seed_planners is None:
            seed_planners = [
                LocalOnly(),
                Neurosurgeon(cost_model),
                MoDNN(),
                MoDNN(gather=False),
                DeepSlicing(),
                DeepThings(),
                DisnetPlanner(),
            ]
        self.seed_planners = list(seed_planners)
        self.last_stats: SearchStats | None = None  # diagnostics of the last plan() call

    def plan(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Plan:
        model = self.cost_model(graph, snapshot.spec)
        check_servable(snapshot, graph, model)
        devices = usable(snapshot)
        if plan_space_size(graph, len(devices)) <= self.full_space_limit:
            return self._plan_full_space(snapshot, graph, objective, devices)
        search = PlanSearch(model, snapshot, graph, objective)
        seeds = seed_plans(self.seed_planners, snapshot, graph, objective)
        for plan in seeds:
            search.consider(plan)
        view = net_view(snapshot)
        n = view.n_usable
        refine_budget = self.max_evaluations
        shapes = shape_count(graph, n)
        if shapes <= self.exact_limit:
            for shape in all_shapes(graph, n):
                search.consider(complete(graph, view, shape, model.profile))
        else:
            after_seeds = search.evaluations
            starts = structured_shapes(graph, len(graph.groups), n)
            starts += [Shape.of_plan(plan).clamped(graph, n) for plan in seeds]
            shape_descent(search, view, starts, int(self.max_evaluations * self.SHAPE_SHARE))
            if search.best is None:  # every shape searched overfills a device: a stage per group may not
                finest = Shape(tuple(graph.cut_points), (1,) * len(graph.groups))
                search.consider(complete(graph, view, finest, model.profile))
            refine_budget -= search.evaluations - after_seeds
        if self.path_seeds and search.best is not None:
            for plan in path_layouts(graph, snapshot, search.best, devices, self.path_seeds, self.seed):
                search.consider(plan)
        if self.refine:
            search.local_search(refine_budget, np.random.default_rng(self.seed))
        best, score, blocked = search.outcome()
        exhaustive = shapes <= self.exact_limit
        self.last_stats = SearchStats(exhaustive, shapes, search.evaluations, score, blocked=blocked)
        return best

    def _plan_full_space(
        self, snapshot: Snapshot, graph: LayerGraph, objective: Objective, devices: list[str]
    ) -> Plan:
        """The optimum over the whole plan space, every plan scored (module doc)."""
        search = PlanSearch(self.cost_model(graph, snapshot.spec), snapshot, graph, objective)
        for plan in full_plan_space(graph, devices, snapshot.source, snapshot.sink):
            search.consider(plan)
        best, score, blocked = search.outcome()
        shapes = shape_count(graph, len(devices))
        self.last_stats = SearchStats(
            exhaustive=True,
            shapes=shapes,
            evaluations=search.evaluations,
            score=score,
            full_space=True,
            bound=None if blocked else score,  # the optimum is its own bound, unless nothing was feasible
            blocked=blocked,
        )
        return best

    def decide(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Decision:
        """The best plan found, with its predicted objective and a certified lower bound on the objective of
        every plan (the optimum itself when the full plan space was enumerated)."""
        plan = self.plan(snapshot, graph, objective)
        stats = self.last_stats
        if stats.bound is None:
            bound = lower_bound(snapshot, graph, objective, self.cost_model(graph, snapshot.spec))
            stats = self.last_stats = replace(stats, bound=bound)
        return Decision(
            plan, fallback=BLOCKED if stats.blocked else None, score=stats.score, bound=stats.bound
        )
