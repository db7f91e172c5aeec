"""Throughput plans for one stream (agents/pipelines.py) and device groups for several (agents/streams.py).

A pipeline of stages on disjoint devices sustains one frame per busiest stage, not one per frame's latency:
the contention model must price it so, and the planners must find such plans and never pretend that
streams crowded onto one device each get its whole speed.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from agents import make_planner
from agents.pipelines import device_orders, pipeline_plans
from agents.streams import LATENCY, Demand, JointPlanner, best_disjoint_grouping, device_groups
from env.completion import stage_info
from env.contention import Arrival, Contention
from env.cost_model import CostModel, Profile
from env.network import NetworkState
from runtime import models
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.spec import parse_cluster

MODEL = "tiny"
GRAPH = LayerGraph.from_model(models.skeleton(MODEL), models.input_shape(MODEL), MODEL)
N_UNITS = len(GRAPH.units)
SPEEDS = {"a": 1, "b": 1, "c": 2, "d": 2, "e": 1, "f": 1}  # x 10 MFLOP/s: compute outweighs the radios
# two triangles a-b-c and d-e-f joined by the link c-d
LINKS = ("ab", "bc", "ac", "cd", "de", "ef", "df")
MESH6 = parse_cluster(
    {
        "format": "disnet-cluster/1",
        "name": "mesh6",
        "source": "a",
        "sink": "f",
        "devices": [
            {
                "id": d,
                "gflops": g / 100,
                "power": {"compute": 2.0, "transmit": 1.0, "receive": 1.0, "idle": 0.2},
            }
            for d, g in SPEEDS.items()
        ],
        "links": [{"a": x, "b": y, "mbps": 40} for x, y in LINKS],
    },
    origin="mesh6",
)


@pytest.fixture(scope="module")
def cost():
    return CostModel(GRAPH, MESH6)


@pytest.fixture(scope="module")
def snapshot():
    return NetworkState.static(MESH6).snapshot(0.0)


def test_a_pipeline_on_disjoint_devices_sustains_one_frame_per_busiest_stage(cost, snapshot):
    contention = Contention(cost)
    pipeline = Plan.build("c", "d", [(0, 6, {"c": 1}), (6, N_UNITS, {"d": 1})])
    one_device = Plan.build("c", "c", [(0, 6, {"c": 1}), (6, N_UNITS, {"c": 1})])
    times = cost.predict(pipeline, snapshot).device_time
    busiest = max(times["c"].compute_s, times["c"].send_s, times["d"].compute_s)
    assert contention.capacity([pipeline], snapshot) == pytest.approx(1 / busiest)
    assert contention.capacity([one_device], snapshot) == pytest.approx(
        1 / cost.predict(one_device, snapshot).device_time["c"].compute_s
    )
    assert contention.capacity([pipeline], snapshot) > 1.5 * contention.capacity([one_device], snapshot)
    # frames arriving at that rate overlap without queueing: the last one is as fast as the first
    latency = contention.latencies([Arrival(pipeline, k * busiest) for k in range(24)], snapshot)
    assert latency[-1] == pytest.approx(latency[0])
    assert contention.equal_rate([pipeline], [10.0], snapshot) == pytest.approx(1 / busiest)


def test_pipelines_start_at_the_source_and_keep_their_stages_on_disjoint_devices(snapshot):
    plans = pipeline_plans(snapshot, GRAPH, list(SPEEDS))
    assert len(plans) == len(set(plans)) > 1
    assert any(len(p.stages) == 1 for p in plans) and any(len(p.stages) > 2 for p in plans)
    for plan in plans:
        plan.validate(GRAPH, MESH6.device_ids)
        assert snapshot.source in plan.stages[0].devices
        groups = [set(st.devices) for st in plan.stages]
        assert sum(map(len, groups)) == len(set().union(*groups))
        for st in plan.stages:
            if GRAPH.stage_kind(st.end) == "flat":
                assert len(st.devices) == 1
    confined = pipeline_plans(snapshot, GRAPH, ["a", "b", "c"])
    assert all({d for st in p.stages for d in st.devices} <= {"a", "b", "c"} for p in confined)


def test_device_orders_start_at_the_source_nearest_or_fastest_first(snapshot):
    nearest, fastest = device_orders(snapshot, list(SPEEDS))
    assert nearest == ("a", "c", "b", "d", "e", "f")
    assert fastest == ("a", "c", "d", "b", "e", "f")
    with pytest.raises(ValueError, match="source 'a' must be one of"):
        device_orders(snapshot, ["b", "c"])


def test_device_groups_grow_from_each_source_apart_and_balanced(snapshot):
    groups = device_groups(snapshot, [Demand("a", "f", 1.0), Demand("e", "f", 1.0)])
    assert [g[0] for g in groups] == ["a", "e"]
    assert set(groups[0]) == {"a", "b", "c"} and set(groups[1]) == {"d", "e", "f"}
    down = replace(snapshot, available=frozenset("abcef"))
    assert sorted(
        d for g in device_groups(down, [Demand("a", "f", 1.0), Demand("e", "f", 1.0)]) for d in g
    ) == list("abcef")


def test_the_pipelined_plan_sustains_more_than_the_latency_plan_and_the_best_single_device(cost, snapshot):
    planner = make_planner("optimal", graph=GRAPH, spec=MESH6, cost_model=cost, max_evaluations=60)
    contention = Contention(cost)
    latency_plan = planner.plan(snapshot, GRAPH, LATENCY)
    one = JointPlanner(planner, cost, rounds=1, budget=20).plan(snapshot, GRAPH, [Demand("a", "f", 10.0)])
    singles = [Plan.build("a", "f", [(0, N_UNITS, {d: 1})]) for d in SPEEDS]
    assert one.fps == pytest.approx(contention.equal_rate(one.plans, [10.0], snapshot))
    assert one.fps >= contention.equal_rate([latency_plan], [10.0], snapshot)
    assert one.fps > 1.5 * max(contention.equal_rate([p], [10.0], snapshot) for p in singles)


def test_streams_forced_onto_one_device_are_predicted_at_a_share_of_its_rate(cost, snapshot):
    """With only device c up, two streams must share it: the joint planner predicts half the rate one
    stream gets there (a planner that ignored contention would promise each the whole device)."""
    planner = make_planner("optimal", graph=GRAPH, spec=MESH6, cost_model=cost, max_evaluations=20)
    only_c = replace(snapshot, available=frozenset("c"))
    joint = JointPlanner(planner, cost, rounds=1, budget=10)
    one = joint.plan(only_c, GRAPH, [Demand("c", "c", 10.0)])
    two = joint.plan(only_c, GRAPH, [Demand("c", "c", 10.0)] * 2)
    assert all(p.devices == {"c"} for p in one.plans + two.plans)
    assert two.fps == pytest.approx(one.fps / 2, rel=0.03)


def test_the_best_disjoint_grouping_is_the_best_of_every_grouping_priced_together(cost, snapshot):
    """The yardstick prunes assignments by what their streams sustain alone; it must still return what
    pricing every assignment together finds, on groups that share no device but the sink."""
    planner = make_planner("optimal", graph=GRAPH, spec=MESH6, cost_model=cost, max_evaluations=20)
    joint = JointPlanner(planner, cost, rounds=1, budget=10)
    planned = {}  # each group's plans, made once: the yardstick and the enumeration below ask the same
    group_plans = joint.group_plans

    def plan_once(snapshot, graph, demand, group):
        if (demand, tuple(group)) not in planned:
            planned[demand, tuple(group)] = group_plans(snapshot, graph, demand, group)
        return planned[demand, tuple(group)]

    joint.group_plans = plan_once
    contention = Contention(cost)
    demands = [Demand("a", "f", 10.0), Demand("e", "f", 10.0)]
    best = best_disjoint_grouping(joint, snapshot, GRAPH, demands)
    assert len(planned) == 32  # every grouping of b, c, d, f between the two streams
    every = []
    for assignment in itertools.product(range(2), repeat=4):
        groups = [
            (src, *(d for d, a in zip("bcdf", assignment, strict=True) if a == i))
            for i, src in enumerate("ae")
        ]
        plans = [
            max(
                joint.group_plans(snapshot, GRAPH, dm, g),
                key=lambda p: contention.equal_rate([p], [10.0], snapshot),
            )
            for dm, g in zip(demands, groups, strict=True)
        ]
        every.append(contention.equal_rate(plans, [10.0, 10.0], snapshot))
    assert best.fps == pytest.approx(max(every))
    assert best.fps == pytest.approx(contention.equal_rate(best.plans, [10.0, 10.0], snapshot))
    computing = [{d for st in p.stages for d in st.devices} for p in best.plans]
    assert not computing[0] & computing[1] - {"f"}


def test_the_best_disjoint_grouping_refuses_a_mesh_too_large_to_enumerate(cost, snapshot):
    planner = make_planner("optimal", graph=GRAPH, spec=MESH6, cost_model=cost, max_evaluations=20)
    joint = JointPlanner(planner, cost, rounds=1, budget=10)
    with pytest.raises(ValueError, match="32 group plannings, more than the limit of 16"):
        best_disjoint_grouping(joint, snapshot, GRAPH, [Demand("a", "f", 10.0), Demand("e", "f", 10.0)], 16)


def test_pipelines_proposed_on_a_profile_balance_its_seconds_not_the_flops(snapshot):
    """A profile whose first unit costs as much as all the rest (FLOPs say it is cheap): the DP must cut
    where the profile's seconds balance, so its pipelines, priced on that profile, sustain more than
    those proposed on FLOPs."""
    flops = [float(GRAPH.band_flops(u, u + 1, (0, GRAPH.extent(u + 1)))) for u in range(N_UNITS)]
    seconds = [f / 1e9 for f in flops]
    seconds[0] = sum(seconds[1:])
    profile = Profile(model=MODEL, reference_gflops=1.0, unit_seconds=tuple(seconds))
    contention = Contention(CostModel(GRAPH, MESH6, profile))
    info = stage_info(GRAPH, 0, 1, 1, profile)
    assert info.flops == pytest.approx(seconds[0] * 1e9)

    def best(plans: list[Plan]) -> float:
        return max(contention.capacity([p], snapshot) for p in plans)

    devices = list(SPEEDS)
    on_profile = best(pipeline_plans(snapshot, GRAPH, devices, profile=profile))
    on_flops = best(pipeline_plans(snapshot, GRAPH, devices))
    assert on_profile > 1.1 * on_flops
