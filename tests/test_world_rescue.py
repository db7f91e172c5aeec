"""Adaptive serving's rescue replayed in the trace-driven world (serving/world_rescue.py): a request
caught by a link going dark is restarted on its planner's newer plan, as serving restarts it, and one that
loses a device is retried on its planner's plan for the devices still up; one in steady conditions is
priced as before; the clairvoyant is never rescued."""

from __future__ import annotations

import pytest
import torch

from agents.base import Decision
from env.cost_model import CostModel, Objective
from env.network import NetworkState
from env.simulator import charged_in_world
from env.snapshot import link_key
from env.traces import constant, step_drop
from runtime import models
from runtime.connections import DEAD_AFTER_S
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.spec import complete_cluster
from serving.evaluation import CLAIRVOYANT, SimExecutor, rescuers
from serving.world_rescue import SERVING_RULE, served_in_world

torch.set_num_threads(1)
DROP_AT = 12.0  # h1's link to the sink goes dark while h1 computes the request of t = 10


@pytest.fixture(scope="module")
def tiny():
    return LayerGraph.from_model(models.build("tiny"), models.input_shape("tiny"), "tiny")


@pytest.fixture(scope="module")
def spec():
    """s (source) and k (sink) slow, helpers h1 and h2 fast, every pair linked at 10 Mbit/s."""
    return complete_cluster(
        "rescue", {"s": 0.0002, "k": 0.0002, "h1": 0.0008, "h2": 0.0008}, 10, source="s", sink="k"
    )


def world(spec, dark: bool) -> NetworkState:
    links = {link_key(ln.a, ln.b): constant(ln.mbps) for ln in spec.links}
    if dark:
        links[link_key("h1", "k")] = step_drop(10.0, 0.0, DROP_AT, 200.0, 400.0)
    return NetworkState(spec, links)


def on(device: str, graph: LayerGraph) -> Plan:
    return Plan.build("s", "k", [(0, len(graph.units), {device: 1.0})])


class Replanner:
    """A planner that answers every view with ``plan`` (on h2), and remembers the views it was asked."""

    def __init__(self, graph, plan: Plan | None = None):
        self.plan, self.views = plan or on("h2", graph), []

    @property
    def asked(self) -> list[float]:
        return [view.time for view in self.views]

    def __call__(self, view):
        self.views.append(view)
        return self.plan


def test_a_request_caught_by_a_dark_link_is_restarted_on_the_newer_plan(spec, tiny):
    model, dark = CostModel(tiny, spec), world(spec, dark=True)
    stuck, replan = on("h1", tiny), Replanner(tiny)
    waited = charged_in_world(model, dark, stuck, 10.0)
    served = served_in_world(model, dark, stuck, 10.0, replan)
    assert served.rescues == 1 and len(replan.asked) == 1
    # re-planned once the view's mean fell by half: after the drop, within the view's 5 s window
    assert DROP_AT < replan.asked[0] < DROP_AT + 5.0
    # restarted at a later watch, when the rest of the attempt cost more than a fresh start: charged
    # the attempt up to then (its energy in proportion) and the newer plan from then, in the world
    attempt = model.cost(stuck, dark, 10.0)
    watches = [10.0 + k * SERVING_RULE.watch_every_s for k in range(1, 200)]
    rescued_at = [w for w in watches if w >= replan.asked[0]]
    priced = {w: (w - 10.0 + charged_in_world(model, dark, replan.plan, w).latency_s) for w in rescued_at}
    at = min(priced, key=lambda w: abs(priced[w] - served.latency_s))
    assert served.latency_s == pytest.approx(priced[at])
    fresh = charged_in_world(model, dark, replan.plan, at)
    assert served.energy_j == pytest.approx(
        attempt.energy_j * (at - 10.0) / attempt.latency_s + fresh.energy_j
    )
    assert served.latency_s < waited.latency_s / 10


def test_a_link_that_stalls_a_hop_on_the_air_is_seen_before_its_mean_falls(spec, tiny):
    """The input's link s-h1 goes dark half-way through the input: serving's live view caps the link by
    the overdue transfer (env/telemetry.py, its bytes over the seconds it has run), and so does the world's
    watcher, which re-plans once that bound has settled, within 1.5 s of the drop, where the world's 5-s
    mean alone reads the link at over 7 Mbit/s still (it halves 2.5 s after the drop). The bound is what
    the link carried at most: the restart waits until the rest of the attempt is priced above a fresh
    start, as serving's does."""
    model, stuck = CostModel(tiny, spec), on("h1", tiny)
    input_bytes = model.skeleton(stuck).link_bytes(tuple(spec.devices))["s", "h1"]
    drop = 10.0 + input_bytes * 8 / 10e6 / 2  # half-way through the input at 10 Mbit/s
    links = {link_key(ln.a, ln.b): constant(ln.mbps) for ln in spec.links}
    links[link_key("s", "h1")] = step_drop(10.0, 0.0, drop, 200.0, 400.0)
    dark, replan = NetworkState(spec, links), Replanner(tiny)
    served = served_in_world(model, dark, stuck, 10.0, replan)
    assert served.rescues == 1 and len(replan.asked) == 1
    asked = replan.asked[0]
    assert asked - drop < 1.5
    assert replan.views[0].link_mbps[link_key("s", "h1")] == pytest.approx(
        input_bytes * 8 / 1e6 / (asked - 10.0)
    )
    assert dark.snapshot(asked).link_mbps[link_key("s", "h1")] > 7.0
    # restarted at a watch once the rest of the attempt is worth more than a fresh start, and charged the
    # attempt up to then and the newer plan from then
    watches = [10.0 + k * SERVING_RULE.watch_every_s for k in range(1, 200)]
    priced = [w - 10.0 + model.cost(replan.plan, dark, w).latency_s for w in watches if w >= asked]
    assert min(abs(p - served.latency_s) for p in priced) == pytest.approx(0.0, abs=1e-9)


def test_a_request_in_steady_conditions_is_priced_as_without_rescues(spec, tiny):
    model, steady = CostModel(tiny, spec), world(spec, dark=False)
    replan = Replanner(tiny)
    served = served_in_world(model, steady, on("h1", tiny), 10.0, replan)
    assert served == charged_in_world(model, steady, on("h1", tiny), 10.0)
    assert served.rescues == 0 and replan.asked == []  # nothing moved: never re-planned


def test_a_request_that_loses_a_device_is_retried_on_its_planners_plan(spec, tiny):
    """As the controller retries it: once heartbeats find h1 down, on the planner's plan for the devices
    still up, not on the best single device (the failure rule without a planner)."""
    links = {link_key(ln.a, ln.b): constant(ln.mbps) for ln in spec.links}
    failing = NetworkState(spec, links, downtime={"h1": [(10.5, 110.5)]})
    model = CostModel(tiny, spec)
    shared = Plan.build("s", "k", [(0, len(tiny.units), {"h2": 0.6, "k": 0.4})])
    replan = Replanner(tiny, shared)
    served = served_in_world(model, failing, on("h1", tiny), 10.0, replan)
    restart = 10.5 + DEAD_AFTER_S
    assert replan.asked == [restart] and "h1" not in replan.views[0].available
    assert served.failed and served.rescues == 0
    assert served.latency_s == pytest.approx(restart - 10.0 + model.cost(shared, failing, restart).latency_s)
    on_the_best_device = charged_in_world(model, failing, on("h1", tiny), 10.0)  # no planner to ask
    assert on_the_best_device.latency_s == pytest.approx(
        restart - 10.0 + model.cost(on("h2", tiny), failing, restart).latency_s
    )
    assert served.latency_s != pytest.approx(on_the_best_device.latency_s)
    # a planner that finds no plan (the view cut off) leaves the best single device
    assert served_in_world(model, failing, on("h1", tiny), 10.0, lambda view: None) == on_the_best_device


def test_a_request_whose_source_fails_is_retried_without_asking_the_planner(spec, tiny):
    """No plan runs without the source; the failure rule's retry stands (serving's requests wait)."""
    links = {link_key(ln.a, ln.b): constant(ln.mbps) for ln in spec.links}
    failing = NetworkState(spec, links, downtime={"s": [(10.5, 12.0)]})
    model, replan = CostModel(tiny, spec), Replanner(tiny)
    served = served_in_world(model, failing, on("h1", tiny), 10.0, replan)
    assert served == charged_in_world(model, failing, on("h1", tiny), 10.0) and replan.views == []


def test_the_clairvoyant_is_never_rescued(spec, tiny):
    """It planned on what was coming; the others are, each by its own planner."""

    class Fixed:
        def __init__(self, plan):
            self.plan = plan

        def decide(self, view, graph, objective):
            return Decision(self.plan)

    model, dark = CostModel(tiny, spec), world(spec, dark=True)
    planners = {CLAIRVOYANT: Fixed(on("h2", tiny)), "a": Fixed(on("h2", tiny))}
    execute = SimExecutor(model, dark, rescuers(planners, tiny, Objective()), SERVING_RULE)
    assert execute("a", 0, 10.0, on("h1", tiny)).rescues == 1
    assert execute(CLAIRVOYANT, 0, 10.0, on("h1", tiny)) == charged_in_world(
        model, dark, on("h1", tiny), 10.0
    )
