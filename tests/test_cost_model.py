"""The cost model on hand-checked plans, and its agreement with the plan layout."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from env.cost_model import CostModel, Objective, Profile
from env.network import NetworkState
from env.snapshot import link_key
from env.traces import constant, step_drop
from runtime import models
from runtime.graph import LayerGraph
from runtime.plan import Plan, random_plan
from runtime.spec import complete_cluster, load_cluster

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "clusters"


def static(spec, speed=None):
    """What a planner sees in a constant world: spec bandwidths, optionally other speed factors."""
    snap = NetworkState.static(spec).snapshot(0.0)
    return replace(snap, speed={**snap.speed, **(speed or {})})


@pytest.fixture(scope="module")
def graph():
    return LayerGraph.from_model(models.build("tiny"), models.input_shape("tiny"), "tiny")


@pytest.fixture(scope="module")
def spec():
    return load_cluster(CONFIGS / "tiny3.yaml")


def airtime(nbytes, mbps=50):
    return nbytes * 8 / (mbps * 1e6)


def test_single_device_plan_by_hand(graph, spec):
    n = len(graph.units)
    plan = Plan.build("d0", "d2", [(0, n, {"d1": 1})])
    p = CostModel(graph, spec).predict(plan, static(spec))
    in_bytes, out_bytes = 3 * 32 * 32 * 4, 10 * 4
    compute = graph.total_flops / 4e9
    expected = airtime(in_bytes) + 0.001 + compute + airtime(out_bytes) + 0.001
    assert p.latency_s == pytest.approx(expected, rel=1e-9)
    d1 = p.device_time["d1"]
    assert d1.compute_s == pytest.approx(compute)
    assert d1.send_s == pytest.approx(airtime(out_bytes))
    assert p.device_time["d0"].send_s == pytest.approx(airtime(in_bytes))
    power = spec.devices["d1"].power
    assert p.device_energy_j["d1"] == pytest.approx(
        compute * power.compute_w
        + airtime(out_bytes) * power.transmit_w
        + airtime(in_bytes) * power.receive_w
        + d1.idle_s * power.idle_w
    )


def test_source_radio_sends_one_band_at_a_time(graph, spec):
    """Two devices split the first layer; the source's radio serves d1 first, then d2."""
    s, e = graph.groups[0]
    n = len(graph.units)
    plan = Plan.build("d0", "d2", [(s, e, {"d1": 1, "d2": 1}), (e, n, {"d2": 1})])
    p = CostModel(graph, spec).predict(plan, static(spec))
    row = 3 * 32 * 4
    band = 17 * row  # 16 rows + 1 halo row
    first_layer = graph.band_flops(s, e, (0, 16))
    d1_done = airtime(band) + 0.001 + first_layer / 4e9
    d2_ready = 2 * airtime(band) + 0.001  # waits for the radio to finish d1's band
    d2_done_first = d2_ready + first_layer / 8e9
    # d2 then needs d1's half of the stage-0 output (16 rows of 16x32 floats) plus its own
    d1_to_d2 = d1_done + airtime(16 * 16 * 32 * 4) + 0.001
    stage2_start = max(d2_done_first, d1_to_d2)
    rest = graph.band_flops(e, n, (0, 10)) / 8e9
    assert p.latency_s == pytest.approx(stage2_start + rest, rel=1e-9)


def test_multi_hop_is_store_and_forward():
    spec = load_cluster(CONFIGS / "line4.yaml")
    graph = LayerGraph.from_model(models.build("tiny"), models.input_shape("tiny"), "tiny")
    plan = Plan.build("d0", "d0", [(0, len(graph.units), {"d3": 1})])
    p = CostModel(graph, spec).predict(plan, static(spec))
    path = spec.route_links("d0", "d3")
    in_bytes, out_bytes = 3 * 32 * 32 * 4, 40
    hops = sum(airtime(in_bytes, link.mbps) + link.latency_s for link in path)
    back = sum(airtime(out_bytes, link.mbps) + link.latency_s for link in path)
    compute = graph.total_flops / (spec.devices["d3"].gflops * 1e9)
    assert p.latency_s == pytest.approx(hops + compute + back, rel=1e-9)
    assert p.device_time["d1"].send_s > 0 and p.device_time["d1"].recv_s > 0  # the relay works too


def test_slower_device_and_link_raise_latency(graph, spec):
    plan = random_plan(graph, list(spec.device_ids), np.random.default_rng(0), source="d0", sink="d2")
    model = CostModel(graph, spec)
    base = model.latency(plan, static(spec))
    assert model.latency(plan, static(spec, {d: 0.5 for d in spec.device_ids})) > base


def test_profile_scales_with_device_speed(graph, spec):
    flops_profile = Profile("tiny", 1.0, tuple(u.flops / 1e9 for u in graph.units))
    plan = random_plan(graph, list(spec.device_ids), np.random.default_rng(1), source="d0", sink="d1")
    by_flops = CostModel(graph, spec).predict(plan, static(spec))
    by_profile = CostModel(graph, spec, flops_profile).predict(plan, static(spec))
    assert by_profile.latency_s == pytest.approx(by_flops.latency_s, rel=1e-6)


def test_objectives(graph, spec):
    plan = Plan.build("d0", "d2", [(0, len(graph.units), {"d1": 1})])
    p = CostModel(graph, spec).predict(plan, static(spec))
    assert Objective("latency").score(p) == p.latency_s
    assert Objective("energy").score(p) == p.energy_j
    assert Objective("weighted", 2.0).score(p) == pytest.approx(p.latency_s + 2 * p.energy_j)
    with pytest.raises(ValueError, match="objective kind"):
        Objective("speed")


def test_deterministic(graph, spec):
    rng = np.random.default_rng(5)
    plans = [random_plan(graph, list(spec.device_ids), rng, source="d0", sink="d2") for _ in range(20)]
    a = [CostModel(graph, spec).predict(p, static(spec)) for p in plans]
    b = [CostModel(graph, spec).predict(p, static(spec)) for p in plans]
    assert a == b


def test_trace_driven_world_integrates_the_drop(graph, spec):
    """In the live world a transfer that runs into a bandwidth drop takes the trace's exact time."""
    from env.snapshot import link_key
    from env.traces import step_drop

    n = len(graph.units)
    plan = Plan.build("d0", "d2", [(0, n, {"d1": 1})])
    traces = {link_key(link.a, link.b): step_drop(50, 5, 0.001, 10, 20) for link in spec.links}
    world = NetworkState(spec, traces)
    p = CostModel(graph, spec).predict(plan, world)
    in_bytes = 3 * 32 * 32 * 4
    first = 0.001 + (in_bytes - 50e6 / 8 * 0.001) * 8 / 5e6  # 1 ms at 50 Mbit/s, the rest at 5
    out = 10 * 4 * 8 / 5e6
    assert p.latency_s == pytest.approx(first + 0.001 + graph.total_flops / 4e9 + out + 0.001, rel=1e-6)


def _reference_replay(graph, spec, plan, conditions, t0):
    """An independent, plain statement of the replay semantics over runtime.layout (module docstring of
    env/cost_model.py): per device one compute queue and one radio, FIFO on ties, store and forward."""
    import heapq

    from runtime.layout import layout

    lay = layout(graph, plan)
    tasks = [task for stage in lay.tasks for task in stage]
    index = {(t.stage, t.device): i for i, t in enumerate(tasks)}
    n_stages = len(plan.stages)
    waiting = [len(lay.inputs_of(t.stage, t.device)) for t in tasks]
    ready = [t0] * len(tasks)
    busy = {d: [0.0, 0.0, 0.0] for d in spec.devices}  # compute, send, recv seconds
    cpu, radio = dict.fromkeys(spec.devices, t0), dict.fromkeys(spec.devices, t0)
    events, seq, state = [], [0], {"sink": len(lay.inputs_of(n_stages, plan.sink)), "finish": t0}

    def push(at, item):
        heapq.heappush(events, (at, seq[0], item))
        seq[0] += 1

    def sent(stage, src, at):  # a task (or the source) is done at `at`: its outputs leave
        local = []
        for t in lay.outputs_of(stage, src):
            path = spec.route(t.src, t.dst)
            if t.local:
                local.append(t)
            else:
                push(at, ("hop", t, tuple(zip(path[:-1], path[1:], strict=True)), 0))
        for t in local:
            arrived(t, at)

    def arrived(t, at):
        if t.stage == n_stages:
            state["sink"] -= 1
            state["finish"] = max(state["finish"], at)
            return
        i = index[(t.stage, t.dst)]
        waiting[i] -= 1
        ready[i] = max(ready[i], at)
        if waiting[i] == 0:
            push(ready[i], ("task", i))

    sent(0, plan.source, t0)
    while events:
        at, _, item = heapq.heappop(events)
        if item[0] == "task":
            task = tasks[item[1]]
            stage = plan.stages[task.stage]
            start = max(at, cpu[task.device])
            nominal = graph.band_flops(stage.start, stage.end, task.out_rows) / (
                spec.devices[task.device].gflops * 1e9
            )
            end = start + nominal / conditions.speed_at(task.device, start)
            cpu[task.device] = end
            busy[task.device][0] += end - start
            sent(task.stage + 1, task.device, end)
            continue
        _, t, hops, h = item
        a, b = hops[h]
        start = max(at, radio[a])
        air = conditions.transfer_time(a, b, t.nbytes, start)
        radio[a] = start + air
        busy[a][1] += air
        busy[b][2] += air
        arrival = start + air + conditions.latency(a, b)
        if h + 1 < len(hops):
            push(arrival, ("hop", t, hops, h + 1))
        else:
            arrived(t, arrival)
    assert state["sink"] == 0
    makespan = state["finish"] - t0
    used = {plan.source, plan.sink} | {t.device for t in tasks}
    used |= {d for t in lay.transfers if not t.local for d in spec.route(t.src, t.dst)}
    energy = 0.0
    for d in sorted(used):
        c, s, r = busy[d]
        p = spec.devices[d].power
        energy += (
            c * p.compute_w + s * p.transmit_w + r * p.receive_w + max(0.0, makespan - (c + s + r)) * p.idle_w
        )
    return makespan, energy, {d: tuple(busy[d]) for d in used}


@pytest.mark.parametrize("cluster", ["tiny3", "line4"])
def test_compiled_replay_matches_a_plain_replay_of_the_layout(graph, cluster):
    """Random plans (fractional shares too), a trace-driven world with outages, slow devices and relays,
    and the snapshot of it: the compiled skeleton and replay give the plain replay's figures."""
    from env.snapshot import link_key
    from env.traces import Trace

    spec = load_cluster(CONFIGS / f"{cluster}.yaml")
    rng = np.random.default_rng(7)
    traces = {}
    for ln in spec.links:
        n = int(rng.integers(1, 12))
        times = np.concatenate(([0.0], np.sort(rng.uniform(0.0, 0.05, n - 1))))
        mbps = np.where(rng.random(n) < 0.2, 0.0, rng.uniform(5.0, 80.0, n))
        mbps[0] = max(mbps[0], 5.0)
        traces[link_key(ln.a, ln.b)] = Trace(times, mbps, float(times[-1] + rng.uniform(0.001, 0.02)))
    speed = {d: Trace([0.0, 0.01], rng.uniform(0.3, 1.0, 2), 0.02) for d in spec.device_ids}
    world = NetworkState(spec, traces, speed)
    model = CostModel(graph, spec)
    devices = list(spec.device_ids)
    for i in range(40):
        plan = random_plan(graph, devices, rng, source=devices[0], sink=devices[-1])
        if i % 2:  # shares that are not whole rows
            plan = Plan.build(plan.source, plan.sink, [
                (st.start, st.end, {a.device: a.share * rng.uniform(0.5, 2.0) for a in st.assignments})
                for st in plan.stages
            ])  # fmt: skip
        t0 = float(rng.uniform(0.0, 1.0))
        for conditions in (world, world.snapshot(t0, window_s=0.01, history=2)):
            latency, energy, busy = _reference_replay(graph, spec, plan, conditions, t0)
            p = model.predict(plan, conditions, t0)
            assert p.latency_s == pytest.approx(latency, rel=1e-12)
            assert p.energy_j == pytest.approx(energy, rel=1e-12)
            assert set(p.device_time) == set(busy)
            for d, (c, s, r) in busy.items():
                assert (
                    p.device_time[d].compute_s,
                    p.device_time[d].send_s,
                    p.device_time[d].recv_s,
                ) == pytest.approx((c, s, r), rel=1e-12, abs=1e-15)


def test_midway_is_the_share_of_radio_bytes_carried_and_the_links_on_the_air(graph):
    """s sends the input to h1, which computes everything and sends the output to the sink k: half-way
    through the input's airtime the request has carried half the input's bytes, and the input's hop s-h1
    is on the air; when the link goes dark at that moment, it has carried no more a second later, the same
    hop still on the air; once done, all of them, and nothing is on the air."""
    spec = complete_cluster("line", {"s": 0.001, "h1": 0.001, "k": 0.001}, 10)
    model = CostModel(graph, spec)
    plan = Plan.build("s", "k", [(0, len(graph.units), {"h1": 1.0})])
    hops = model.skeleton(plan).link_bytes(tuple(spec.devices))
    share_in = hops["s", "h1"] / sum(hops.values())
    half = airtime(hops["s", "h1"], mbps=10) / 2
    steady = NetworkState.static(spec)
    assert model.midway(plan, steady, 1.0, 1.0).progress == 0.0
    halfway = model.midway(plan, steady, 1.0, 1.0 + half)
    assert halfway.progress == pytest.approx(share_in / 2)
    assert halfway.on_air == [("s", "h1", hops["s", "h1"], 1.0)]
    done = model.midway(plan, steady, 1.0, 1.0 + model.latency(plan, steady, 1.0))
    assert done.progress == pytest.approx(1.0) and done.on_air == []
    links = {link_key(ln.a, ln.b): constant(ln.mbps) for ln in spec.links}
    links[link_key("s", "h1")] = step_drop(10.0, 0.0, 1.0 + half, 50.0, 100.0)
    dark = NetworkState(spec, links)
    stuck = model.midway(plan, dark, 1.0, 2.0 + half)
    assert stuck.progress == pytest.approx(share_in / 2)
    assert stuck.on_air == [("s", "h1", hops["s", "h1"], 1.0)]
