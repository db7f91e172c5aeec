"""The polish of a policy's plans: the cost model checks and improves what the policy chose.

A policy decides in milliseconds from what it learned; the cost model can check its answer in tens. The
best of the policy's plans (its top k) is laid along every mesh path through the devices those plans
compute on or relay through (agents/mesh_paths.py: neighbouring bands one hop apart, which the
completion's cheapest insertion does not always find), then improved by a local search (agents/
local_search.py) confined to the same devices: the policy's judgement of whom to trust stays. All of
that is priced on the snapshot, whose rates are one moment; so of the ``ROBUST_PICK`` plans the snapshot
prices best, the one returned is the best under the robust optimiser's price (agents/robust.py: the
expected objective over replays of the links' history, plus the expected retry of a failure). The
snapshot prices the hundreds of plans of the search; the robust price, several replays a plan, only the
few that end it. The pick gained most where links wander; it lost up to 2.3% in a case but in no split's
sum (development splits, docs/benchmarks.md, twenty-sixth round), and in a serving collapse its plan is
slower right after the drop, while the history still holds the good seconds.
"""

from __future__ import annotations

import numpy as np

from agents.base import usable
from agents.local_search import PlanSearch
from agents.mesh_paths import path_layouts
from agents.robust import robust_search
from env.cost_model import CostModel, Objective
from env.snapshot import Snapshot
from runtime.graph import LayerGraph
from runtime.plan import Plan

POLISH_SEED = 0  # a polish's move order: fixed, so equal snapshots give equal plans
POLISH_PATHS = 400  # mesh-path layouts a polish tries, as the optimiser's path seeds
ROBUST_PICK = 30  # the snapshot's best plans the robust price chooses among


def polish(
    model: CostModel,
    snapshot: Snapshot,
    graph: LayerGraph,
    objective: Objective,
    plans: list[Plan],
    budget: int,
) -> Plan:
    """The policy's ``plans`` laid along mesh paths, improved by a local search of at most ``budget``
    scores on the devices they touch, and the best under the robust price of the snapshot's best
    ``ROBUST_PICK`` (module docstring); the first of ``plans`` when none fits memory, as without a polish."""
    touched = set().union(*(model.skeleton(plan).devices for plan in plans))
    search = PlanSearch(model, snapshot, graph, objective, confine_to=touched)
    for plan in plans:
        search.consider(plan)
    if search.best is None:
        return plans[0]
    devices = [d for d in usable(snapshot) if d in touched]
    for plan in path_layouts(graph, snapshot, search.best, devices, POLISH_PATHS, POLISH_SEED):
        search.consider(plan)
    search.local_search(budget, np.random.default_rng(POLISH_SEED), starts=1)
    judge = robust_search(model, snapshot, graph, objective)
    for plan in search.ranked()[:ROBUST_PICK]:
        judge.consider(plan)
    return judge.best or search.best
