"""The certified lower bound: below the cost of every plan (random meshes, random plans, every planner's
plans, random speeds, bandwidths and failures), equal to the optimum where the full plan space is
enumerated, and a PlannerError naming the reason where no plan can serve."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from agents import PLANNERS, OptimalPlanner, PlannerError, make_planner
from agents.bound import chain_bound, lower_bound
from agents.chain_bound import rows_keep_their_place
from agents.local_search import PlanSearch
from agents.plan_space import full_plan_space, plan_space_size
from bench import bound as bound_bench
from bench.bound import kicked_search, restart_search
from env.cost_model import CostModel, Objective
from env.meshes import EVAL_SEED_BASE, mesh_spec
from env.network import NetworkState
from runtime import models
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.spec import parse_cluster

torch.set_num_threads(1)
OBJECTIVES = (Objective("latency"), Objective("energy"), Objective("weighted", 0.1))
TINY = LayerGraph.from_model(models.build("tiny"), models.input_shape("tiny"), "tiny")


def small_graph(rows: int = 4) -> LayerGraph:
    """conv | pool | conv on a ``rows`` x ``rows`` image: a plan space small enough to enumerate."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()
    )
    return LayerGraph.from_model(net, (1, rows, rows), "small")


def world(n_devices: int, seed: int, cap: float, rng: np.random.Generator, down: int = 0):
    """A DISNET-family mesh's static snapshot with random measured speeds and bandwidths (at most
    ``cap``) and ``down`` devices other than the source unavailable."""
    spec = mesh_spec(n_devices, seed, bandwidth_cap=cap)
    snap = NetworkState.static(spec).snapshot(0.0)
    others = [d for d in spec.device_ids if d != snap.source]
    failed = set(rng.choice(others, size=min(down, len(others)), replace=False).tolist())
    return replace(
        snap,
        available=snap.available - failed,
        speed={d: float(rng.uniform(0.3, 1.2)) for d in snap.speed},
        link_mbps={k: float(rng.uniform(0.2, 1.0)) * v for k, v in snap.link_mbps.items()},
    )


def random_plan(graph: LayerGraph, devices: list[str], snap, rng: np.random.Generator) -> Plan:
    """Random cuts, random device subsets in random order, random shares (any plan of the full space)."""
    inner = graph.cut_points[1:-1]
    cuts = sorted(c for c in inner if rng.random() < 0.4)
    stages = []
    for start, end in itertools.pairwise((0, *cuts, len(graph.units))):
        k = int(rng.integers(1, min(len(devices), graph.extent(end)) + 1))
        chosen = rng.choice(devices, size=k, replace=False)
        stages.append((start, end, {str(d): float(rng.uniform(0.2, 3.0)) for d in chosen}))
    return Plan.build(snap.source, snap.sink, stages)


@settings(max_examples=15, deadline=None)
@given(
    n_devices=st.integers(2, 6),
    seed=st.integers(0, 10_000),
    cap=st.sampled_from([1.0, 10.0, 50.0]),
    down=st.integers(0, 2),
    draw=st.integers(0, 2**32 - 1),
)
def test_bound_is_below_the_cost_of_random_plans(n_devices, seed, cap, down, draw):
    rng = np.random.default_rng(draw)
    snap = world(n_devices, seed, cap, rng, down)
    devices = [d for d in snap.spec.device_ids if d in snap.available]
    model = CostModel(TINY, snap.spec)
    plans = [random_plan(TINY, devices, snap, rng) for _ in range(10)]
    for objective in OBJECTIVES:
        bound = lower_bound(snap, TINY, objective, model)
        assert bound > 0
        for plan in plans:
            assert objective.score(model.predict(plan, snap)) >= bound, (objective, plan.describe())
    chains = chain_bound(snap, TINY, model)  # on its own: a chain bound above a plan hidden by nothing
    assert 0 < chains <= lower_bound(snap, TINY, OBJECTIVES[0], model)
    for plan in plans:
        assert model.predict(plan, snap).latency_s >= chains, plan.describe()


@pytest.mark.parametrize(
    ("n_devices", "seed", "down"), [(7, 1_000_011, 0), (6, 1_000_012, 1), (9, 1_000_013, 2)]
)
def test_bound_is_below_the_cost_of_every_planners_plan(n_devices, seed, down):
    rng = np.random.default_rng(seed)
    snap = world(n_devices, seed, 10.0, rng, down)
    model = CostModel(TINY, snap.spec)
    for objective in OBJECTIVES[:2]:
        bound = lower_bound(snap, TINY, objective, model)
        for name in PLANNERS:
            plan = make_planner(name, cost_model=model).plan(snap, TINY, objective)
            assert objective.score(model.predict(plan, snap)) >= bound, (name, objective)


def test_bound_holds_on_vgg16_for_the_optimiser_and_the_single_device_plans():
    """The model the targets are about: VGG-16's band tables and fully connected tail. Its latency bound
    is the chain bound's, above the capacity relaxation's with the image-release rows."""
    graph = LayerGraph.from_model(models.skeleton("vgg16_bn"), models.input_shape("vgg16_bn"), "vgg16_bn")
    snap = world(6, 1_000_001, 15.0, np.random.default_rng(3))
    model = CostModel(graph, snap.spec)
    end = len(graph.units)
    plans = [Plan.build(snap.source, snap.sink, [(0, end, {d: 1.0})]) for d in snap.spec.device_ids]
    plans.append(OptimalPlanner(model).plan(snap, graph, OBJECTIVES[0]))
    for objective in OBJECTIVES[:2]:
        bound = lower_bound(snap, graph, objective, model)
        assert 0 < bound <= min(objective.score(model.predict(p, snap)) for p in plans)
    without_chains = lower_bound(snap, graph, OBJECTIVES[0], model, chains=False)
    assert lower_bound(snap, graph, OBJECTIVES[0], model) == chain_bound(snap, graph, model) > without_chains


@pytest.mark.parametrize("crawling", ["device", "most devices", "link"])
def test_a_crawling_device_or_link_leaves_the_bound_whole(crawling):
    """A device or link a billionth as fast as the rest (a board throttled to a halt, a link the monitor
    still measures in an outage) pulled the certified bound to about 0 (or, 1e-5 as fast, stalled HiGHS
    for minutes), and so did most devices crawling under a floor taken from the median device. Slowing
    something can only raise the minimum, so the bound with it crawling must stay
    at the bound with it merely slow (to the certificate's rounding: it gave an energy bound of 0 beside a
    crawling link at HiGHS's default tolerances), and below every plan's cost."""
    snap = world(9, 1_000_001, 15.0, np.random.default_rng(3))
    model = CostModel(TINY, snap.spec)
    helpers = [d for d in snap.spec.device_ids if d != snap.source]
    crawlers = helpers[:5] if crawling == "most devices" else helpers[:1]
    link = next(iter(snap.link_mbps))

    def slowed(factor: float):
        if crawling != "link":
            return replace(snap, speed=snap.speed | dict.fromkeys(crawlers, factor))
        return replace(snap, link_mbps=snap.link_mbps | {link: snap.link_mbps[link] * factor})

    for objective in OBJECTIVES:
        slow, crawl = (lower_bound(slowed(f), TINY, objective, model) for f in (1e-3, 1e-9))
        assert crawl >= 0.999 * slow > 0, objective
        plan = OptimalPlanner(model).plan(slowed(1e-9), TINY, objective)
        assert crawl <= objective.score(model.predict(plan, slowed(1e-9))), objective


def test_a_racing_device_leaves_the_bound_whole():
    """One device 1e12 times as fast as the rest (a typo'd or GPU-backed entry) raised every other device
    to 1e-4 of it in the relaxation, pricing their compute as free: the bound fell to 1/150-1/500 of the
    optimiser's cost. Past being 10x as fast the helper's own compute is already nearly free, so the bound
    must stay near the bound at 10x, and below every plan's cost."""
    snap = world(6, 1_000_001, 15.0, np.random.default_rng(3))
    model = CostModel(TINY, snap.spec)
    helper = next(d for d in snap.spec.device_ids if d != snap.source)

    def racing(factor: float):
        return replace(snap, speed=snap.speed | {helper: snap.speed[helper] * factor})

    for objective in OBJECTIVES:
        fast, racing_bound = (lower_bound(racing(f), TINY, objective, model) for f in (10.0, 1e12))
        assert racing_bound >= 0.5 * fast > 0, objective
        plan = OptimalPlanner(model).plan(racing(1e12), TINY, objective)
        assert racing_bound <= objective.score(model.predict(plan, racing(1e12))), objective


def test_chains_need_rows_that_keep_their_place():
    """A 1x1 convolution of stride 2 reads only even rows: a band of its output may need no input row in
    its own fraction of the height, so no chain follows one fraction through the plan and the chain bound
    is 0 (the rest of the bound still holds). The zoo's models all keep their rows' place."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 1, stride=2), nn.ReLU())
    skipping = LayerGraph.from_model(net, (1, 8, 8), "skipping")
    assert not rows_keep_their_place(skipping)
    snap = world(3, 7, 10.0, np.random.default_rng(7))
    model = CostModel(skipping, snap.spec)
    assert chain_bound(snap, skipping, model) == 0.0
    assert lower_bound(snap, skipping, OBJECTIVES[0], model) > 0
    for name in models.MODEL_NAMES:
        assert rows_keep_their_place(
            LayerGraph.from_model(models.skeleton(name), models.input_shape(name), name)
        )


def test_image_release_and_chains_are_tight_when_one_helper_computes_everything():
    """The source cannot compute, so the one plan ships the whole image to the sink, which computes the
    whole model after it arrived: latency = image seconds + link latency + work / speed. The release rows
    give the image seconds + work / speed (the sum, where the capacity rows alone give the larger of the
    two), and the chain bound the latency itself (its one chain: the image's transfer, its link latency,
    the compute), so a row of either any stronger than valid would put the bound above this plan."""
    spec = mesh_spec(2, 5)
    snap = NetworkState.static(spec).snapshot(0.0)
    end = len(TINY.units)
    compute_s = TINY.band_flops(0, end, (0, TINY.extent(end))) / (spec.devices[snap.sink].gflops * 1e9)
    image_bits = TINY.extent(0) * TINY.row_bytes(0) * 8
    mbps = image_bits / (0.7 * compute_s) / 1e6  # the image takes 0.7 x the compute time
    snap = replace(
        snap, speed={snap.source: 0.0, snap.sink: 1.0}, link_mbps=dict.fromkeys(snap.link_mbps, mbps)
    )
    model = CostModel(TINY, spec)
    plan = Plan.build(snap.source, snap.sink, [(0, end, {snap.sink: 1.0})])
    latency = model.predict(plan, snap).latency_s
    (link,) = spec.links
    image_s = 0.7 * compute_s
    assert latency == pytest.approx(image_s + link.latency_s + compute_s)
    bound = lower_bound(snap, TINY, OBJECTIVES[0], model)
    release = lower_bound(snap, TINY, OBJECTIVES[0], model, chains=False)
    capacity = lower_bound(snap, TINY, OBJECTIVES[0], model, release=False, chains=False)
    assert bound <= latency
    assert bound == pytest.approx(latency, rel=1e-6)
    assert release == pytest.approx(image_s + compute_s, rel=1e-6)
    assert capacity == pytest.approx(max(compute_s, link.latency_s), rel=1e-6)


def test_bound_is_below_every_plan_a_random_restart_search_reaches():
    """bench.bound's search check: local search from random plans of the full space goes beyond the
    optimiser's shapes, and neither it nor the random plan it starts from gets below the bound."""
    snap = world(5, 1_000_014, 10.0, np.random.default_rng(5))
    model = CostModel(TINY, snap.spec)
    for objective in OBJECTIVES[:2]:
        searches = [PlanSearch(model, snap, TINY, objective) for _ in range(3)]
        best = restart_search(searches, 40, np.random.default_rng(1))
        assert best == min(search.best_score for search in searches)
        bound = lower_bound(snap, TINY, objective, model)
        for search in searches:
            start = next(plan for plan, score in search.scores.items() if np.isfinite(score))
            start.validate(TINY, snap.spec.device_ids)
            assert bound <= search.best_score <= search.scores[start]
            assert search.evaluations > 1


def test_full_plan_space_is_every_distinct_valid_plan():
    """Counted by hand for 2 devices: extents 4 (conv), 2 (pool), 2 (conv); a stage of extent E has
    2 one-device plans and 2 (E - 1) two-device ones: 8 for E = 4, 4 for E = 2. Segmentations:
    {conv pool conv} 4, {conv | pool conv} 8 x 4, {conv pool | conv} 4 x 4, {conv | pool | conv} 8 x 4 x 4."""
    graph = small_graph()
    spec = mesh_spec(2, 0)
    plans = list(full_plan_space(graph, spec.device_ids, spec.source, spec.sink))
    assert len(plans) == plan_space_size(graph, 2) == 4 + 32 + 16 + 128
    assert len(set(plans)) == len(plans)
    for plan in plans:
        plan.validate(graph, spec.device_ids)


@pytest.mark.parametrize(("n_devices", "seed"), [(2, 4), (3, 11)])
def test_small_instances_are_solved_exactly_gap_zero(n_devices, seed):
    """Where the whole plan space is enumerated, the decision is the optimum and its own bound; the LP
    bound is below it and no planner's plan nor any random plan beats it."""
    graph = small_graph()
    snap = world(n_devices, seed, 1.0, np.random.default_rng(seed))
    model = CostModel(graph, snap.spec)
    rng = np.random.default_rng(seed)
    devices = list(snap.spec.device_ids)
    for objective in OBJECTIVES[:2]:
        planner = OptimalPlanner(model)
        decision = planner.decide(snap, graph, objective)
        assert planner.last_stats.full_space and decision.gap == 0.0
        assert lower_bound(snap, graph, objective, model) <= decision.bound
        others = [make_planner(n, cost_model=model).plan(snap, graph, objective) for n in PLANNERS]
        others += [random_plan(graph, devices, snap, rng) for _ in range(20)]
        assert decision.score <= min(objective.score(model.predict(p, snap)) for p in others)


def test_optimiser_decision_reports_bound_and_gap():
    snap = world(6, 1_000_003, 10.0, np.random.default_rng(0))
    planner = OptimalPlanner(CostModel(TINY, snap.spec))
    decision = planner.decide(snap, TINY, OBJECTIVES[0])
    assert not planner.last_stats.full_space
    assert 0 < decision.bound <= decision.score
    assert decision.gap == pytest.approx(decision.score / decision.bound - 1)
    assert planner.last_stats.gap == decision.gap


def test_instances_no_plan_can_serve_are_errors_naming_the_reason():
    spec = mesh_spec(4, 7)
    snap = NetworkState.static(spec).snapshot(0.0)
    model = CostModel(TINY, spec)
    tiny_memory = replace(spec, devices={d: replace(dev, memory_mb=1e-4) for d, dev in spec.devices.items()})
    cases = {
        "weights": replace(snap, spec=tiny_memory),
        "source .* is cut off": replace(
            snap,
            available=frozenset({snap.source}) ^ snap.available,
            link_mbps={k: (0.0 if snap.source in k else v) for k, v in snap.link_mbps.items()},
        ),
        "sink .* is cut off": replace(
            snap, link_mbps={k: (0.0 if snap.sink in k else v) for k, v in snap.link_mbps.items()}
        ),
    }
    for reason, bad in cases.items():
        bad_model = model if bad.spec is spec else CostModel(TINY, bad.spec)
        with pytest.raises(PlannerError, match=reason):
            lower_bound(bad, TINY, OBJECTIVES[0], bad_model)
        with pytest.raises(PlannerError, match=reason):
            OptimalPlanner(bad_model).decide(bad, TINY, OBJECTIVES[0])


def test_bench_bound_measures_generated_meshes_without_scenario_files(tmp_path, capsys):
    """A user's question, how far is the optimiser from optimal on clusters like mine, answered on meshes
    of the generator family at evaluation seeds, for any zoo model; bad counts are clear errors."""
    out = tmp_path / "bound.json"
    argv = ["--generated", "3,4", "--caps", "10", "--model", "tiny", "--scenarios", str(tmp_path)]
    assert bound_bench.main([*argv, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["latency"]["rows"]
    assert [r["mesh"] for r in rows] == [mesh_spec(n, EVAL_SEED_BASE + n).name for n in (3, 4)]
    for r in rows:
        assert (
            r["model"] == "tiny" and 0 < r["capacity_bound"] <= r["release_bound"] <= r["bound"] <= r["cost"]
        )
    for bad, message in (
        (["--generated", "3,x"], "device counts"),
        (["--generated", "3", "--meshes", "a"], "choose one"),
    ):
        with pytest.raises(SystemExit):
            bound_bench.parse_args(bad)
        assert message in capsys.readouterr().err


def test_kicks_lower_a_plan_and_stay_above_the_bound(tmp_path):
    """The iterated local search that tells the search's share of a gap from the bound's: from a random
    plan it finds a cheaper one, never below the certified bound; through bench.bound it starts from the
    optimiser's plan and reports a cost between the bound and the optimiser's."""
    spec = mesh_spec(6, EVAL_SEED_BASE + 6, bandwidth_cap=15.0)
    snap = NetworkState.static(spec).snapshot(0.0)
    model = CostModel(TINY, spec)
    rng = np.random.default_rng(3)
    search = PlanSearch(model, snap, TINY, OBJECTIVES[0])
    start = next(
        p
        for p in (random_plan(TINY, list(spec.device_ids), snap, rng) for _ in range(100))
        if np.isfinite(search.consider(p))
    )
    kicked = kicked_search(search, start, kicks=4, budget=30, rng=rng)
    assert lower_bound(snap, TINY, OBJECTIVES[0], model) <= kicked < search.scores[start]
    out = tmp_path / "bound.json"
    argv = ["--generated", "5", "--caps", "15", "--model", "tiny", "--kicks", "2", "--restart-budget", "20"]
    assert bound_bench.main([*argv, "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["latency"]["rows"]
    assert row["bound"] <= row["kicked_cost"] <= row["cost"]


def test_chains_count_every_hop_of_a_relayed_image():
    """A line 0 - 1 - 2: the source 0 and the relay 1 cannot compute, so the one plan's image goes to 2
    over two hops, each a whole transfer (relays store and forward), and 2 computes everything: latency =
    two image transfers + two link latencies + the compute. That is one chain, and the chain bound is it."""
    power = {"compute": 1.0, "transmit": 1.0, "receive": 1.0, "idle": 0.0}
    doc = {
        "format": "disnet-mesh/1",
        "name": "line",
        "devices": {str(d): {"compute_rate": 4, "power_w": power} for d in range(3)},
        "links": [[0, 1, 20], [1, 2, 10]],
        "source": "0",
        "sink": "2",
    }
    spec = parse_cluster(doc)
    snap = NetworkState.static(spec).snapshot(0.0)
    snap = replace(snap, speed={"0": 0.0, "1": 0.0, "2": 1.0})
    model = CostModel(TINY, spec)
    end = len(TINY.units)
    latency = model.predict(Plan.build("0", "2", [(0, end, {"2": 1.0})]), snap).latency_s
    image_bits = TINY.extent(0) * TINY.row_bytes(0) * 8
    compute_s = TINY.band_flops(0, end, (0, TINY.extent(end))) / (spec.devices["2"].gflops * 1e9)
    hops_s = image_bits / 20e6 + image_bits / 10e6 + sum(link.latency_s for link in spec.links)
    assert latency == pytest.approx(hops_s + compute_s)
    assert chain_bound(snap, TINY, model) == pytest.approx(latency, rel=1e-6)
    assert lower_bound(snap, TINY, OBJECTIVES[0], model) <= latency
