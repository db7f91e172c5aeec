"""Worker failures on a live 4-worker cluster: killed, frozen and restarted workers.

Every request must come back exactly once with the right output, on a plan that avoids the failed
device, and a worker that comes back must be usable again.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest
import torch

from runtime import models
from runtime.cluster import LocalCluster
from runtime.controller import fallback_plan
from runtime.plan import Plan
from runtime.spec import complete_cluster

torch.set_num_threads(1)
MODEL, SEED, N_UNITS = "tiny", 1, 14
MESH4 = complete_cluster("mesh4", dict.fromkeys("abcd", 20), 40)


def _plan(available: frozenset[str], source: str = "a", sink: str = "d") -> Plan:
    """Rows of the first layers split over every available device, the rest on the sink."""
    return Plan.build(source, sink, [(0, 6, dict.fromkeys(sorted(available), 1.0)), (6, N_UNITS, {sink: 1})])


class Replanner:
    """The planner callback: records what it was offered, plans over the devices that are up."""

    def __init__(self):
        self.calls: list[frozenset[str]] = []

    def __call__(self, available: frozenset[str]) -> Plan:
        self.calls.append(available)

        def pick(preferred: str) -> str:
            return preferred if preferred in available else min(available)

        return _plan(available, source=pick("a"), sink=pick("d"))


@pytest.fixture(scope="module")
def replanner():
    return Replanner()


@pytest.fixture(scope="module")
def cluster(replanner):
    options = {"dead_after_s": 1.0, "heartbeat_s": 0.1}
    with LocalCluster(MESH4, model=MODEL, seed=SEED, replan=replanner, controller_options=options) as c:
        yield c


@pytest.fixture
def ctl(cluster, replanner):
    """All four workers up and the full plan deployed; a killed worker is restarted afterwards."""
    _wait_until(lambda: cluster.controller.available == frozenset("abcd"), cluster)
    cluster.controller.deploy(_plan(frozenset("abcd")))
    replanner.calls.clear()
    yield cluster.controller
    for dev, proc in cluster.processes.items():
        if proc.poll() is not None:
            cluster.restart(dev)


@pytest.fixture(scope="module")
def reference():
    model = models.build(MODEL, seed=SEED)
    return lambda x: model(x).detach()


def _wait_until(condition, cluster, timeout_s: float = 30.0) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, "condition not reached in time"
        cluster.controller.ping(0.2)


def _inputs(n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, *models.input_shape(MODEL), generator=gen) for _ in range(n)]


def _check_stream(results, xs, reference) -> None:
    assert len(results) == len(xs)
    assert len({r.rid for r in results}) == len(xs)  # nothing duplicated
    assert [r.rid for r in results] == sorted(r.rid for r in results)  # in submission order
    for x, r in zip(xs, results, strict=True):
        torch.testing.assert_close(r.output, reference(x), rtol=1e-4, atol=1e-5)


def test_killed_worker_mid_stream_every_request_completes_once(ctl, cluster, replanner, reference):
    xs = _inputs(12, seed=1)
    results = []
    for r in ctl.stream(xs, window=3):
        results.append(r)
        if len(results) == 3:
            cluster.kill("c")
    _check_stream(results, xs, reference)
    assert replanner.calls == [frozenset("abd")]
    assert "c" not in ctl.available and ctl.failures[-1][1] == "c"
    assert "c" not in results[-1].plan.devices
    assert any(r.attempts > 1 for r in results)  # requests caught by the failure ran again


def test_killed_source_is_replaced_and_its_requests_rerun(ctl, cluster, replanner, reference):
    xs = _inputs(6, seed=2)
    results = []
    for r in ctl.stream(xs, window=2):
        results.append(r)
        if len(results) == 2:
            cluster.kill("a")
    _check_stream(results, xs, reference)
    assert replanner.calls == [frozenset("bcd")]
    assert results[-1].plan.source == "b"


def test_frozen_worker_is_replaced_and_its_late_work_is_ignored(ctl, cluster, replanner, reference):
    """A worker that stops answering (SIGSTOP) is declared down; when it wakes up, the bands and
    results of the attempts it held are stale and must not produce duplicates."""
    pid = cluster.processes["b"].pid
    xs = _inputs(10, seed=3)
    results = []
    try:
        for r in ctl.stream(xs, window=3):
            results.append(r)
            if len(results) == 2:
                os.kill(pid, signal.SIGSTOP)
            if len(results) == 5:
                assert "b" not in ctl.available
                os.kill(pid, signal.SIGCONT)
    finally:
        os.kill(pid, signal.SIGCONT)
    _check_stream(results, xs, reference)
    assert replanner.calls[0] == frozenset("acd")
    _wait_until(lambda: "b" in ctl.available, cluster)  # same process, answering again
    for x in xs[:2]:
        torch.testing.assert_close(ctl.infer(x).output, reference(x), rtol=1e-4, atol=1e-5)


def test_restarted_worker_is_noticed_and_used_again(ctl, cluster, reference):
    boot = ctl.status()["d"].boot
    cluster.kill("d")
    cluster.restart("d")  # before the controller noticed: only the new boot id tells
    xs = _inputs(3, seed=4)
    results = list(ctl.stream(xs, window=1))
    _check_stream(results, xs, reference)
    assert any(dev == "d" for _, dev in ctl.failures)
    _wait_until(lambda: "d" in ctl.available, cluster)
    assert ctl.status()["d"].boot != boot
    plan = ctl.deploy(_plan(ctl.available))
    assert "d" in plan.devices
    torch.testing.assert_close(ctl.infer(xs[0]).output, reference(xs[0]), rtol=1e-4, atol=1e-5)


def test_stuck_request_is_rescued_onto_a_new_plan_and_its_old_attempt_dropped(
    ctl, cluster, replanner, reference
):
    """Two requests crawl over a slow link a-b; the first is restarted on a plan that avoids it. Each comes
    back once with the right output, and the workers drop the abandoned attempt at once: a's radio cuts
    its transfer short (the second request's transfer starts right after the rescue, not when the first
    would have ended) and b never computes for it. While it crawled, the transfer reported what it carried
    every quarter second: the link's rate was measured, and the attempt's progress known, before it ended."""
    emulation = ctl.emulation
    ctl.configure(dataclasses.replace(emulation, link_schedules={("a", "b"): 0.1}))  # ~1 s per input
    slow = Plan.build("a", "d", [(0, N_UNITS, {"b": 1})])
    fast = Plan.build("a", "d", [(0, N_UNITS, {"d": 1})])
    computed_by_b = ctl.ping()["b"].stats["computed"]
    seen: list[tuple[float, list]] = []

    def rescue() -> None:
        running = ctl.in_flight()
        if seen or not ctl.transfers_in_progress() or running[0].elapsed_s < 0.3:
            return
        ctl.deploy(fast)
        seen.append((time.time(), ctl.in_flight(), list(ctl.link_samples)))
        assert ctl.restart(running[0].rid) and not ctl.restart(running[0].rid)  # on the plan in force now

    ctl.attach(replanner, rescue)
    xs = _inputs(2, seed=5)
    try:
        ctl.deploy(slow)
        slowed_at = time.time()
        results = list(ctl.stream(xs, window=2))
    finally:
        ctl.attach(replanner)
        ctl.configure(emulation)
    _check_stream(results, xs, reference)
    ((rescued_at, running, samples),) = seen
    assert [(f.plan, f.current) for f in running] == [(slow, False)] * 2
    assert 0.15 < running[0].progress < 0.6 and running[1].progress == 0.0  # ~0.25 s of a ~1 s transfer
    crawl = [n * 8 / 1e6 / s for end, x, y, n, s in samples if (x, y) == ("a", "b") and end > slowed_at]
    assert crawl and all(0.09 < mbps < 0.11 for mbps in crawl)  # the link's 0.1 Mbit/s, mid-transfer
    assert [(r.plan, r.attempts, r.rescues) for r in results] == [(fast, 2, 1), (slow, 1, 0)]
    assert results[0].latency_s > running[0].elapsed_s  # counted from the first attempt
    # and so is its energy: the cut transfer's radio time (the attempt's only work) is charged to it
    power = MESH4.devices["a"].power.transmit_w + MESH4.devices["b"].power.receive_w
    abandoned_j = results[0].energy_j - sum(t.energy_j for t in results[0].timeline.devices.values())
    assert 0.8 * running[0].elapsed_s * power < abandoned_j < (running[0].elapsed_s + 0.25) * power
    (second_tx,) = results[1].timeline.of("tx", "a")
    assert second_tx["start"] - rescued_at < 0.25  # the first transfer would have held the radio ~0.7 s more
    stats = ctl.ping()
    assert stats["b"].stats["computed"] == computed_by_b + 1  # for the second request only
    assert all(s.stats["open_requests"] == 0 for s in stats.values())
    # b's report that its last transfer ended may come after d's result: it is heard all the same
    _wait_until(lambda: not ctl.transfers_in_progress(), cluster, timeout_s=5.0)


def test_a_request_rescued_mid_computation_pays_for_the_compute_it_abandoned(ctl, replanner, reference):
    """b computes the whole model at a thousandth of its speed; the request is restarted on d while b is
    at it. b cuts the computation short and reports the time it ran, and the request's energy includes it
    at b's compute power, as it includes the radio time of an abandoned transfer."""
    emulation = ctl.emulation
    ctl.configure(dataclasses.replace(emulation, speed_schedules={"b": 0.001}))
    slow = Plan.build("a", "d", [(0, N_UNITS, {"b": 1})])
    fast = Plan.build("a", "d", [(0, N_UNITS, {"d": 1})])
    seen = []

    def rescue() -> None:
        (running,) = ctl.in_flight()
        if seen or ctl.transfers_in_progress() or running.elapsed_s < 0.6:
            return  # b has the input and has computed for a while
        ctl.deploy(fast)
        seen.append(running.elapsed_s)
        assert ctl.restart(running.rid)

    ctl.attach(replanner, rescue)
    (x,) = _inputs(1, seed=9)
    try:
        ctl.deploy(slow)
        result = ctl.infer(x)
    finally:
        ctl.attach(replanner)
        ctl.configure(emulation)
    _check_stream([result], [x], reference)
    ((elapsed,),) = [seen]
    assert (result.plan, result.rescues) == (fast, 1)
    abandoned_j = result.energy_j - sum(t.energy_j for t in result.timeline.devices.values())
    power = MESH4.devices["b"].power
    computed_s = (
        abandoned_j - 0.1 * (power.transmit_w + power.receive_w)
    ) / power.compute_w  # radio <= 0.1 s
    assert 0.6 * elapsed < computed_s and abandoned_j < (elapsed + 0.25) * power.compute_w


def test_fallback_plan_drops_devices_that_are_down():
    plan = Plan.build("a", "d", [(0, 6, {"a": 1, "c": 2}), (6, 9, {"c": 1}), (9, N_UNITS, {"d": 1})])
    fixed = fallback_plan(plan, frozenset("abc"), MESH4)
    assert fixed.stages[0].devices == ("a", "c")
    assert fixed.stages[2].devices == ("a",)  # fastest available (ties: first in order)
    assert (fixed.source, fixed.sink) == ("a", "a")
    fixed = fallback_plan(plan, frozenset("bd"), MESH4)
    assert [s.devices for s in fixed.stages] == [("b",), ("b",), ("d",)]
    assert (fixed.source, fixed.sink) == ("b", "d")
