"""The yardstick planners on the tiny model: the robust optimiser prices link variability and failure
evidence, the clairvoyant plans on the world's true future, and the sim executor's failure rule."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from agents import PlannerError, make_planner
from agents.base import CutOff
from agents.polish import polish
from agents.robust import (
    CUT_OFF_NOW,
    failure_rates,
    harmonic_view,
    history_scenarios,
    latest_view,
    persistence_scenario,
    ran_before_failing,
    robust_search,
)
from env.cost_model import CostModel, Objective
from env.net_view import net_view
from env.network import NetworkState
from env.simulator import reference_plan
from env.snapshot import link_key
from env.traces import Trace, constant, step_drop
from runtime import models
from runtime.connections import DEAD_AFTER_S
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.spec import parse_cluster
from serving.evaluation import SimExecutor, decide_or_wait

torch.set_num_threads(1)
LATENCY = Objective("latency")
FAST = {"exact_limit": 0, "max_evaluations": 150}  # the snapshot optimiser's descent: fast on tiny


@pytest.fixture(scope="module")
def tiny():
    return LayerGraph.from_model(models.build("tiny"), models.input_shape("tiny"), "tiny")


def slow_star():
    """s (source) and k (sink) at 0.2 MFLOP/s, helpers h1, h2 at 0.8; every pair linked at 10 Mbit/s:
    the tiny model takes seconds, so a helper's failure risk and a link's drop matter."""
    power = {"compute": 1.0, "transmit": 1.0, "receive": 1.0, "idle": 0.1}
    gflops = {"s": 0.0002, "k": 0.0002, "h1": 0.0008, "h2": 0.0008}
    devices = [{"id": d, "gflops": g, "power": power} for d, g in gflops.items()]
    names = list(gflops)
    links = [{"a": a, "b": b, "mbps": 10} for i, a in enumerate(names) for b in names[i + 1 :]]
    data = {"format": "disnet-cluster/1", "name": "slow-star", "source": "s", "sink": "k"}
    return parse_cluster({**data, "devices": devices, "links": links})


def used(model, plan):
    return set(model.skeleton(plan).devices)


def crosses(model, plan, link):
    """Whether any of the plan's transfers goes over ``link``."""
    links = model.spec.links
    return any(link_key(links[i].a, links[i].b) == link for i in model.skeleton(plan).hop_link)


def test_history_becomes_replayed_worlds_and_a_harmonic_view():
    spec = slow_star()
    snap = NetworkState.static(spec).snapshot(10.0)
    assert history_scenarios(snap) == [(snap, 10.0)]  # a steady history: the snapshot says it all
    wander = (20.0, 0.0, 20.0, 20.0) * 2
    snap = replace(
        snap, link_history=dict.fromkeys(snap.link_mbps, (10.0,) * 8) | {link_key("s", "h1"): wander}
    )
    scenarios = history_scenarios(snap)
    assert len(scenarios) == 8 and {t0 for _, t0 in scenarios} == {0.0}
    replay = [world.link_schedule("s", "h1") for world, _ in scenarios]
    assert list(replay[1].mbps) == [1e-6, 20.0, 20.0, 20.0, 1e-6, 20.0, 20.0, 20.0]  # from the 2nd second on
    # 30 Mbit: 1 s at 20 Mbit/s, a second of outage waited out, half a second at 20 again
    assert replay[0].transfer_time(3.75e6, 0.0) == pytest.approx(2.5, abs=1e-3)
    assert harmonic_view(snap).link_mbps[link_key("s", "h1")] == pytest.approx(7 / (4 / 10.0 + 3 / 20.0))
    assert harmonic_view(snap).link_mbps[link_key("s", "k")] == pytest.approx(10.0)
    # the last second persists for the window, then the window replays: a link that just went dark
    # costs a transfer the wait (8 s), not its bytes at the floor
    dark = replace(snap, link_history=snap.link_history | {link_key("s", "h1"): (10.0,) * 7 + (0.0,)})
    world, t0 = persistence_scenario(dark)
    assert world.link_schedule("s", "h1").transfer_time(3.75e6, t0) == pytest.approx(8 + 3.0, abs=1e-3)
    assert world.link_schedule("s", "k").transfer_time(3.75e6, t0) == pytest.approx(3.0, abs=1e-3)


def test_failure_rates_come_from_the_evidence_shrunk_towards_the_pool():
    snap = NetworkState.static(slow_star()).snapshot(300.0)
    assert set(failure_rates(snap, 60.0).values()) == {0.0}  # nothing failed: no risk
    snap = replace(snap, failures={"h1": 3}, uptime_s=dict.fromkeys(snap.spec.devices, 300.0) | {"h1": 240.0})
    rates = failure_rates(snap, 60.0)
    pooled = 3 / (3 * 300.0 + 240.0)
    assert rates["h1"] == pytest.approx((3 + pooled * 60) / 300.0)
    assert rates["h2"] == pytest.approx(pooled * 60 / 360.0) and rates["h1"] > 5 * rates["h2"]


def test_a_failures_retry_is_priced_over_the_history_like_every_plan(tiny):
    """The single device's image and output cross the same wandering links as any plan: a retry priced
    on the snapshot's rates alone looked far cheaper than it was where links fade."""
    spec = slow_star()
    model = CostModel(tiny, spec)
    snap = NetworkState.static(spec).snapshot(300.0)
    fading = (10.0, 10.0, 0.1, 0.1) * 2  # windowed mean 10: what the snapshot says
    snap = replace(snap, link_history=dict.fromkeys(snap.link_mbps, fading))
    assert robust_search(model, snap, tiny, LATENCY).retry == 0.0  # nothing failed: no risk to price
    flaky = replace(snap, failures={"h1": 2}, uptime_s=dict.fromkeys(spec.devices, 300.0))
    search = robust_search(model, flaky, tiny, LATENCY)
    retry_plan = reference_plan(tiny, net_view(flaky)).plan
    over_history = search.expected(retry_plan)[0]
    assert search.retry == pytest.approx(over_history + DEAD_AFTER_S)  # it starts once the failure is found
    assert over_history > 1.05 * model.latency(retry_plan, flaky, flaky.time)  # the snapshot alone: less


def test_the_robust_optimiser_avoids_a_device_that_keeps_failing(tiny):
    spec = slow_star()
    model = CostModel(tiny, spec)
    snap = NetworkState.static(spec).snapshot(300.0)
    trusting = make_planner("snapshot-optimal", cost_model=model, **FAST).plan(snap, tiny, LATENCY)
    assert {"h1", "h2"} <= used(model, trusting)  # both helpers pay off when nothing fails
    robust = make_planner("optimal", cost_model=model, **FAST)
    assert used(model, robust.plan(snap, tiny, LATENCY)) >= {"h1", "h2"}
    flaky = replace(snap, failures={"h1": 60}, uptime_s=dict.fromkeys(spec.devices, 300.0) | {"h1": 200.0})
    plan = robust.plan(flaky, tiny, LATENCY)
    assert "h1" not in used(model, plan) and "h2" in used(model, plan)


def test_the_robust_optimiser_prefers_a_steady_link_to_one_that_wanders(tiny):
    spec = slow_star()
    model = CostModel(tiny, spec)
    snap = NetworkState.static(spec).snapshot(30.0)
    steady = dict.fromkeys(snap.link_mbps, (10.0,) * 8)
    wander = {link_key("s", "h1"): (39.0, 1.0) * 4}  # windowed mean 20: twice the steady links
    snap = replace(snap, link_history=steady | wander, link_mbps=snap.link_mbps | {link_key("s", "h1"): 20.0})
    trusting = make_planner("snapshot-optimal", cost_model=model, **FAST).plan(snap, tiny, LATENCY)
    robust = make_planner("optimal", cost_model=model, **FAST).plan(snap, tiny, LATENCY)
    scenarios = history_scenarios(snap)

    def expected(plan):
        return sum(model.latency(plan, world, t0) for world, t0 in scenarios) / len(scenarios)

    assert expected(robust) < expected(trusting)


def test_a_polish_chooses_by_the_robust_price_among_the_plans_the_snapshot_prices_best(tiny):
    """A link wandering at twice the steady ones' mean: the snapshot's best plans lean on it. Of the plans
    its search prices best on the snapshot, the polish returns the best over the history's replays, a
    plan the snapshot alone ranks no better."""
    spec = slow_star()
    model = CostModel(tiny, spec)
    snap = NetworkState.static(spec).snapshot(30.0)
    wander = {link_key("s", "h1"): (39.0, 1.0) * 4}
    history = dict.fromkeys(snap.link_mbps, (10.0,) * 8) | wander
    snap = replace(snap, link_history=history, link_mbps=snap.link_mbps | {link_key("s", "h1"): 20.0})
    start = make_planner("snapshot-optimal", cost_model=model, **FAST).plan(snap, tiny, LATENCY)
    polished = polish(model, snap, tiny, LATENCY, [start], budget=60)
    judge = robust_search(model, snap, tiny, LATENCY)
    assert judge.price(polished) < judge.price(start)
    assert model.latency(polished, snap, 30.0) >= model.latency(start, snap, 30.0)  # not the snapshot's pick


def test_a_polish_searches_the_latest_view_and_leaves_a_link_that_just_went_dark(tiny):
    """The snapshot still rates the link at 8.75 Mbit/s; a search on the snapshot alone keeps the start's
    plan across it, the search on the latest view (the last second persists) finds plans that leave it,
    and the robust price prefers one of those."""
    spec = slow_star()
    model = CostModel(tiny, spec)
    snap = NetworkState.static(spec).snapshot(30.0)
    fell = link_key("s", "h1")
    history = dict.fromkeys(snap.link_mbps, (10.0,) * 8) | {fell: (10.0,) * 7 + (0.0,)}
    snap = replace(snap, link_history=history, link_mbps=snap.link_mbps | {fell: 8.75})

    start = make_planner("snapshot-optimal", cost_model=model, **FAST).plan(snap, tiny, LATENCY)
    assert crosses(model, start, fell)
    polished = polish(model, snap, tiny, LATENCY, [start], budget=200)
    assert not crosses(model, polished, fell)
    judge = robust_search(model, snap, tiny, LATENCY)
    assert judge.price(polished) < judge.price(start)


def test_with_persistence_the_robust_optimiser_avoids_a_link_that_just_went_dark(tiny):
    spec = slow_star()
    model = CostModel(tiny, spec)
    snap = NetworkState.static(spec).snapshot(30.0)
    fell = link_key("s", "h1")  # 10 Mbit/s for seven seconds, nothing in the last: still 8.75 on average
    history = dict.fromkeys(snap.link_mbps, (10.0,) * 8) | {fell: (10.0,) * 7 + (0.0,)}
    snap = replace(snap, link_history=history, link_mbps=snap.link_mbps | {fell: 8.75})

    replays_only = make_planner("optimal", cost_model=model, persistence=0.0, **FAST)
    persistent = make_planner("optimal", cost_model=model, persistence=0.25, **FAST)
    assert crosses(
        model, replays_only.plan(snap, tiny, LATENCY), fell
    )  # seven good seconds in eight outweigh the last
    plan = persistent.plan(snap, tiny, LATENCY)
    assert not crosses(model, plan, fell) and "h1" in used(
        model, plan
    )  # h1 still computes, fed over another link
    assert model.latency(plan, latest_view(snap), 30.0) < 1.5 * model.latency(plan, snap, 30.0)
    with pytest.raises(PlannerError, match="persistence is a weight"):
        make_planner("optimal", cost_model=model, persistence=1.0)


def test_the_clairvoyant_sees_a_device_about_to_fail(tiny):
    spec = slow_star()
    model = CostModel(tiny, spec)
    links = {link_key(ln.a, ln.b): constant(ln.mbps) for ln in spec.links}
    world = NetworkState(spec, links, downtime={"h2": [(20.2, 50.0)]})
    snap = world.snapshot(20.0)
    trusting = make_planner("snapshot-optimal", cost_model=model, **FAST)
    clairvoyant = make_planner("clairvoyant", cost_model=model, world=world, **FAST)
    plan, seen = clairvoyant.plan(snap, tiny, LATENCY), trusting.plan(snap, tiny, LATENCY)
    assert "h2" in used(model, seen) and "h2" not in used(model, plan)  # a snapshot cannot see it coming
    execute = SimExecutor(model, world)
    ceiling, fooled = execute("clairvoyant", 0, 20.0, plan), execute("trusting", 0, 20.0, seen)
    assert fooled.failed and not ceiling.failed and ceiling.latency_s < fooled.latency_s
    with pytest.raises(PlannerError, match="evaluation only"):
        make_planner("clairvoyant")


def test_a_request_that_loses_a_device_is_restarted_when_the_failure_is_found(tiny):
    """h1 fails 0.2 s into the request. As the controller's heartbeats would, the sim finds it down
    ``DEAD_AFTER_S`` later and restarts the request on the best single device of that moment: the request
    pays the attempt up to then (its energy in proportion) and the retry from then, not the whole attempt
    and a retry priced at its start."""
    spec = slow_star()
    model = CostModel(tiny, spec)
    world = NetworkState(
        spec, {link_key(ln.a, ln.b): constant(ln.mbps) for ln in spec.links}, downtime={"h1": [(0.2, 9.0)]}
    )
    plan = make_planner("snapshot-optimal", cost_model=model, **FAST).plan(world.snapshot(0.0), tiny, LATENCY)
    assert "h1" in used(model, plan)
    attempt = model.cost(plan, world, 0.0)
    assert attempt.latency_s > 0.2  # still running when h1 fails
    outcome = SimExecutor(model, world)("a", 0, 0.0, plan)
    restart = 0.2 + DEAD_AFTER_S
    retry_plan = reference_plan(tiny, net_view(world.snapshot(restart))).plan
    assert "h1" not in used(model, retry_plan)  # the snapshot at the restart knows h1 is down
    retry = model.cost(retry_plan, world, restart)
    assert outcome.failed and outcome.latency_s == pytest.approx(restart + retry.latency_s)
    assert outcome.energy_j == pytest.approx(attempt.energy_j * 0.2 / attempt.latency_s + retry.energy_j)
    assert not SimExecutor(model, world)("a", 0, 10.0, plan).failed  # h1 is back


@pytest.mark.parametrize("hazard, latency", [(0.01, 3.0), (0.2, 30.0), (2.0, 5.0), (1e-9, 2.0)])
def test_the_share_of_an_attempt_run_before_it_fails_is_the_exponentials_conditional_mean(hazard, latency):
    """E[T | T < L] / L for failures at ``hazard`` per second, by numerical integration: half of a short
    attempt, less of a long one (failures come early)."""
    t = np.linspace(0.0, latency, 200_001)
    density = hazard * np.exp(-hazard * t)
    expected = np.trapezoid(t * density, t) / np.trapezoid(density, t) / latency
    assert ran_before_failing(hazard, latency) == pytest.approx(expected, rel=1e-6)


def test_an_attempt_far_longer_than_the_time_between_failures_fails_almost_at_once(tiny):
    """A plan through a link dark for its whole history takes ages at ``FLOOR_MBPS``: with failures in
    the evidence its price must stay a number (e^x overflows a float from x = 710)."""
    assert ran_before_failing(1.0, 1e6) == pytest.approx(1e-6)
    assert ran_before_failing(0.5, math.inf) == 0.0
    spec = slow_star()
    model = CostModel(tiny, spec)
    snap = NetworkState.static(spec).snapshot(300.0)
    history = dict.fromkeys(snap.link_mbps, (10.0, 9.0) * 4) | {link_key("s", "h1"): (0.0,) * 8}
    flaky = replace(
        snap, link_history=history, failures={"h1": 20}, uptime_s=dict.fromkeys(spec.devices, 300.0)
    )
    search = robust_search(model, flaky, tiny, LATENCY)
    through_the_dark = Plan.build("s", "k", [(0, len(tiny.units), {"h1": 1.0})])
    expected, latency = search.expected(through_the_dark)
    assert latency * failure_rates(flaky, 60.0)["h1"] > 710.0
    assert math.isfinite(search.price(through_the_dark)) and search.price(through_the_dark) > search.retry


def test_an_outage_that_cuts_the_sink_off_now_is_waited_out_not_an_error(tiny):
    """Every link into the sink k reads 0 Mbit/s now: on the snapshot's rates no plan serves it (the
    snapshot optimiser's CutOff), but the history says they carried data, so the robust optimiser plans
    for after the outage and says so; with a history of nothing, it is CutOff too."""
    spec = slow_star()
    model = CostModel(tiny, spec)
    snap = NetworkState.static(spec).snapshot(30.0)
    into_sink = [link_key(d, "k") for d in ("s", "h1", "h2")]
    history = dict.fromkeys(snap.link_mbps, (10.0,) * 8) | dict.fromkeys(into_sink, (10.0,) * 5 + (0.0,) * 3)
    dark = replace(snap, link_mbps=snap.link_mbps | dict.fromkeys(into_sink, 0.0), link_history=history)
    trusting = make_planner("snapshot-optimal", cost_model=model, **FAST)
    with pytest.raises(CutOff, match="sink 'k' is cut off"):
        trusting.plan(dark, tiny, LATENCY)
    waits = decide_or_wait(trusting, dark, tiny, LATENCY)  # a comparison answers it on one device, marked
    assert waits.fallback.startswith("cut off") and [len(st.devices) for st in waits.plan.stages] == [1]
    robust = make_planner("optimal", cost_model=model, **FAST)
    decision = robust.decide(dark, tiny, LATENCY)
    assert decision.fallback == CUT_OFF_NOW and decision.plan.sink == "k"
    assert robust.decide(snap, tiny, LATENCY).fallback is None
    never = replace(dark, link_history=history | dict.fromkeys(into_sink, (0.0,) * 8))
    with pytest.raises(CutOff):
        robust.plan(never, tiny, LATENCY)


def test_the_clairvoyant_looks_past_an_outage_that_cuts_the_sink_off(tiny):
    """The sink's links are dark for the first 3 s of the request: the clairvoyant's first window (1 s)
    cuts it off, so it looks further ahead instead of failing."""
    spec = slow_star()
    model = CostModel(tiny, spec)
    dark = {link_key(d, "k") for d in ("s", "h1", "h2")}
    links = {
        link_key(ln.a, ln.b): step_drop(ln.mbps, 0.0, 20.0, 3.0, 600.0)
        if link_key(ln.a, ln.b) in dark
        else constant(ln.mbps)
        for ln in spec.links
    }
    world = NetworkState(spec, links)
    clairvoyant = make_planner("clairvoyant", cost_model=model, world=world, **FAST)
    plan = clairvoyant.plan(world.snapshot(20.0), tiny, LATENCY)
    assert model.latency(plan, world, 20.0) > 3.0  # it waits the outage out
    short = make_planner("clairvoyant", cost_model=model, world=world, max_horizon_s=2.0, **FAST)
    with pytest.raises(CutOff):
        short.plan(world.snapshot(20.0), tiny, LATENCY)


def test_the_robust_optimisers_bound_is_below_the_price_of_every_plan(tiny):
    """Its decision reports a certified bound on the robust price (every link at the most its history
    carried): below its own plan's price and below the price of every other planner's plan, for a
    snapshot whose history wanders and with a device's failures on record."""
    spec = slow_star()
    model = CostModel(tiny, spec)
    snap = NetworkState.static(spec).snapshot(30.0)
    steady = dict.fromkeys(snap.link_mbps, (10.0,) * 8)
    wander = {link_key("s", "h1"): (39.0, 1.0) * 4}
    snap = replace(
        snap,
        link_history=steady | wander,
        link_mbps=snap.link_mbps | {link_key("s", "h1"): 20.0},
        failure_window_s=30.0,
        failures={"h2": 2},
        uptime_s=dict.fromkeys(spec.device_ids, 30.0),
    )
    for objective in (LATENCY, Objective("energy")):
        decision = make_planner("optimal", cost_model=model, **FAST).decide(snap, tiny, objective)
        assert 0 < decision.bound <= decision.score
        assert decision.gap == pytest.approx(decision.score / decision.bound - 1)
        search = robust_search(model, snap, tiny, objective)
        for name in ("snapshot-optimal", "disnet", "deepslicing", "neurosurgeon", "local"):
            plan = make_planner(name, cost_model=model).plan(snap, tiny, objective)
            assert search.price(plan) >= decision.bound, name


def test_the_hindsight_reference_plans_on_the_past_and_never_reads_the_future(tiny):
    """s-h1 all but stopped over the last seconds and is three times the other links from t = 20 on: the
    clairvoyant sends the image over it, the hindsight reference (the same planner on the past
    replayed) does not, and its plan is the same in a world where the link never recovers."""
    spec = slow_star()
    model = CostModel(tiny, spec)
    fast = link_key("s", "h1")

    def world(after: float) -> NetworkState:
        links = {link_key(ln.a, ln.b): constant(ln.mbps) for ln in spec.links}
        return NetworkState(spec, links | {fast: Trace([0.0, 12.0, 20.0], [10.0, 0.01, after], 600.0)})

    recovers, stays = world(30.0), world(0.01)
    snap = recovers.snapshot(20.0)
    assert snap == stays.snapshot(20.0)
    ceiling = make_planner("clairvoyant", cost_model=model, world=recovers, **FAST).plan(snap, tiny, LATENCY)
    past = make_planner("hindsight", cost_model=model, world=recovers, **FAST).plan(snap, tiny, LATENCY)
    assert crosses(model, ceiling, fast) and not crosses(model, past, fast)
    assert make_planner("hindsight", cost_model=model, world=stays, **FAST).plan(snap, tiny, LATENCY) == past
    with pytest.raises(PlannerError, match="'hindsight' is for evaluation only"):
        make_planner("hindsight")
