"""The polish of a policy's plans: the cost model checks and improves what the policy chose.

A policy decides in milliseconds from what it learned; the cost model can check its answer in tens. From
the shapes of the policy's plans (its top k: their cut points and split factors) a descent over shapes
(agents/optimizer.py ``shape_descent``, ``SHAPE_BUDGET`` plans) moves one cut or factor at a time, the
completion placing devices and shares over the devices those plans compute on or relay through; the
best plan so far is laid along every mesh path through the same devices (agents/mesh_paths.py:
neighbouring bands one hop apart, which the completion's cheapest insertion does not always find), then
improved by a local search (agents/local_search.py) confined to them: the policy's judgement of whom
to trust stays. The shape descent took the polished policy from 45.18 s to 42.22 s in sum over the
16 cases of mesh sizes 7 to 13 (25 Mbit/s, 20 requests a case) and from 30.06 s to 26.80 s over the 8
of sizes 17 and 19; a decision takes 0.55-0.89 s in the median at 10, 20 and 32 devices, against
0.55-0.86 s without it (docs/benchmarks.md, thirty-seventh round). The local search is two descents
from the same plans (``ORDERS``), one tuning shares first and one splitting stages and moving cuts
first: a descent spends nearly all of a small budget on the kinds of move it tries first, and which
kind pays depends on the policy's plan. VGG-16's often have fewer stages than pays (on
a 7-device mesh, five stages where the optimiser's plans have nine), ResNet-18's rarely; each order alone
lost on one of the two (docs/benchmarks.md, twenty-eighth round). Both run on each of ``polish_views``:
the snapshot (one moment's rates), the latest second (agents/robust.py: a link that has just gone dark,
which the snapshot still rates at its window's mean) and, when devices failed in the window, the
harmonic view without them. Of the ``ROBUST_PICK`` plans each descent on the snapshot prices best and
the ``VIEW_PICK`` best of each on the other views, the one returned is the best under
the robust optimiser's price (the expected objective over replays of the links' history, plus the
expected retry of a failure). The views price the hundreds of plans of the searches; the robust price,
several replays a plan, only the few that end them.

The robust optimiser also plans on the harmonic view itself (each link at its history's harmonic mean);
the polish does not. Just after a drop that view is a bet the links come back: on the development
splits it won a little more (118.5 s against 120.6 in sum over VGG-16's and ResNet-18's 64 cases), and in
a collapse that lasts it lost: its plan at the drop takes 5.77 s at full device speed, 4.73 without it
(`python -m bench.serving plans`), and serving keeps that plan while the snapshot does not move.
Searching the latest view took the policies' plans from 1.076x and 1.063x the robust optimiser to
1.035x and 1.015x on VGG-16's development splits, at about twice the decision time (docs/benchmarks.md,
twenty-seventh round).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from agents.base import usable
from agents.local_search import SHARES_FIRST, STRUCTURE_FIRST, PlanSearch
from agents.mesh_paths import path_layouts
from agents.optimizer import shape_descent
from agents.robust import distinct, harmonic_view, latest_view, robust_search, without_failed
from env.cost_model import CostModel, Objective
from env.net_view import net_view
from env.shapes import Shape
from env.snapshot import Snapshot
from runtime.graph import LayerGraph
from runtime.plan import Plan

POLISH_SEED = 0  # a polish's move order: fixed, so equal snapshots give equal plans
SHAPE_BUDGET = 150  # plans a polish's shape descent scores on each view
POLISH_PATHS = 400  # mesh-path layouts a polish tries, as the optimiser's path seeds
ROBUST_PICK = 30  # the snapshot's best plans the robust price chooses among
VIEW_PICK = 10  # and each history view's best
ORDERS = (SHARES_FIRST, STRUCTURE_FIRST)  # the kinds of move each of a polish's descents tries first


def polish(
    model: CostModel,
    snapshot: Snapshot,
    graph: LayerGraph,
    objective: Objective,
    plans: list[Plan],
    budget: int,
) -> Plan:
    """The policy's ``plans`` searched on each of ``polish_views`` (a shape descent, mesh-path layouts,
    then a local search of at most ``budget`` scores in each of ``ORDERS``, on the devices they touch),
    and the best under the robust price of each search's best (module docstring); the first of
    ``plans`` when none fits memory, as without a polish."""
    touched = set().union(*(model.skeleton(plan).devices for plan in plans))
    judge = robust_search(model, snapshot, graph, objective)
    views = polish_views(snapshot)
    for view, pick in zip(views, [ROBUST_PICK] + [VIEW_PICK] * (len(views) - 1), strict=True):
        for ranked in _searches(model, view, graph, objective, plans, budget, touched):
            for plan in ranked[:pick]:
                judge.consider(plan)
    return judge.best or plans[0]


def polish_views(snapshot: Snapshot) -> list[Snapshot]:
    """The conditions a polish searches on: the snapshot, the latest second, and the harmonic view without
    the devices that failed in the window (when some did); not the harmonic view itself (module doc);
    each once (``distinct``)."""
    return distinct([snapshot, latest_view(snapshot), *without_failed(harmonic_view(snapshot), snapshot)])


def _searches(
    model: CostModel,
    view: Snapshot,
    graph: LayerGraph,
    objective: Objective,
    plans: list[Plan],
    budget: int,
    touched: set[str],
) -> list[list[Plan]]:
    """Per descent of ``ORDERS`` on ``view``, every plan it found feasible, best first by ``view``'s
    price; the policy's plans, the shape descent's and the mesh-path layouts are scored once, for both."""
    seeded = PlanSearch(model, view, graph, objective, confine_to=touched)
    for plan in plans:
        seeded.consider(plan)
    confined = net_view(replace(view, available=view.available & touched))
    starts = [Shape.of_plan(plan).clamped(graph, confined.n_usable) for plan in plans]
    shape_descent(seeded, confined, starts, SHAPE_BUDGET)
    if seeded.best is None:
        return []
    devices = [d for d in usable(view) if d in touched]
    for plan in path_layouts(graph, view, seeded.best, devices, POLISH_PATHS, POLISH_SEED):
        seeded.consider(plan)
    ranked = []
    for order in ORDERS:
        search = seeded.fork()
        search.local_search(budget, np.random.default_rng(POLISH_SEED), starts=1, order=order)
        ranked.append(search.ranked())
    return ranked
