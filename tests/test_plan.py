"""Plans validate with messages that name the fault, and survive a JSON round trip."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import models
from runtime.graph import LayerGraph
from runtime.plan import Plan, PlanError, random_plan


@pytest.fixture(scope="module")
def graph():
    return LayerGraph.from_model(models.build("tiny"), models.input_shape("tiny"), "tiny")


def whole(graph, shares):
    return Plan.build("a", "b", [(0, len(graph.units), shares)])


def test_json_round_trip(graph):
    plan = random_plan(graph, ["a", "b", "c", "d"], np.random.default_rng(3))
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.validate(graph) is plan


def test_zero_row_assignment_is_dropped(graph):
    g = graph.groups[0]
    plan = Plan.build("a", "a", [(g[0], g[1], {"a": 1.0, "b": 1e-6}), (g[1], len(graph.units), {"a": 1})])
    bands = plan.validate(graph).bands(graph)
    assert [b.device for b in bands[0]] == ["a"]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([], "no stages"),
        ([(0, 99, {"a": 1})], "stage 0 .* outside"),
        ([(0, None, {"a": 0})], "share 0"),
        ([(0, None, {"a": -1})], "share -1"),
        ([(0, None, {"a": float("nan")})], "share nan"),
        ([(0, None, {})], "no devices"),
        ([(0, None, {"x": 1})], "device 'x' is not in the cluster"),
    ],
)
def test_invalid_plans(graph, stages, message):
    n = len(graph.units)
    stages = [(s, n if e is None else e, d) for s, e, d in stages]
    with pytest.raises(PlanError, match=message):
        Plan.build("a", "b", stages).validate(graph, devices=["a", "b"])


def test_overlap_gap_and_forbidden_cut(graph):
    n = len(graph.units)
    c1, c2 = graph.cut_points[1], graph.cut_points[2]
    with pytest.raises(PlanError, match="stage 1 .* overlaps"):
        Plan.build("a", "a", [(0, c2, {"a": 1}), (c1, n, {"a": 1})]).validate(graph)
    with pytest.raises(PlanError, match=r"stage 1 .* units \[\d+, \d+\) are not in any stage"):
        Plan.build("a", "a", [(0, c1, {"a": 1}), (c2, n, {"a": 1})]).validate(graph)
    with pytest.raises(PlanError, match=r"units \[\d+, \d+\) are not in any stage"):
        Plan.build("a", "a", [(0, c1, {"a": 1})]).validate(graph)
    forbidden = next(i for i in range(1, n) if i not in graph.cut_points)
    with pytest.raises(PlanError, match=f"stage 0 .* cannot cut after unit {forbidden - 1}"):
        Plan.build("a", "a", [(0, forbidden, {"a": 1}), (forbidden, n, {"a": 1})]).validate(graph)


def test_more_devices_than_rows(graph):
    n = len(graph.units)
    features = graph.extent(n)
    shares = {f"d{i}": 1 for i in range(features + 1)}
    with pytest.raises(PlanError, match=f"{features + 1} devices but the output has only {features}"):
        Plan.build("d0", "d0", [(0, n, shares)]).validate(graph)


def test_source_and_sink_must_be_known(graph):
    with pytest.raises(PlanError, match="sink device 'zz'"):
        Plan.build("a", "zz", [(0, len(graph.units), {"a": 1})]).validate(graph, devices=["a"])


@pytest.mark.parametrize("text", ["{", "[]", '{"stages": [{"start": 0}]}', '{"format": "x/9"}'])
def test_malformed_json(text):
    with pytest.raises(PlanError):
        Plan.from_json(text)
