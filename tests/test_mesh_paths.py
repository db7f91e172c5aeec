"""The optimiser's mesh-path seeds: bands ordered along mesh links, so halo exchanges stay one hop."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

import agents.polish as polish_module
from agents import OptimalPlanner
from agents.local_search import SHARES_FIRST, STRUCTURE_FIRST, PlanSearch
from agents.mesh_paths import mesh_paths, path_plans
from agents.polish import polish
from agents.robust import robust_search
from env.cost_model import CostModel, Objective
from env.network import NetworkState
from runtime import models
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.spec import parse_cluster

LINE = ["a", "b", "s", "c", "d"]  # the source s in the middle of a line


def line_spec(gflops: float, mbps: float):
    power = {"compute": 1.0, "transmit": 1.0, "receive": 1.0, "idle": 0.1}
    devices = [{"id": d, "gflops": gflops, "power": power} for d in LINE]
    links = [{"a": x, "b": y, "mbps": mbps} for x, y in itertools.pairwise(LINE)]
    data = {"format": "disnet-cluster/1", "name": "line5", "source": "s", "sink": "s"}
    return parse_cluster({**data, "devices": devices, "links": links})


@pytest.fixture(scope="module")
def tiny():
    return LayerGraph.from_model(models.build("tiny"), models.input_shape("tiny"), "tiny")


def adjacent(spec, path) -> bool:
    return all(spec.link(x, y) is not None for x, y in itertools.pairwise(path))


def test_every_simple_path_once_over_links_that_carry():
    spec = line_spec(1.0, 10.0)
    snap = NetworkState.static(spec).snapshot(0.0)
    paths = mesh_paths(snap, LINE, range(2, 6), limit=100)
    assert len(paths) == 10  # on a line, one path between each pair of devices
    assert all(adjacent(spec, p) and len(set(p)) == len(p) >= 2 for p in paths)
    assert not any(p[::-1] in paths for p in paths if p != p[::-1])
    # a link measured at 0 Mbit/s joins no path: the line falls apart at s-c
    cut = replace(snap, link_mbps={**snap.link_mbps, ("c", "s"): 0.0})
    assert {frozenset(p) for p in mesh_paths(cut, LINE, range(2, 6), limit=100)} == {
        frozenset(p) for p in paths if not {"s", "c"} <= set(p)
    }
    # more paths than the limit: that many, from random walks, each still a simple path over links
    walked = mesh_paths(snap, LINE, range(2, 6), limit=4)
    assert len(walked) == 4 and all(adjacent(spec, p) and len(set(p)) == len(p) for p in walked)


def test_path_plans_put_row_split_stages_on_the_path_shared_by_speed(tiny):
    spec = line_spec(0.002, 1.0)
    snap = NetworkState.static(spec).snapshot(0.0)
    base = OptimalPlanner(CostModel(tiny, spec), path_seeds=0).plan(snap, tiny, Objective())
    (plan,) = path_plans(tiny, snap, base, [("b", "s", "c")])
    for stage, before in zip(plan.stages, base.stages, strict=True):
        if tiny.stage_kind(stage.end) == "flat":
            assert stage == before
        else:
            assert stage.devices == ("b", "s", "c")
            assert [a.share for a in stage.assignments] == [0.002] * 3


# a ring d0-d1-d3-d4-d5-d2-d0 with a chord d0-d4, the source d0 the slowest device (found among random
# six-device meshes as one where the seeds pay)
RING = [("d0", "d1"), ("d0", "d2"), ("d0", "d4"), ("d1", "d3"), ("d2", "d5"), ("d3", "d4"), ("d5", "d4")]
RING_GFLOPS = [0.001, 0.0024, 0.0037, 0.0034, 0.0037, 0.0034]


def test_the_seeds_pay_on_a_ring(tiny):
    """The completion picks devices by speed and lays them out as best it can; the seeds try every path
    of the ring as it is, and the search from them beats the one from the completion's plans by over
    5%."""
    power = {"compute": 1.0, "transmit": 1.0, "receive": 1.0, "idle": 0.1}
    devices = [{"id": f"d{i}", "gflops": g, "power": power} for i, g in enumerate(RING_GFLOPS)]
    links = [{"a": a, "b": b, "mbps": 1.0} for a, b in RING]
    data = {"format": "disnet-cluster/1", "name": "ring6", "source": "d0", "sink": "d0"}
    spec = parse_cluster({**data, "devices": devices, "links": links})
    snap = NetworkState.static(spec).snapshot(0.0)
    model = CostModel(tiny, spec)
    without = OptimalPlanner(model, path_seeds=0).plan(snap, tiny, Objective())
    with_seeds = OptimalPlanner(model).plan(snap, tiny, Objective())
    assert model.latency(with_seeds, snap) <= 0.95 * model.latency(without, snap)


def test_a_plan_relaying_through_a_device_that_is_down_is_infeasible(tiny):
    """The scatter from s to a crosses b: with b down that plan carries nothing, whatever its devices."""
    spec = line_spec(0.002, 1.0)
    snap = NetworkState.static(spec).snapshot(0.0)
    model = CostModel(tiny, spec)
    n = len(tiny.units)
    plan = Plan.build("s", "s", [(0, n, {"s": 1.0, "a": 1.0})])
    assert math.isfinite(PlanSearch(model, snap, tiny, Objective()).consider(plan))
    b_down = replace(snap, available=snap.available - {"b"})
    search = PlanSearch(model, b_down, tiny, Objective())
    assert search.consider(plan) == math.inf
    # when nothing else is feasible it is still what the search has to offer, marked as such
    assert search.outcome() == (plan, search.blocked_score, True) and math.isfinite(search.blocked_score)
    on_s = Plan.build("s", "s", [(0, n, {"s": 1.0})])
    assert search.outcome()[0] == plan and math.isfinite(search.consider(on_s))
    assert search.outcome() == (on_s, search.best_score, False)


def test_a_polish_lays_the_policys_plan_along_a_path_of_the_devices_it_chose(tiny):
    """Bands in the order b, c, s on the line a-b-s-c-d exchange halos over relays; before its local
    search (budget 0 here) the polish tries the plan along the paths of those devices, one of which wins."""
    spec = line_spec(0.002, 1.0)
    snap = NetworkState.static(spec).snapshot(0.0)
    model = CostModel(tiny, spec)
    n = len(tiny.units)
    rows_end = max(p for p in tiny.cut_points if 0 < p < n and tiny.stage_kind(p) != "flat")
    scrambled = Plan.build(
        "s", "s", [(0, rows_end, {"b": 1.0, "c": 1.0, "s": 1.0}), (rows_end, n, {"s": 1.0})]
    )
    polished = polish(model, snap, tiny, Objective(), [scrambled], budget=0)
    assert adjacent(spec, polished.stages[0].devices)  # one hop between neighbouring bands
    assert set(polished.stages[0].devices) <= {"b", "c", "s"}  # only the devices the policy chose
    assert model.latency(polished, snap) < model.latency(scrambled, snap)


@pytest.mark.parametrize("order, stages", [(SHARES_FIRST, 1), (STRUCTURE_FIRST, 2)])
def test_a_descent_tries_the_kinds_of_move_in_the_order_it_is_given(tiny, order, stages):
    """With one plan to spend, a descent from a one-stage plan spends it on the first kind of its order:
    rescaling a share keeps one stage, splitting the stage makes two."""
    spec = line_spec(0.002, 1.0)
    snap = NetworkState.static(spec).snapshot(0.0)
    search = PlanSearch(CostModel(tiny, spec), snap, tiny, Objective())
    start = Plan.build("s", "s", [(0, len(tiny.units), {"s": 1.0, "b": 1.0})])
    search.consider(start)
    search.local_search(1, np.random.default_rng(0), starts=1, order=order)
    tried = [plan for plan in search.scores if plan != start]
    assert tried and all(len(plan.stages) == stages for plan in tried)


def test_a_polish_keeps_the_better_of_its_two_descents(tiny, monkeypatch):
    """A one-stage plan over the whole model: with a budget of 5, the descent that splits stages first
    beats the one that tunes shares first, and the polish, which runs both, returns what the better one
    would (the robust price judges both). Without the shape descent, which would find the split itself."""
    monkeypatch.setattr(polish_module, "SHAPE_BUDGET", 0)
    spec = line_spec(0.002, 1.0)
    snap = NetworkState.static(spec).snapshot(0.0)
    model = CostModel(tiny, spec)
    start = Plan.build("s", "s", [(0, len(tiny.units), {"s": 1.0, "b": 1.0, "c": 1.0})])
    judge = robust_search(model, snap, tiny, Objective())

    def polished_price(orders):
        monkeypatch.setattr(polish_module, "ORDERS", orders)
        return judge.price(polish(model, snap, tiny, Objective(), [start], budget=5))

    shares, structure = polished_price((SHARES_FIRST,)), polished_price((STRUCTURE_FIRST,))
    assert structure < shares
    assert polished_price((SHARES_FIRST, STRUCTURE_FIRST)) == structure


def test_a_polish_descends_over_shapes_from_the_policys_on_the_devices_it_chose(tiny, monkeypatch):
    """A one-stage plan over s, b, c: with no local search (budget 0), the shape descent alone moves its
    cuts and factors (the completion placing bands over s, b and c only) to a plan the robust price
    rates better; without it, the polish keeps the policy's one stage."""
    spec = line_spec(0.002, 1.0)
    snap = NetworkState.static(spec).snapshot(0.0)
    model = CostModel(tiny, spec)
    start = Plan.build("s", "s", [(0, len(tiny.units), {"s": 1.0, "b": 1.0, "c": 1.0})])
    judge = robust_search(model, snap, tiny, Objective())
    descended = polish(model, snap, tiny, Objective(), [start], budget=0)
    assert len(descended.stages) > 1 and judge.price(descended) < judge.price(start)
    assert set(model.skeleton(descended).devices) <= {"s", "b", "c"}
    monkeypatch.setattr(polish_module, "SHAPE_BUDGET", 0)
    assert len(polish(model, snap, tiny, Objective(), [start], budget=0).stages) == 1
