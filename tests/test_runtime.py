"""The distributed runtime on a real 6-worker emulated cluster on loopback.

One cluster serves the whole module (starting workers is the expensive part). Its topology has
devices without a direct link, so bands really travel through relay workers.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from env.profiles import host_profile, read_profile
from runtime import models
from runtime.cluster import (
    OWNER_FILE,
    WORKDIR_PREFIX,
    LocalCluster,
    _owner_alive,
    _owner_stamp,
    remove_orphaned_workdirs,
)
from runtime.controller import Controller
from runtime.emulation import energy_j
from runtime.layout import layout
from runtime.plan import Plan, random_plan
from runtime.profiler import profile_path, profile_record
from runtime.results import ControllerError
from runtime.schedule import Trace
from runtime.spec import parse_cluster

torch.set_num_threads(1)
MODEL, SEED = "tiny", 3
TIMING_TOLERANCE = 0.15

HEX6 = {
    "format": "disnet-cluster/1",
    "name": "hex6",
    "source": "a",
    "sink": "f",
    "devices": [
        {"id": d, "gflops": g, "power": {"compute": 2.0 + i, "transmit": 1.0, "receive": 0.8, "idle": 0.3}}
        for i, (d, g) in enumerate(zip("abcdef", (40, 30, 40, 20, 30, 10), strict=True))
    ],
    # a chain a-b-c-d-e-f with chords a-c and d-f: a reaches d only through c, e through c and d
    "links": [
        {"a": x, "b": y, "mbps": m, "latency_ms": 1}
        for x, y, m in [
            ("a", "b", 50),
            ("b", "c", 40),
            ("c", "d", 50),
            ("d", "e", 30),
            ("e", "f", 50),
            ("a", "c", 45),
            ("d", "f", 40),
        ]
    ],  # fmt: skip
}
SPEC = parse_cluster(HEX6, origin="hex6")


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(SPEC, model=MODEL, seed=SEED) as c:
        yield c


@pytest.fixture(scope="module")
def reference():
    model = models.build(MODEL, seed=SEED)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    return forward


@pytest.fixture
def ctl(cluster):
    """The cluster's controller, with the module's default emulation restored after each test."""
    emulation = cluster.controller.emulation
    yield cluster.controller
    if cluster.controller.emulation is not emulation:
        cluster.controller.configure(emulation)


def _inputs(n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, *models.input_shape(MODEL), generator=gen) for _ in range(n)]


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _plans(graph) -> dict[str, Plan]:
    n = len(graph.units)
    rng = np.random.default_rng(7)
    devices = list(SPEC.devices)
    plans = {
        # three stages on three devices, each band whole
        "vertical": Plan.build("a", "f", [(0, 6, {"b": 1}), (6, 9, {"c": 1}), (9, n, {"d": 1})]),
        # one spatial stage split six ways by rows, then the head on one device
        "horizontal": Plan.build("a", "f", [(0, 6, dict.fromkeys("abcdef", 1.0)), (6, n, {"e": 1})]),
        # rows and features split, relays everywhere (a -> d, a -> e, f -> a ...)
        "mixed": Plan.build(
            "a",
            "e",
            [
                (0, 3, {"a": 1, "b": 2}),
                (3, 7, {"c": 1, "d": 1, "e": 3}),
                (7, 13, {"f": 2, "b": 1}),
                (13, n, {"a": 1}),
            ],
        ),
    }
    for i in range(3):
        plans[f"random{i}"] = random_plan(graph, devices, rng, max_devices=6)
    return plans


DEPLOYED_UNITS: dict[str, set[int]] = {}  # units each device was given by any plan of this module


@pytest.mark.parametrize("name", ["vertical", "horizontal", "mixed", "random0", "random1", "random2"])
def test_distributed_output_equals_unsplit_forward(ctl, reference, name):
    plan = _plans(ctl.graph)[name]
    assert ctl.deploy(plan) == plan
    lay = layout(ctl.graph, plan)
    for stage, tasks in zip(plan.stages, lay.tasks, strict=True):
        for task in tasks:
            DEPLOYED_UNITS.setdefault(task.device, set()).update(range(stage.start, stage.end))
    for x in _inputs(2, seed=len(name)):
        result = ctl.infer(x)
        _assert_close(result.output, reference(x))
        assert result.plan == plan and result.attempts == 1 and result.timeline.complete
    # every hop of every transfer went over a direct link, relays included
    for (a, b), link in result.timeline.links.items():
        assert SPEC.link(a, b) is not None and link.bytes > 0
    expected_hops = sum(len(SPEC.route(t.src, t.dst)) - 1 for t in lay.transfers if not t.local)
    assert len(result.timeline.of("tx")) == expected_hops
    # a worker holds the weights of the units it was given, and of no others
    for dev, status in ctl.ping().items():
        loaded = set(status.stats["loaded_units"].get(f"{MODEL}:3x32x32", []))
        now = {u for s, ts in zip(plan.stages, lay.tasks, strict=True) for t in ts if t.device == dev
               for u in range(s.start, s.end)}  # fmt: skip
        assert now <= loaded <= DEPLOYED_UNITS.get(dev, set()), dev


def test_relayed_transfer_uses_every_hop_radio_and_arrives_after_the_sum_of_hops(ctl, reference):
    """a -> d has no direct link: the input band is stored and forwarded by c."""
    slow = dataclasses.replace(ctl.emulation, link_schedules={("a", "c"): 0.5, ("c", "d"): 1.0})
    ctl.configure(slow)
    n = len(ctl.graph.units)
    ctl.deploy(Plan.build("a", "d", [(0, n, {"d": 1})]))
    x = _inputs(1)[0]
    result = ctl.infer(x)
    _assert_close(result.output, reference(x))
    nbytes = x.numel() * 4
    hops = result.timeline.of("tx")
    assert [(h["from"], h["to"]) for h in hops] == [("a", "c"), ("c", "d")]
    assert all(h["bytes"] == nbytes and h["src"] == "a" and h["dst"] == "d" for h in hops)
    want = sum(nbytes * 8 / (mbps * 1e6) + 1e-3 for mbps in (0.5, 1.0))
    got = result.timeline.of("compute", "d")[0]["ready"] - hops[0]["start"]
    assert got == pytest.approx(want, rel=TIMING_TOLERANCE)
    # the relay's radio time counts as its transmit time and as d's receive time
    assert result.timeline.devices["c"].send_s == pytest.approx(nbytes * 8 / 1e6, rel=TIMING_TOLERANCE)
    assert result.timeline.devices["d"].recv_s == pytest.approx(nbytes * 8 / 1e6, rel=TIMING_TOLERANCE)


def test_shaped_link_transfer_time_matches_bytes_over_rate_plus_latency(ctl):
    step = Trace([0.0, 0.3], [0.5, 2.0], duration=0.6, name="step")
    ctl.configure(dataclasses.replace(ctl.emulation, link_schedules={("a", "b"): 0.5, ("b", "c"): step}))
    n = len(ctl.graph.units)
    ctl.deploy(Plan.build("a", "c", [(0, 6, {"b": 1}), (6, n, {"c": 1})]))
    for x in _inputs(3):
        result = ctl.infer(x)
        (first, second) = result.timeline.of("tx")
        # constant 0.5 Mbit/s: bytes / rate + 1 ms latency
        arrived = result.timeline.of("compute", "b")[0]["ready"]
        want = first["bytes"] * 8 / 0.5e6 + 1e-3
        assert arrived - first["start"] == pytest.approx(want, rel=TIMING_TOLERANCE)
        # time-varying link: the trace integrated from the moment the radio starts
        arrived = result.timeline.of("compute", "c")[0]["ready"]
        want = step.transfer_time(second["bytes"], second["start"] - ctl.epoch) + 1e-3
        assert arrived - second["start"] == pytest.approx(want, rel=TIMING_TOLERANCE)


def test_compute_is_paced_to_the_device_speed_and_speed_schedule(ctl, cluster):
    # slow enough (~100 ms per task) that scheduling jitter of a busy host stays inside the tolerance
    ctl.configure(dataclasses.replace(ctl.emulation, speed_schedules={"f": 0.1, "d": 0.05}))
    n = len(ctl.graph.units)
    ctl.deploy(Plan.build("a", "a", [(0, 7, {"f": 1}), (7, n, {"d": 1})]))
    for x in _inputs(2):
        result = ctl.infer(x)
        for dev, factor in (("f", 0.1), ("d", 0.05)):
            (event,) = result.timeline.of("compute", dev)
            slowdown = cluster.host_gflops / SPEC.devices[dev].gflops / factor
            assert event["target"] == pytest.approx(event["cpu"] * slowdown, rel=1e-9)
            assert event["end"] - event["start"] == pytest.approx(event["target"], rel=TIMING_TOLERANCE)


def test_profile_pacing_gives_each_band_the_profiles_seconds_whatever_its_cpu_took(ctl, cluster):
    """With a profile, a band's emulated time is its profile seconds (per-unit seconds times the share of
    each unit's rows it computes, halo included), scaled to the device: the cost model's compute."""
    graph, n = ctl.graph, len(ctl.graph.units)
    unit_seconds = tuple(0.004 * (1 + u % 3) for u in range(n))
    ctl.configure(dataclasses.replace(ctl.emulation, unit_seconds=unit_seconds))
    plan = Plan.build("a", "a", [(0, 6, {"b": 1, "c": 3}), (6, n, {"d": 1})])
    ctl.deploy(plan)
    result = ctl.infer(_inputs(1)[0])
    tasks = {(t.device, t.stage): t for stage in layout(graph, plan).tasks for t in stage}
    events = result.timeline.of("compute")
    assert len(events) == 3
    for event in events:
        task, stage = tasks[(event["device"], event["stage"])], plan.stages[event["stage"]]
        work = sum(
            unit_seconds[u] * f for u, f in graph.unit_fractions(stage.start, stage.end, task.out_rows)
        )
        slowdown = cluster.host_gflops / SPEC.devices[event["device"]].gflops
        assert event["target"] == pytest.approx(work * slowdown, rel=1e-9)
        assert event["target"] != pytest.approx(event["cpu"] * slowdown, rel=0.01)
    # the wrong model's profile is refused by the worker, and the request fails with that reason
    ctl.configure(dataclasses.replace(ctl.emulation, unit_seconds=unit_seconds[:-1]))
    with pytest.raises(ControllerError, match="pacing profile: a profile of .* units"):
        ctl.infer(_inputs(1)[0])


def test_timeline_energy_and_latency_are_consistent(ctl):
    n = len(ctl.graph.units)
    plan = Plan.build("a", "f", [(0, 6, {"b": 1, "c": 1}), (6, n, {"f": 1})])
    ctl.deploy(plan)
    result = ctl.infer(_inputs(1)[0])
    tl = result.timeline
    (start,) = tl.of("input")
    (done,) = tl.of("done")
    assert (start["device"], done["device"]) == ("a", "f")
    assert result.latency_s == pytest.approx(done["t"] - start["t"])
    assert 0 < result.latency_s <= result.wall_s
    # everyone who computed, sent, relayed (d, on the way from c to f) or received
    assert set(tl.devices) == {"a", "b", "c", "d", "f"}
    total = 0.0
    for dev, t in tl.devices.items():
        busy = t.compute_s + t.send_s + t.recv_s
        assert t.wait_s == pytest.approx(max(0.0, result.latency_s - busy))
        p = SPEC.devices[dev].power
        assert t.energy_j == pytest.approx(energy_j(p, t.compute_s, t.send_s, t.recv_s, t.wait_s))
        total += t.energy_j
    assert result.energy_j == pytest.approx(total)
    for (a, b), link in tl.links.items():
        power = SPEC.devices[a].power.transmit_w + SPEC.devices[b].power.receive_w
        assert link.energy_j == pytest.approx(link.seconds * power)
    # every event lies inside the request, in causal order per device
    for e in tl.events:
        for key in ("start", "end", "ready", "t"):
            if key in e:
                assert start["t"] - 1e-6 <= e[key] <= done["t"] + 1e-6
    assert all(e["start"] <= e["end"] for e in tl.events if "start" in e)


def test_stream_pipelines_requests_through_the_stages(ctl, reference):
    n = len(ctl.graph.units)
    plan = Plan.build("a", "f", [(0, 6, {"f": 1}), (6, 9, {"d": 1}), (9, n, {"e": 1})])
    ctl.configure(dataclasses.replace(ctl.emulation, speed_schedules={"d": 0.2, "e": 0.1}))
    ctl.deploy(plan)
    xs = _inputs(8, seed=11)
    results = list(ctl.stream(xs, window=3))
    assert [r.rid for r in results] == sorted(r.rid for r in results)
    for x, r in zip(xs, results, strict=True):
        _assert_close(r.output, reference(x))
    # request i+1 ran its first stage while request i was still in a later stage
    overlaps = 0
    for prev, nxt in itertools.pairwise(results):
        first_of_next = nxt.timeline.of("compute", "f")[0]
        last_of_prev = prev.timeline.of("compute", "e")[0]
        overlaps += first_of_next["start"] < last_of_prev["end"]
    assert overlaps >= len(results) // 2
    one_at_a_time = sum(r.latency_s for r in results)
    span = results[-1].timeline.of("done")[0]["t"] - results[0].timeline.of("input")[0]["t"]
    assert span < 0.8 * one_at_a_time


def test_plan_swap_mid_stream_loses_and_duplicates_nothing(ctl, reference):
    n = len(ctl.graph.units)
    plans = [
        Plan.build("a", "f", [(0, 7, {"b": 1}), (7, n, {"c": 1})]),
        Plan.build("b", "d", [(0, 3, {"c": 1, "e": 1}), (3, n, {"a": 1})]),
        Plan.build("f", "a", [(0, n, {"d": 1})]),
    ]
    ctl.deploy(plans[0])
    xs = _inputs(10, seed=5)
    results = []
    for r in ctl.stream(xs, window=3):
        results.append(r)
        if len(results) in (3, 6):
            ctl.deploy(plans[len(results) // 3])
    assert len(results) == 10 and len({r.rid for r in results}) == 10
    for x, r in zip(xs, results, strict=True):
        _assert_close(r.output, reference(x))
    used = [plans.index(r.plan) for r in results]
    assert used == sorted(used) and set(used) == {0, 1, 2}
    # the old plans are retired on the workers once their last telemetry is in: soon only the current
    # one is left
    deadline = time.time() + 10.0
    while True:
        stats = [s.stats for s in ctl.ping().values()]
        if all(len(st["plans"]) <= 1 and st["open_requests"] == 0 for st in stats) or time.time() > deadline:
            break
    assert all(len(st["plans"]) <= 1 and st["open_requests"] == 0 for st in stats), stats


def test_bad_plans_are_refused_before_anything_is_sent(ctl):
    n = len(ctl.graph.units)
    current = ctl.plan
    with pytest.raises(ValueError, match="not in the cluster"):
        ctl.deploy(Plan.build("a", "f", [(0, n, {"zz": 1})]))
    with pytest.raises(ValueError, match="cannot cut"):
        ctl.deploy(Plan.build("a", "f", [(0, 1, {"b": 1}), (1, n, {"c": 1})]))
    assert ctl.plan == current
    with pytest.raises(ValueError, match="does not fit"):
        ctl.infer(torch.zeros(1, 3, 8, 8))


def _link_pieces(ctl, link: tuple[str, str], since: float) -> list[tuple[float, str, str, int, float]]:
    """The transfer pieces the controller sampled on ``link`` (either way) since wall time ``since``."""
    return [s for s in ctl.link_samples if s[0] >= since and {s[1], s[2]} == set(link) and s[4] > 0]


def _mbps(pieces, dilation: float) -> float:
    """Mbit/s of the emulated link (bytes over radio seconds; wall seconds run D x the emulated ones)."""
    return sum(n for *_, n, _ in pieces) * 8 / 1e6 / sum(s for *_, s in pieces) * dilation


def test_link_and_compute_telemetry_for_live_planning(ctl):
    n = len(ctl.graph.units)
    ctl.configure(dataclasses.replace(ctl.emulation, link_schedules={("d", "e"): 3.0}))
    ctl.deploy(Plan.build("d", "e", [(0, 6, {"e": 1}), (6, n, {"d": 1})]))
    since, results = time.time(), []
    for x in _inputs(40):  # for a bit more than a second, so that the history has a full second
        results.append(ctl.infer(x))
        if time.time() - since > 1.2:
            break
    pieces = _link_pieces(ctl, ("d", "e"), since)
    assert _mbps(pieces, ctl.dilation) == pytest.approx(3.0, rel=TIMING_TOLERANCE)
    now, by_second = time.time(), {}  # the pieces of each whole second back from now
    for piece in pieces:
        if (ago := int(now - piece[0])) < int(now - since):
            by_second.setdefault(ago, []).append(piece)
    assert by_second and all(
        _mbps(p, ctl.dilation) == pytest.approx(3.0, rel=TIMING_TOLERANCE) for p in by_second.values()
    )
    recent = [s for s in ctl.compute_samples if s[0] >= since]
    assert {device for _, device, _, _, _ in recent} == {"d", "e"}
    assert all(seconds > 0 and flops > 0 for _, _, flops, seconds, _ in recent)
    # emulated workers say what each task takes at nominal speed: at speed factor 1, its paced target,
    # which the task's wall time can only exceed (by how late the host wakes the worker: not checked here)
    computed = [e for r in results for e in r.timeline.of("compute")]
    assert all(e["nominal"] == pytest.approx(e["target"], rel=1e-9) for e in computed)
    assert sorted(nominal for *_, nominal in recent) == pytest.approx(sorted(e["nominal"] for e in computed))
    assert all(0 < nominal <= seconds for *_, seconds, nominal in recent)
    status = ctl.ping()
    assert all(s.up for s in status.values()) and ctl.available == frozenset(SPEC.devices)
    assert all(math.isfinite(s.stats["energy_j"]) for s in status.values())


def test_time_dilation_runs_slower_and_reports_the_emulated_cluster_times(ctl, reference):
    """At D = 3 a request takes 3x the wall time, but its reported latency, radio time and energy, link
    rate and clock are the emulated cluster's, as at D = 1."""
    n = len(ctl.graph.units)
    ctl.configure(dataclasses.replace(ctl.emulation, link_schedules={("d", "e"): 3.0}))
    ctl.deploy(Plan.build("d", "e", [(0, 6, {"e": 1}), (6, n, {"d": 1})]))
    x = _inputs(1)[0]
    plain = [ctl.infer(x) for _ in range(2)][-1]
    ctl.configure(dataclasses.replace(ctl.emulation, dilation=3.0))
    assert ctl.dilation == 3.0
    wall0, clock0 = time.time(), ctl.now()
    dilated = ctl.infer(x)
    wall = time.time() - wall0
    _assert_close(dilated.output, reference(x))
    assert dilated.latency_s == pytest.approx(plain.latency_s, rel=TIMING_TOLERANCE)
    radio, radio_plain = dilated.timeline.links[("e", "d")], plain.timeline.links[("e", "d")]
    assert radio.seconds == pytest.approx(radio_plain.seconds, rel=TIMING_TOLERANCE)
    assert radio.energy_j == pytest.approx(radio_plain.energy_j, rel=TIMING_TOLERANCE)
    assert wall > 2.5 * plain.latency_s
    assert ctl.now() - clock0 == pytest.approx(wall / 3, rel=0.1)
    assert _mbps(_link_pieces(ctl, ("d", "e"), wall0), ctl.dilation) == pytest.approx(
        3.0, rel=TIMING_TOLERANCE
    )
    with pytest.raises(ValueError, match="dilation must be a finite number >= 1"):
        dataclasses.replace(ctl.emulation, dilation=0.5)


def test_profiler_measures_every_unit_through_a_worker(ctl, cluster, tmp_path):
    record = profile_record(ctl, "c", cluster.host_gflops, repeats=2)
    graph = ctl.graph
    assert (record["model"], record["device"], record["input_shape"]) == (MODEL, "c", [3, 32, 32])
    seconds = record["unit_seconds"]
    assert len(seconds) == len(graph.units)
    for start, end in graph.groups:
        assert sum(seconds[start:end]) > 0  # every group was measured
    assert all(s > 0 for s, u in zip(seconds, graph.units, strict=True) if u.flops > 0)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(record))
    profile = read_profile(path, graph)  # valid for the cost model as written
    assert profile.unit_seconds == tuple(seconds) and profile.reference_gflops == cluster.host_gflops


def test_a_missing_profile_is_measured_through_a_worker_once_and_cached(ctl, cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("DISNET_PROFILES", str(tmp_path))
    measured, said = [], []

    def measure(model: str) -> dict:
        measured.append(model)
        return profile_record(ctl, "c", cluster.host_gflops, repeats=1)

    first = host_profile(ctl.graph, say=said.append, measure=measure)
    assert measured == [MODEL] and "profiling tiny" in said[0] and profile_path(MODEL).exists()
    stored = json.loads(profile_path(MODEL).read_text())
    assert stored["format"] == "disnet-profile/1" and stored["units"] == [u.name for u in ctl.graph.units]
    again = host_profile(ctl.graph, say=said.append, measure=measure)
    assert again == first and measured == [MODEL]  # read from the cache, not measured again


def test_second_controller_with_another_input_size_shares_the_workers(ctl, cluster, reference):
    """Workers keep one graph per input shape; results go to the controller that deployed the plan."""
    n = len(ctl.graph.units)
    with Controller(SPEC, cluster.endpoints, model=MODEL, seed=SEED, input_shape=(3, 48, 40)) as other:
        other.deploy(Plan.build("b", "e", [(0, 6, {"c": 1, "d": 2}), (6, n, {"e": 1})]))
        x = torch.randn(1, 3, 48, 40, generator=torch.Generator().manual_seed(4))
        _assert_close(other.infer(x).output, reference(x))
        shapes = ctl.ping()["c"].stats["loaded_units"]
        assert {f"{MODEL}:3x32x32", f"{MODEL}:3x48x40"} <= set(shapes)
    ctl.configure(ctl.emulation)  # the other controller configured the workers without emulation
    ctl.deploy(Plan.build("a", "f", [(0, n, {"c": 1})]))
    x = _inputs(1)[0]
    _assert_close(ctl.infer(x).output, reference(x))


def test_a_killed_programs_workdir_is_removed_by_the_next_cluster_and_no_other(tmp_path, cluster):
    """A SIGKILLed program leaves its checkpoint and logs behind; only a directory whose owner is gone goes."""
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead_stamp = _owner_stamp(dead.pid)
    dead.kill()
    dead.wait()
    owners = {"orphan": dead_stamp, "ours": _owner_stamp(os.getpid()), "unnamed": None}
    for name, stamp in owners.items():
        (tmp_path / f"{WORKDIR_PREFIX}{name}").mkdir()
        if stamp is not None:
            (tmp_path / f"{WORKDIR_PREFIX}{name}" / OWNER_FILE).write_text(stamp)
    assert remove_orphaned_workdirs(tmp_path) == [tmp_path / f"{WORKDIR_PREFIX}orphan"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{WORKDIR_PREFIX}ours", f"{WORKDIR_PREFIX}unnamed"]
    assert _owner_alive((cluster.workdir / OWNER_FILE).read_text())  # a running cluster names its owner
