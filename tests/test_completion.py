"""The compiled pieces of env/completion.py against their definitions, and the plan forms it returns."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from env.completion import complete, complete_arrays, split_rows
from env.config import model_graph
from env.cost_model import CostModel
from env.net_view import net_view
from env.network import NetworkState
from env.plan_arrays import PlanArrays
from env.shapes import Shape, structured_shapes
from runtime.halo import split_by_shares
from runtime.plan import Plan
from runtime.spec import load_cluster, parse_cluster


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=5000),
    st.lists(st.floats(min_value=1e-6, max_value=1e6, allow_nan=False), min_size=1, max_size=8),
)
def test_split_rows_is_split_by_shares(total, shares):
    """The completion's compiled largest-remainder split gives exactly runtime.halo's sizes, including
    ties (earlier entry first) and shares that are already whole rows."""
    assert split_rows(total, np.array(shares)).tolist() == split_by_shares(total, shares)
    whole = [float(int(s) + 1) for s in shares]
    assert split_rows(int(sum(whole)), np.array(whole)).tolist() == split_by_shares(int(sum(whole)), whole)


def test_plan_arrays_and_plans_are_one_plan_two_forms():
    """The completion's arrays expand to the Plan ``complete`` gives, a Plan turns back into equal arrays,
    and the cost model prices both forms the same."""
    graph, spec = model_graph("tiny"), load_cluster(Path(__file__).parents[1] / "configs/clusters/tiny3.yaml")
    snapshot = NetworkState.static(spec).snapshot(0.0)
    view, model = net_view(snapshot), CostModel(graph, spec)
    shapes = structured_shapes(graph, len(graph.groups), 3)
    assert len(shapes) > 3
    for shape in shapes:
        arrays, plan = complete_arrays(graph, view, shape), complete(graph, view, shape)
        assert arrays.plan == plan
        again = PlanArrays.of(plan, view.devices, view.index)
        assert again == arrays and hash(again) == hash(arrays)
        assert model.cost(arrays, snapshot) == model.cost(plan, snapshot)
    first, second = (complete_arrays(graph, view, s) for s in shapes[1:3])
    assert first != second


def test_plans_that_differ_only_in_where_a_stage_ends_are_different_plans():
    """Same stages, same devices and shares in the same order, split differently between the stages."""
    graph, spec = model_graph("tiny"), load_cluster(Path(__file__).parents[1] / "configs/clusters/tiny3.yaml")
    d = list(spec.device_ids)
    cut = graph.cut_points[1]
    stages = [(0, cut), (cut, len(graph.units))]
    first = Plan.build(d[0], d[0], [(*stages[0], {d[0]: 1.0, d[1]: 1.0}), (*stages[1], {d[2]: 1.0})])
    second = Plan.build(d[0], d[0], [(*stages[0], {d[0]: 1.0}), (*stages[1], {d[1]: 1.0, d[2]: 1.0})])
    index = {name: i for i, name in enumerate(spec.device_ids)}
    assert PlanArrays.of(first, spec.device_ids, index) != PlanArrays.of(second, spec.device_ids, index)
    model, snapshot = CostModel(graph, spec), NetworkState.static(spec).snapshot(0.0)
    assert model.cost(first, snapshot) != model.cost(second, snapshot)  # not one cached skeleton for both


def test_the_first_stage_orders_its_bands_along_the_mesh():
    """On a line a-b-s-c-d with the source s in the middle, five bands ordered by distance from s (s, b,
    c, a, d) would put neighbouring bands up to four hops apart; the completion lays them along the line,
    so every halo exchange is one hop, and later stages keep that order."""
    line = ["a", "b", "s", "c", "d"]
    power = {"compute": 1.0, "transmit": 1.0, "receive": 1.0, "idle": 0.1}
    data = {"format": "disnet-cluster/1", "name": "line5", "source": "s", "sink": "s"}
    devices = [{"id": d, "gflops": 0.002, "power": power} for d in line]  # compute-bound: all five work
    links = [{"a": x, "b": y, "mbps": 10.0} for x, y in itertools.pairwise(line)]
    spec = parse_cluster({**data, "devices": devices, "links": links})
    graph = model_graph("tiny")
    first, second = graph.cut_points[1:3]  # two row-split stages, then the rest on one device
    shape = Shape((0, first, second, len(graph.units)), (5, 5, 1))
    plan = complete(graph, net_view(NetworkState.static(spec).snapshot(0.0)), shape)
    assert [st.devices for st in plan.stages[:2]] in ([tuple(line)] * 2, [tuple(reversed(line))] * 2)
