"""Planners on the tiny model and small clusters: valid plans on available devices only, the optimiser
exact against brute force and never worse than the others, memory limits, the energy objective, and
DISNET's segments and partition caps."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import PLANNERS, DisnetPlanner, MoDNN, OptimalPlanner, PlannerError, make_planner, planner_labels
from agents.base import drafts, fits_memory, memory_use
from env.completion import complete
from env.cost_model import CostModel, Objective
from env.meshes import generate_mesh
from env.net_view import net_view
from env.network import NetworkState
from env.shapes import Shape
from runtime import models
from runtime.graph import LayerGraph
from runtime.spec import load_cluster, parse_cluster
from serving.evaluation import decide_or_wait

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "clusters"
SHARED = Path(__file__).resolve().parents[2] / "shared"
LATENCY, ENERGY = Objective("latency"), Objective("energy")


@pytest.fixture(scope="module")
def tiny():
    return LayerGraph.from_model(models.build("tiny"), models.input_shape("tiny"), "tiny")


@pytest.fixture(scope="module")
def tiny3():
    return load_cluster(CONFIGS / "tiny3.yaml")


def five_spec(memory_mb=None):
    """Five heterogeneous devices, fully linked at different rates; d2 is fast but power hungry."""
    gflops = [0.5, 1.0, 2.0, 0.75, 1.25]
    compute_w = [1.0, 2.2, 6.0, 1.5, 3.0]
    devices = [
        {
            "id": f"d{i}",
            "gflops": gflops[i],
            "power": {"compute": compute_w[i], "transmit": 1.0, "receive": 0.9, "idle": 0.3},
            **({"memory_mb": memory_mb[i]} if memory_mb and memory_mb[i] else {}),
        }
        for i in range(5)
    ]
    pairs = list(itertools.combinations(range(5), 2))
    mbps = [20, 50, 10, 30, 40, 25, 15, 45, 35, 5]
    links = [{"a": f"d{i}", "b": f"d{j}", "mbps": m} for (i, j), m in zip(pairs, mbps, strict=True)]
    data = {"format": "disnet-cluster/1", "name": "five", "source": "d0", "sink": "d4"}
    return parse_cluster({**data, "devices": devices, "links": links})


def snapshot(spec, rng=None, down=()):
    """What a planner sees in a static world; with ``rng``, measured speeds and bandwidths vary."""
    snap = NetworkState.static(spec).snapshot(0.0)
    snap = replace(snap, available=snap.available - set(down))
    if rng is None:
        return snap
    return replace(
        snap,
        speed={d: float(rng.uniform(0.3, 1.5)) for d in snap.speed},
        link_mbps={k: float(rng.uniform(2.0, 60.0)) for k in snap.link_mbps},
    )


def with_cuts(graph, cuts):
    """The same units with cuts allowed only at ``cuts`` (fewer groups, a smaller search space)."""
    last = len(graph.units) - 1
    units = [replace(u, cut_after=u.index == last or u.index + 1 in cuts) for u in graph.units]
    return LayerGraph(units, graph.input_shape, graph.name)


def score(graph, snap, plan, objective):
    return objective.score(CostModel(graph, snap.spec).predict(plan, snap))


def brute_force(graph, snap, objective):
    """Best objective over every shape (cut set x split factors) completed by env.completion."""
    model, view = CostModel(graph, snap.spec), net_view(snap)
    inner, n = graph.cut_points[1:-1], len(graph.units)
    best = math.inf
    for mask in range(1 << len(inner)):
        bounds = (0, *(c for i, c in enumerate(inner) if mask >> i & 1), n)
        choices = [range(1, min(view.n_usable, graph.extent(e)) + 1) for e in bounds[1:]]
        for factors in itertools.product(*choices):
            plan = complete(graph, view, Shape(bounds, factors))
            best = min(best, objective.score(model.predict(plan, snap)))
    return best


# ---- every planner ---------------------------------------------------------------------------------


def test_registry_builds_every_planner_and_rejects_unknown_names(tiny, tiny3):
    snap = snapshot(tiny3, down=("d1",))
    for name in PLANNERS:
        plan = make_planner(name, graph=tiny, spec=tiny3).plan(snap, tiny, LATENCY)
        assert plan.validate(tiny, tiny3.device_ids)
    with pytest.raises(PlannerError, match="valid names"):
        make_planner("alphago")
    with pytest.raises(PlannerError, match="energy_sensitivity"):
        make_planner("disnet", energy_sensitivity=2.0)


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_plans_validate_and_use_only_available_devices(name, tiny, tiny3):
    five = five_spec()
    cases = [
        snapshot(tiny3),
        snapshot(five),
        snapshot(five, np.random.default_rng(1), down=("d2",)),
        snapshot(five, np.random.default_rng(2), down=("d1", "d3")),
    ]
    for snap in cases:
        for objective in (LATENCY, ENERGY):
            # the exhaustive search over tiny3's 12,288 shapes takes seconds; the descent is the riskier path
            # (the robust optimiser passes the option to the snapshot optimiser it is built on)
            options = {"exact_limit": 2000} if name in ("optimal", "snapshot-optimal") else {}
            plan = make_planner(name, **options).plan(snap, tiny, objective)
            plan.validate(tiny, snap.spec.device_ids)
            assert (plan.source, plan.sink) == (snap.source, snap.sink)
            assert {d for st in plan.stages for d in st.devices} <= snap.available, plan.describe()


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_no_device_available_is_a_planner_error(name, tiny, tiny3):
    """Every worker declared dead at once (a stalled host does that): an error naming why, never a crash."""
    with pytest.raises(PlannerError, match="available"):
        make_planner(name).plan(snapshot(tiny3, down=tiny3.device_ids), tiny, LATENCY)


# ---- the optimiser ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec_name", "cuts", "down"),
    [("five", {3, 7, 9}, ()), ("tiny3", {3, 6, 7, 9}, ()), ("five", {3, 6, 7, 8, 9}, ("d1", "d2", "d3"))],
)
def test_optimizer_is_exact_against_brute_force(spec_name, cuts, down, tiny, tiny3):
    """<= 5 devices, <= 6 groups: the exact search finds the brute-force optimum over W, and the
    default optimiser (seeds and local search beyond W) is never worse than it."""
    spec = five_spec() if spec_name == "five" else tiny3
    graph = with_cuts(tiny, cuts)
    snap = snapshot(spec, np.random.default_rng(len(cuts)), down=down)
    for objective in (LATENCY, ENERGY):
        best = brute_force(graph, snap, objective)
        exact = OptimalPlanner(refine=False, seed_planners=[]).plan(snap, graph, objective)
        assert score(graph, snap, exact, objective) == pytest.approx(best, rel=1e-12)
        default = OptimalPlanner().plan(snap, graph, objective)
        assert score(graph, snap, default, objective) <= best * (1 + 1e-12)


def test_optimizer_is_never_worse_than_any_other_planner(tiny):
    spec = five_spec()
    rng = np.random.default_rng(7)
    others = [make_planner(name) for name in PLANNERS if name != "optimal"]
    for trial in range(4):
        snap = snapshot(spec, rng, down=("d3",) if trial % 2 else ())
        for objective in (LATENCY, ENERGY, Objective("weighted", 0.05)):
            best = score(tiny, snap, OptimalPlanner().plan(snap, tiny, objective), objective)
            for planner in others:
                other = score(tiny, snap, planner.plan(snap, tiny, objective), objective)
                assert best <= other * (1 + 1e-12), (planner, objective)


def test_memory_limits_are_respected(tiny):
    """Fast devices too small for most of the weights: every plan must fit, and the limit must bind."""
    free, tight = five_spec(), five_spec(memory_mb=[None, 0.03, 0.03, None, 0.03])
    snap_free, snap_tight = snapshot(free), snapshot(tight)
    unconstrained = OptimalPlanner().plan(snap_free, tiny, LATENCY)
    assert not fits_memory(unconstrained, tiny, tight)  # otherwise this test proves nothing
    for name in PLANNERS:
        plan = make_planner(name).plan(snap_tight, tiny, LATENCY)
        assert fits_memory(plan, tiny, tight), (name, plan.describe(), memory_use(drafts(plan), tiny))


def test_a_scheme_whose_rule_overfills_a_device_says_so_instead_of_planning_the_impossible(tiny):
    """The source holds a tenth of the model: local-only, and MoDNN's owner computing every other layer
    group, cannot serve; every other planner plans within memory (the optimiser seeded without them)."""
    spec = five_spec(memory_mb=[0.03, None, None, None, None])
    snap = snapshot(spec)
    with pytest.raises(
        PlannerError, match="local-only cannot serve this cluster: .* on d0, which has 0.03 MB"
    ):
        make_planner("local").plan(snap, tiny, LATENCY)
    with pytest.raises(PlannerError, match="modnn cannot serve this cluster"):
        make_planner("modnn").plan(snap, tiny, LATENCY)
    for name in (p for p in PLANNERS if p not in ("local", "modnn")):
        plan = make_planner(name).plan(snap, tiny, LATENCY)
        assert fits_memory(plan, tiny, spec), (name, plan.describe(), memory_use(drafts(plan), tiny))


def test_the_optimisers_find_a_plan_where_every_coarse_stage_overfills_memory():
    """420 MB devices: VGG-16's flat layers in one stage (494 MB) fit on none, so every structured shape
    and every seed overfills a device; a stage per group fits (the largest group, 411 MB, alone), and the
    optimisers must find such a plan instead of reporting that none fits."""
    graph = LayerGraph.from_model(models.skeleton("vgg16_bn"), models.input_shape("vgg16_bn"), "vgg16_bn")
    doc = generate_mesh(4, 9001)
    for device in doc["devices"].values():
        device["memory_mb"] = 420
    spec = parse_cluster(doc)
    snap = NetworkState.static(spec).snapshot(0.0)
    for name in ("snapshot-optimal", "optimal"):
        plan = make_planner(name, graph=graph, spec=spec).plan(snap, graph, LATENCY)
        assert fits_memory(plan, graph, spec), (name, memory_use(drafts(plan), graph))


def test_energy_objective_trades_latency_for_energy(tiny):
    """d2 is the fastest device but burns 6 W: minimising energy must avoid it and cost latency."""
    snap = snapshot(five_spec())
    model = CostModel(tiny, snap.spec)
    fast = model.predict(OptimalPlanner().plan(snap, tiny, LATENCY), snap)
    frugal = model.predict(OptimalPlanner().plan(snap, tiny, ENERGY), snap)
    assert frugal.energy_j < 0.9 * fast.energy_j
    assert frugal.latency_s > fast.latency_s


# ---- DISNET and the baselines ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg():
    return LayerGraph.from_model(models.build("vgg16_bn"), (3, 32, 32), "vgg16_bn")


def test_disnet_segments_and_partition_caps_on_vgg16(vgg):
    """VGG-16: conv/pool groups [0,4), [4,9), [9,14), [14,18) capped at 6, 5, 4, 3 partitions; each
    group its own stage; the fully connected groups on one device."""
    mesh = SHARED / "scenarios" / "disnet-mesh0.json"
    if not mesh.exists():
        pytest.skip("shared scenarios not available")
    spec = load_cluster(mesh, bandwidth_cap=10)
    planner = DisnetPlanner()
    segments = planner.segments(vgg)
    group_index = {g: i for i, g in enumerate(vgg.groups)}
    spans = [(group_index[groups[0]], group_index[groups[-1]] + 1) for groups, _ in segments]
    assert spans == [(0, 4), (4, 9), (9, 14), (14, 18)]
    assert [cap for _, cap in segments] == [6, 5, 4, 3]
    for objective in (LATENCY, ENERGY):
        plan = planner.plan(snapshot(spec), vgg, objective)
        stages = {(st.start, st.end): st for st in plan.stages}
        for groups, cap in segments:
            # one neighbourhood per segment (a stage with fewer output rows takes a prefix of it)
            widest = max((stages[g].devices for g in groups), key=len)
            assert 1 <= len(widest) <= cap
            assert all(stages[g].devices == widest[: len(stages[g].devices)] for g in groups)
        assert len(plan.stages) == 18 + 1
        tail = plan.stages[-1]
        assert (tail.start, tail.end, len(tail.devices)) == (vgg.groups[18][0], len(vgg.units), 1)


def test_disnet_caps_partitions_per_segment(tiny):
    """tiny has 5 spatial groups: caps (3, 2) give segments of 3 and 2 groups (the longer first when
    the runs are equally central), each at most that wide, then the flat tail on one device."""
    planner = DisnetPlanner(max_partitions=(3, 2))
    segments = planner.segments(tiny)
    assert [(len(groups), cap) for groups, cap in segments] == [(3, 3), (2, 2)]
    for trial in range(3):
        snap = snapshot(five_spec(), np.random.default_rng(trial))
        plan = planner.plan(snap, tiny, LATENCY)
        widths = {(st.start, st.end): len(st.devices) for st in plan.stages}
        for groups, cap in segments:
            assert all(1 <= widths[g] <= cap for g in groups)
        assert max(widths[g] for g in segments[0][0]) == 3  # five devices all linked: the cap binds
        assert len(plan.stages[-1].devices) == 1 and plan.stages[-1].end == len(tiny.units)


def test_disnet_energy_sensitivity_prefers_efficient_devices(tiny):
    snap = snapshot(five_spec())
    fast = DisnetPlanner(energy_sensitivity=0.0).resources(snap, 0.0)
    frugal = DisnetPlanner(energy_sensitivity=1.0).resources(snap, 1.0)
    assert max(fast, key=fast.get) == "d2"  # the fastest
    assert max(frugal, key=frugal.get) == "d0"  # the most GFLOP per joule (0.5 GFLOP/s at 1 W)


def test_modnn_gathers_at_the_source_after_every_split_layer(tiny):
    snap = snapshot(five_spec())
    plan = MoDNN().plan(snap, tiny, LATENCY)
    assert [(st.start, st.end) for st in plan.stages] == tiny.groups  # layer by layer
    owner_only = [st.devices == (snap.source,) for st in plan.stages]
    assert all(a != b for a, b in itertools.pairwise(owner_only))  # split, gather, split, ...
    p2p = MoDNN(gather=False).plan(snap, tiny, LATENCY)
    assert all(len(st.devices) > 1 for st in p2p.stages)


def test_deepthings_shares_tiles_by_speed_and_its_equal_reading_is_bound_by_the_slowest():
    graph = LayerGraph.from_model(models.build("tiny"), (3, 128, 128), "tiny")  # rows enough for 5 bands
    snap = snapshot(five_spec())
    stealing, equal = make_planner("deepthings"), make_planner("deepthings-equal")
    fused = stealing.plan(snap, graph, LATENCY).stages[0]
    fused_equal = equal.plan(snap, graph, LATENCY).stages[0]
    assert fused.devices == fused_equal.devices and len(fused.devices) == 5
    speed_total = sum(snap.device_gflops(d) for d in fused.devices)
    share_total = sum(a.share for a in fused.assignments)
    for a in fused.assignments:
        assert a.share / share_total == pytest.approx(snap.device_gflops(a.device) / speed_total)
    assert len({a.share for a in fused_equal.assignments}) == 1
    faster = score(graph, snap, stealing.plan(snap, graph, LATENCY), LATENCY)
    assert faster < score(graph, snap, equal.plan(snap, graph, LATENCY), LATENCY)


def test_planner_labels_are_short_unless_two_would_look_alike():
    names = ["optimal", "ppo:runs/a/policy.zip", "ppo:runs/b/policy.zip", "ppo-top3:runs/a/policy.zip"]
    assert planner_labels(names) == {
        "optimal": "optimal",
        "ppo:runs/a/policy.zip": "ppo:runs/a/policy.zip",  # two runs' policy.zip: the whole names
        "ppo:runs/b/policy.zip": "ppo:runs/b/policy.zip",
        "ppo-top3:runs/a/policy.zip": "ppo-top3:policy.zip",
    }


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_an_outage_that_cuts_the_source_off_now_is_a_plan_or_a_marked_fallback_never_an_error(name, tiny):
    """Every link of the source reads 0 Mbit/s now (a recorded trace's outage): a comparison must go on,
    so a planner plans (its request waits the outage out) or says the snapshot is cut off
    (``CutOff``, which ``decide_or_wait`` answers with a marked fallback); any other error stops the run."""
    snap = snapshot(five_spec())
    dark = replace(snap, link_mbps={k: 0.0 if snap.source in k else v for k, v in snap.link_mbps.items()})
    options = {"exact_limit": 2000} if name in ("optimal", "snapshot-optimal") else {}
    decision = decide_or_wait(make_planner(name, **options), dark, tiny, LATENCY)
    decision.plan.validate(tiny, dark.spec.device_ids)
    assert (decision.plan.source, decision.plan.sink) == (dark.source, dark.sink)
