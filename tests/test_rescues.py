"""Rescues of requests caught in flight by a collapse, beyond a request's input on a direct link: a band
between two stages, a band on a multi-hop route (on either hop), a request rescued twice, one caught
a third time once it has been rescued as often as allowed, and several requests caught at once (a
window of three: bands on the air both ways on the collapsing link, or queued on a relay's radio behind
one on the air). Multi-stream serving (serving/streams.py) without an ``Adaptation`` has no rescue: its
frames caught by a collapse under one lane's plan wait it out on their plan; with one, the lane whose link
collapsed is re-planned and its frames on the air are rescued, and the other lane is left alone.
A live comparison served with rescues (``evaluate.py compare --backend live --rescue``) rescues its
agent's request the same way, onto that agent's own planner's new plan; every agent's request of one
index runs on the same seconds of the traces.

A scripted planner chooses the plans and every rescue lands on d0, the source. The collapsed link starts
slow enough that the caught band is on the air for over a second from its first byte, and the collapse
comes well inside that time: any start the host's load allows puts it in flight at the drop, and each
test asserts this from the controller's transfer log (the first transfer each way on each link), not
assumes it. A request already rescued ``MAX_RESCUES`` times and caught again is not rescued: it waits
the collapse out on its plan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from agents.base import Planner
from env.cost_model import Objective
from env.network import NetworkState
from env.snapshot import Snapshot, link_key
from env.traces import constant, step_drop
from runtime import models
from runtime.cluster import LocalCluster
from runtime.controller import Controller
from runtime.graph import LayerGraph
from runtime.plan import Assignment, Plan, Stage
from runtime.results import DEFAULT_LANE
from runtime.spec import ClusterSpec, load_cluster, parse_cluster
from serving.evaluation import LiveRescue, live_session, run_comparison
from serving.loop import ServeOptions, serve
from serving.policies import Decider
from serving.records import RequestLog
from serving.rules import MAX_RESCUES
from serving.streams import Adaptation, StreamSpec, serve_streams

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "clusters"
INPUT_BYTES, OUTPUT_BYTES = 3 * 32 * 32 * 4, 10 * 4  # tiny's input and output, float32
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def graph():
    return LayerGraph.from_model(models.build("tiny", seed=0), models.input_shape("tiny"), "tiny")


def cluster(links: dict[str, float], sink: str = "d0") -> ClusterSpec:
    """tiny3 with only ``links`` ("d0-d1": Mbit/s) at those rates (what planners believe before anything
    is measured), and ``sink``: by default d0, the source, a camera offloading its own inference."""
    layout = load_cluster(CONFIGS / "tiny3.yaml").to_dict()
    layout["sink"] = sink
    layout["links"] = [
        link | {"mbps": links[name]}
        for link in layout["links"]
        if (name := f"{link['a']}-{link['b']}") in links
    ]
    return parse_cluster(layout, origin=f"tiny3 with sink {sink} and links {links}")


def chain(graph: LayerGraph, *stages: tuple[str, int], sink: str = "d0") -> Plan:
    """Stages of one device each, ``(device, end unit)`` in order, from d0 to ``sink``."""
    starts = [0] + [end for _, end in stages[:-1]]
    return Plan(
        "d0",
        sink,
        tuple(
            Stage(start, end, (Assignment(device, 1.0),))
            for start, (device, end) in zip(starts, stages, strict=True)
        ),
    )


class Scripted(Planner):
    """The first of ``choices`` ``(plan, links)`` whose links all look faster than ``floor_mbps`` (the
    last one's links should be none: the plan when every other is cut); ``chosen`` keeps each plan it
    made with its view's time on the traces' clock."""

    name = "scripted"

    def __init__(self, choices: list[tuple[Plan, tuple[str, ...]]], floor_mbps: float):
        super().__init__()
        self.choices, self.floor_mbps = choices, floor_mbps
        self.chosen: list[tuple[float, Plan]] = []

    def plan(self, snapshot, graph, objective):
        def up(link: str) -> bool:
            return snapshot.link_mbps[link_key(*link.split("-"))] > self.floor_mbps

        plan = next(plan for plan, links in self.choices if all(map(up, links)))
        self.chosen.append((snapshot.time, plan))
        return plan


def at_zero(world: NetworkState) -> Callable[[int], Snapshot]:
    """A live comparison's request times: every request at t=0 on the traces' clock."""
    return lambda _index: world.snapshot(0.0)


def pieces(ctl: Controller, a: str, b: str) -> list[tuple[float, float, int]]:
    """``(start, end)`` on the traces' clock and bytes of every piece of every transfer from a to b."""
    return [
        ((end - seconds - ctl.epoch) / ctl.dilation, (end - ctl.epoch) / ctl.dilation, n)
        for end, x, y, n, seconds in ctl.link_samples
        if (x, y) == (a, b)
    ]


def first_transfer(log: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """The pieces of the first transfer in a link's log: each piece of a transfer starts where the one
    before it ended (the next transfer starts after it was cut or ended, never exactly then)."""
    transfer = log[:1]
    for piece in log[1:]:
        if not math.isclose(piece[0], transfer[-1][1], abs_tol=1e-5):
            break
        transfer.append(piece)
    return transfer


def transfers(log: list[tuple[float, float, int]]) -> list[list[tuple[float, float, int]]]:
    """Every transfer in a link's log, in order, each its pieces (split as ``first_transfer`` splits)."""
    out = []
    while log:
        out.append(first_transfer(log))
        log = log[len(out[-1]) :]
    return out


def caught(log: list[tuple[float, float, int]], t_drop: float, nbytes: int) -> bool:
    """Whether a transfer (its pieces) of a band of ``nbytes`` was on the air across ``t_drop`` and cut
    before it got through."""
    return bool(log) and log[0][0] < t_drop < log[-1][1] and sum(n for *_, n in log) < nbytes


def leftovers(
    ctl: Controller, spec: ClusterSpec, lanes: tuple[str, ...] = (DEFAULT_LANE,)
) -> dict[str, tuple]:
    """Per worker, what it holds once serving is done beyond the plans in force (of ``lanes``): its open
    requests, its received bytes still alive (a band held for its arrival, a hop queued on its radio or
    on the air, a task's input) and its plans other than those in force; then the transfers still on
    the air."""
    status = {d: s.stats for d, s in ctl.ping().items()}
    in_force = {
        d: [dep.plan_id for lane in lanes if (dep := ctl.deployment_of(d, lane))] for d in spec.devices
    }
    held = {
        d: (s["open_requests"], s["buffered_bytes"], sorted(set(s["plans"]) - set(in_force[d])))
        for d, s in status.items()
    }
    return held | {"on the air": ctl.transfers_in_progress()}


CLEAN = {"d0": (0, 0, []), "d1": (0, 0, []), "d2": (0, 0, []), "on the air": []}


def served(records: list[RequestLog]) -> list[tuple]:
    """The requests' logs, a line each: index, end, latency, rescues, the devices of its plan."""
    return [
        (
            r.index,
            round(r.time_s, 3),
            round(r.latency_s, 3),
            r.rescues,
            sorted(Plan.from_json(r.plan).devices),
        )
        for r in records
    ]


def run(
    spec: ClusterSpec,
    schedules: dict,
    planner: Scripted,
    graph: LayerGraph,
    requests: int = 3,
    keep=first_transfer,
    window: int = 1,
):
    """Serve ``requests`` requests, ``window`` at a time (the traces' clock restarted with the first);
    their records, the run's summary, what ``keep`` keeps of each link's log each way (its first
    transfer) and the leftovers, read from the controller once it is done."""
    model = models.build("tiny", seed=0)
    records: list[RequestLog] = []
    with LocalCluster(spec, model="tiny", link_schedules=schedules) as cluster:
        ctl = cluster.controller
        options = ServeOptions(requests=requests, restart_clock=True, window=window)
        decide = Decider(planner, graph, Objective())
        report = serve(cluster, model, decide, options, agent="rescue", on_result=records.append)
        logs = {(a, b): keep(pieces(ctl, a, b)) for a in spec.devices for b in spec.devices if a != b}
        left = leftovers(ctl, spec)
    return records, report.summary(), logs, left


def assert_rescued_once(records, summary, on_d0: Plan, rescues: int = 1) -> RequestLog:
    """The first request came back rescued ``rescues`` times, the others ran on d0; every output exact,
    nothing lost or repeated, the rescued request counted once; returns the first request's record."""
    assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["outputs_match"], summary
    assert summary["rescued"] == 1 and len({r.rid for r in records}) == len(records), served(records)
    first, *after = records
    assert (first.rescues, first.plan) == (rescues, on_d0.to_json()), served(records)
    assert all((r.rescues, r.plan) == (0, on_d0.to_json()) for r in after), served(records)
    return first


def assert_the_first_three_rescued_once(records, summary, on_d0: Plan, t_drop: float) -> None:
    """The three requests in flight at the drop (entered before it) were each rescued once onto d0 and
    finished soon after; the two after them ran on d0 from the start."""
    in_flight = [r for r in records if r.time_s - r.latency_s < t_drop]
    assert [r.index for r in in_flight] == [0, 1, 2], served(records)
    assert summary["rescued"] == len(in_flight), (summary, served(records))
    assert all((r.rescues, r.plan) == (1, on_d0.to_json()) for r in in_flight), served(records)
    assert all((r.rescues, r.plan) == (0, on_d0.to_json()) for r in records[3:]), served(records)
    assert all(r.latency_s < t_drop + 4.0 for r in in_flight), served(records)


def test_a_band_between_two_stages_caught_by_a_collapse_is_rescued_once_and_leaves_the_workers_clean(
    graph,
):
    """The first stage (units 0-6) on d1, the second on d2: the 8 kB tensor between them crosses d1-d2, at
    0.04 Mbit/s (1.6 s) until 0.8 s in, then 0.002. It leaves d1 once d1 has the input and has computed
    its stage (a few tens of ms in), so it is on the air at the drop, under half of it through, the rest
    needing over 15 s. The crawl shows the collapse and the request restarts on d0: it comes back once,
    exact, counted once, long before the band would have arrived; no worker keeps anything of it (d1 its
    radio's band, d2 the band held for its arrival, either the retired plan)."""
    t_drop, between = 0.8, 32 * 8 * 8 * 4  # the pool's output, float32
    spec = cluster({"d0-d1": 50.0, "d0-d2": 50.0, "d1-d2": 0.04})
    staged, on_d0 = chain(graph, ("d1", 7), ("d2", len(graph.units))), chain(graph, ("d0", len(graph.units)))
    planner = Scripted([(staged, ("d1-d2",)), (on_d0, ())], floor_mbps=0.01)
    collapse = step_drop(0.04, 0.002, t_drop, drop_len=3000.0, duration=3600.0)
    records, summary, logs, left = run(spec, {("d1", "d2"): collapse}, planner, graph)
    first = assert_rescued_once(records, summary, on_d0)
    # its input got through to d1, which computed the first stage and sent its output: caught at the drop
    assert sum(n for *_, n in logs["d0", "d1"]) == INPUT_BYTES
    assert first.time_s - first.latency_s < t_drop and caught(logs["d1", "d2"], t_drop, between), logs
    assert first.latency_s < 6.0 and all(r.latency_s < 1.0 for r in records[1:]), served(records)
    assert left == CLEAN


@pytest.mark.parametrize(
    "collapsed",
    [pytest.param("d1-d2", id="on the relay's radio"), pytest.param("d0-d1", id="on its way to the relay")],
)
def test_a_band_on_a_multi_hop_route_caught_by_a_collapse_is_rescued_once_and_leaves_the_relay_clean(
    graph, collapsed
):
    """A chain d0 - d1 - d2, the sink beyond the relay: computed on d2, the input crosses d1, which stores
    and forwards it. The collapsed hop carries 0.08 Mbit/s (the 12 kB input crosses it in 1.2 s), the
    other 50, and it falls to 0.004 Mbit/s 0.5 s in, with the input on it: on the relay's radio, the
    first hop all through (a request whose only band is on its last hop is far from done: its progress
    counts every hop), or on d0's radio, the relay holding what it received until its emulated arrival.
    Either way the request restarts on d0 (its 40 B output crosses the collapsed hop in 0.08 s): once,
    exact, counted once, and the relay keeps nothing of the abandoned attempt: no band held, none queued
    or on its radio, no plan."""
    t_drop = 0.5
    spec = cluster({"d0-d1": 50.0, "d1-d2": 50.0} | {collapsed: 0.08}, sink="d2")
    assert spec.route("d0", "d2") == ["d0", "d1", "d2"]
    n = len(graph.units)
    on_d2, on_d0 = chain(graph, ("d2", n), sink="d2"), chain(graph, ("d0", n), sink="d2")
    planner = Scripted([(on_d2, ("d0-d1", "d1-d2")), (on_d0, ())], floor_mbps=0.04)
    collapse = step_drop(0.08, 0.004, t_drop, drop_len=3000.0, duration=3600.0)
    link = tuple(collapsed.split("-"))
    records, summary, logs, left = run(spec, {link: collapse}, planner, graph)
    first = assert_rescued_once(records, summary, on_d0)
    assert first.time_s - first.latency_s < t_drop and caught(logs[link], t_drop, INPUT_BYTES), logs
    if link == ("d1", "d2"):  # the relay had received the whole input when its hop fell
        assert sum(n for *_, n in logs["d0", "d1"]) == INPUT_BYTES, logs
    else:  # none of it went on: the second hop first carried the rescued attempt's output
        assert sum(n for *_, n in logs["d1", "d2"]) == OUTPUT_BYTES, logs
    assert first.latency_s < 5.0 and all(r.latency_s < 1.0 for r in records[1:]), served(records)
    assert left == CLEAN


def test_a_request_rescued_as_often_as_allowed_completes_exact_and_is_counted_once(graph):
    """Three plans in order of preference: on d1 (the input crosses d0-d1), on d2 (d0-d2), on d0. d0-d1
    carries 0.08 Mbit/s (1.2 s for the input) and falls to 0.001 0.5 s in: the first attempt is caught
    and rescued onto d2. d0-d2 is believed at 2 Mbit/s but carries 0.012 (8 s for the input), above the
    planner's floor, so the second attempt stays on it, crawling, until d0-d2 falls too, to 0.0005, 5 s
    in: whenever the first rescue came (it is asserted before 5 s), the second attempt's input is then on
    the air, and it is rescued onto d0. That is ``MAX_RESCUES``: the request still completes, exact, and
    counts once among the rescued; the requests after it run on d0 and no worker keeps anything."""
    t_first, t_second = 0.5, 5.0
    spec = cluster({"d0-d1": 0.08, "d0-d2": 2.0, "d1-d2": 50.0})
    n = len(graph.units)
    on_d1, on_d2, on_d0 = (chain(graph, (d, n)) for d in ("d1", "d2", "d0"))
    planner = Scripted([(on_d1, ("d0-d1",)), (on_d2, ("d0-d2",)), (on_d0, ())], floor_mbps=0.004)
    schedules = {
        ("d0", "d1"): step_drop(0.08, 0.001, t_first, drop_len=3000.0, duration=3600.0),
        ("d0", "d2"): step_drop(0.012, 0.0005, t_second, drop_len=3000.0, duration=3600.0),
    }
    records, summary, logs, left = run(spec, schedules, planner, graph)
    first = assert_rescued_once(records, summary, on_d0, rescues=MAX_RESCUES)
    assert first.time_s - first.latency_s < t_first and caught(logs["d0", "d1"], t_first, INPUT_BYTES), logs
    assert caught(logs["d0", "d2"], t_second, INPUT_BYTES), logs
    assert first.latency_s < t_second + 4.0 and all(r.latency_s < 1.0 for r in records[1:]), served(records)
    assert left == CLEAN


def test_a_request_caught_again_once_rescued_as_often_as_allowed_waits_the_collapse_out_on_its_plan(graph):
    """Plans in order of preference: d1 then d2 (the input crosses d0-d1 at 0.25 Mbit/s: 0.4 s), d0 for
    units 0-2 then d1 (its 64 kB output crosses d0-d1: 2.1 s), on d2 (the input crosses d0-d2, believed at
    50 Mbit/s and silent until then), on d0. The 8 kB band between d1 and d2 crawls at 0.04 (1.6 s) and
    d1-d2 falls to 0.002 1 s in, with it on the air: the first attempt is rescued onto d0-d1's plan (some
    0.9 s after the drop), whose 64 kB band is on the air when d0-d1 falls to 0.0005 3.2 s in: it is
    rescued onto d2 (some 0.8 s after that drop), the second time, ``MAX_RESCUES``. Its input crosses
    d0-d2 at 0.05 (2 s), and d0-d2 falls to 0.0005 5.3 s in, for 2 s: the planner sees it and makes the
    plan on d0 while the request runs, but the request is not rescued a third time. Its input crawls
    through the collapse and gets through after it, on the same transfer; the request completes on d2,
    exact, counted once, and no worker keeps anything. Each drop's band is asserted in flight at it from
    the transfer log (a rescue up to some 1.2 s later than usual still leaves it so)."""
    (t_first, t_second, t_third), drop_len = (1.0, 3.2, 5.3), 2.0
    spec = cluster({"d0-d1": 0.25, "d0-d2": 50.0, "d1-d2": 0.04})
    n, between, conv1 = len(graph.units), 32 * 8 * 8 * 4, 16 * 32 * 32 * 4  # the pool's, conv1's output
    staged, via_d1 = chain(graph, ("d1", 7), ("d2", n)), chain(graph, ("d0", 3), ("d1", n))
    on_d2, on_d0 = chain(graph, ("d2", n)), chain(graph, ("d0", n))
    choices = [(staged, ("d1-d2",)), (via_d1, ("d0-d1",)), (on_d2, ("d0-d2",)), (on_d0, ())]
    planner = Scripted(choices, floor_mbps=0.004)
    schedules = {
        ("d1", "d2"): step_drop(0.04, 0.002, t_first, drop_len=3000.0, duration=3600.0),
        ("d0", "d1"): step_drop(0.25, 0.0005, t_second, drop_len=3000.0, duration=3600.0),
        ("d0", "d2"): step_drop(0.05, 0.0005, t_third, drop_len=drop_len, duration=3600.0),
    }
    records, summary, logs, left = run(spec, schedules, planner, graph, requests=1, keep=transfers)
    assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["outputs_match"], summary
    assert summary["rescued"] == 1 and len(records) == 1, served(records)
    (first,) = records
    assert (first.rescues, first.plan) == (MAX_RESCUES, on_d2.to_json()), served(records)
    # d0 -> d1 carried the first attempt's input, whole, then the second attempt's band, caught at its drop
    assert first.time_s - first.latency_s < t_first and len(logs["d0", "d1"]) == 2, logs
    (inputs, band), (crawl,) = logs["d0", "d1"], logs["d1", "d2"]
    assert sum(n for *_, n in inputs) == INPUT_BYTES and caught(crawl, t_first, between), logs
    assert caught(band, t_second, conv1), logs
    # the third attempt's input: on the air at the third drop, short of its end, through after the collapse
    (third,), (output,) = logs["d0", "d2"], logs["d2", "d0"]
    assert third[0][0] < t_third < t_third + drop_len < third[-1][1], logs
    assert sum(n for start, _, n in third if start < t_third) < INPUT_BYTES, logs
    assert sum(n for *_, n in third) == INPUT_BYTES and sum(n for *_, n in output) == OUTPUT_BYTES, logs
    # the planner saw the collapse while the request ran: the plan on d0, made and not rescued onto
    made = [(round(t, 2), [plan for plan, _ in choices].index(p)) for t, p in planner.chosen]
    assert any(t_third < t < first.time_s and p == on_d0 for t, p in planner.chosen), made
    assert first.latency_s < t_third + drop_len + 3.0, served(records)
    assert left == CLEAN


def test_requests_in_flight_together_when_a_link_collapses_are_each_rescued_once_and_none_repeated(graph):
    """Three requests enter at once (a window of three: they arrive faster than one completes) on a plan
    that computes units 0-2 on d1 and the rest on d0, the sink: each input crosses d0 -> d1 (12 kB) and
    conv1's 64 kB output crosses back, both on d0-d1 at 0.08 Mbit/s until 2 s in, then 0.002. d0's radio
    sends one hop at a time: the first input is through at some 1.2 s, then the second input goes on the
    air behind it, the third queued behind that, while d1 sends the first request's band back on its own
    radio. At the drop two of them have a band on the air on the collapsing link, one each way (neither
    near its end, however late the host lets them start), and the third has its whole input still to
    cross it. All three are caught: each is rescued onto d0, once; the five requests come back once each,
    exact, the last two run on d0 from the start, and no worker keeps anything."""
    t_drop, n = 2.0, len(graph.units)
    conv1 = 16 * 32 * 32 * 4  # conv1's output, float32
    spec = cluster({"d0-d1": 0.08, "d0-d2": 50.0, "d1-d2": 50.0})
    staged, on_d0 = chain(graph, ("d1", 3), ("d0", n)), chain(graph, ("d0", n))
    planner = Scripted([(staged, ("d0-d1",)), (on_d0, ())], floor_mbps=0.02)
    collapse = step_drop(0.08, 0.002, t_drop, drop_len=3000.0, duration=3600.0)
    records, summary, logs, left = run(
        spec, {("d0", "d1"): collapse}, planner, graph, requests=5, window=3, keep=transfers
    )
    assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["outputs_match"], summary
    assert len({r.rid for r in records}) == len(records) == 5, served(records)
    # d0 -> d1: the first input, whole, before the drop; the second on the air at the drop and cut; any
    # later transfer (the third input, if the radio took it up before its cancel came) started after it
    first_input, second_input, *later = logs["d0", "d1"]
    assert sum(n for *_, n in first_input) == INPUT_BYTES and first_input[-1][1] < t_drop, logs
    assert caught(second_input, t_drop, INPUT_BYTES), logs
    assert all(t[0][0] > t_drop and sum(n for *_, n in t) < INPUT_BYTES for t in later), logs
    # d1 -> d0: the first request's band, on the air at the drop and cut (the others never got theirs)
    (band,) = logs["d1", "d0"]
    assert caught(band, t_drop, conv1), logs
    # the three were all in flight at the drop (entered before it), and each was caught and rescued once
    assert_the_first_three_rescued_once(records, summary, on_d0, t_drop)
    assert left == CLEAN


CAMERAS = (
    StreamSpec(name="door", source="d0", sink="d0", model="tiny", fps=1.0, slo_s=10.0),
    StreamSpec(name="yard", source="d2", sink="d0", model="tiny", fps=1.0, slo_s=10.0),
)


def camera_plans(graph: LayerGraph) -> tuple[Plan, Plan]:
    """Door's plan, units 0-6 on d1 and the rest on d0 (its input crosses d0 -> d1, the pool's output
    crosses back), and yard's, all on d2 with its output sent to d0."""
    n = len(graph.units)
    return chain(graph, ("d1", 7), ("d0", n)), Plan("d2", "d0", (Stage(0, n, (Assignment("d2", 1.0),)),))


def serve_cameras(graph, collapse, frames: int, read, dilation: float = 1.0, **options):
    """Door and yard at one frame a second on ``camera_plans``, d0-d1 at 0.08 Mbit/s following
    ``collapse`` from the first frame, on a cluster dilated ``dilation`` times: the run and what
    ``read(controller)`` reads once it is done."""
    spec = cluster({"d0-d1": 0.08, "d0-d2": 50.0, "d1-d2": 50.0})
    model = models.build("tiny", seed=0)
    schedules = {("d0", "d1"): collapse}
    with LocalCluster(spec, model="tiny", link_schedules=schedules, dilation=dilation) as local:
        ctl = local.controller
        run = serve_streams(
            ctl,
            CAMERAS,
            camera_plans(graph),
            [1.0, 1.0],
            frames,
            lambda x: model(x).detach(),
            restart_clock=True,  # the traces' t=0 as the first frame is due
            **options,
        )
        return run, read(ctl)


def test_streams_caught_by_a_collapse_under_one_lanes_plan_wait_it_out_and_lose_no_frame(graph):
    """Multi-stream serving (serving/streams.py) without an ``Adaptation`` has no rescue: no watcher
    re-plans a lane while its frames run, and a lane is re-planned only when a worker of its plan dies. Two cameras, each a lane: "door"
    on d0 computes units 0-6 on d1 and the rest on d0 (its input crosses d0 -> d1, the pool's 8 kB output
    crosses back), "yard" on d2 computes on d2 and sends its output to d0, both at one frame a second.
    d0-d1 carries 0.08 Mbit/s and falls to 0.002 at 1.9 s for 1.5 s: door's first band (from some 1.25 s)
    and its second input (queued on d0's radio behind the first, from some 1.23 s) are then both on the
    air on it, one each way. Both crawl through the collapse on their transfer and get through after it,
    whole; every frame of both streams comes back once, on its first attempt, exact, door's plan is
    still in force, yard's frames never wait for door's link, and no worker keeps anything."""
    t_drop, drop_len, frames = 1.9, 1.5, 3
    between = 32 * 8 * 8 * 4  # the pool's output, float32
    staged, _ = camera_plans(graph)
    collapse = step_drop(0.08, 0.002, t_drop, drop_len=drop_len, duration=3600.0)

    def read(ctl):
        logs = {(a, b): transfers(pieces(ctl, a, b)) for a, b in (("d0", "d1"), ("d1", "d0"))}
        return logs, ctl.plan_of("door"), leftovers(ctl, ctl.spec, lanes=("door", "yard"))

    run, (logs, in_force, left) = serve_cameras(graph, collapse, frames, read)
    for r in run.reports:
        assert (r.sent, r.completed, r.lost, r.wrong) == (frames, frames, 0, 0), r
    assert len(run.frames) == 2 * frames and all(f.attempts == 1 for f in run.frames), run.frames
    assert in_force == staged and run.events == [], run.events
    # each input and each band crossed d0-d1 once, whole: nothing was cut, nothing sent again
    inputs, bands = logs["d0", "d1"], logs["d1", "d0"]
    assert [sum(n for *_, n in t) for t in inputs] == [INPUT_BYTES] * frames, logs
    assert [sum(n for *_, n in t) for t in bands] == [between] * frames, logs
    # the first frame's band and the second's input on the air at the drop, through after the collapse
    first_input, second_input, _ = inputs
    assert first_input[-1][1] < t_drop, logs
    for caught_band in (bands[0], second_input):
        assert caught_band[0][0] < t_drop and caught_band[-1][1] > t_drop + drop_len, logs
    waited = [f for f in run.frames if f.stream == "door" and f.index < 2]
    assert all(f.latency_s > drop_len for f in waited), run.frames
    assert all(f.latency_s < 1.0 for f in run.frames if f.stream == "yard"), run.frames
    assert left == CLEAN


class ByStream(Planner):
    """Each stream's scripted planner, told apart by the source the stream's view names."""

    name = "by-stream"

    def __init__(self, by_source: dict[str, Scripted]):
        super().__init__()
        self.by_source = by_source

    def plan(self, snapshot, graph, objective):
        return self.by_source[snapshot.source].plan(snapshot, graph, objective)


@pytest.mark.parametrize("dilation", [1.0, 2.0])
def test_adaptive_streams_move_the_lane_whose_link_collapses_rescue_its_frames_and_leave_the_other(
    graph, dilation
):
    """The two cameras of the test above, served with an ``Adaptation``, and d0-d1 collapsing for good.
    Door's lane is re-planned onto d0 as soon as the live view sees the collapse (its planner keeps the
    staged plan while d0-d1 looks faster than 0.02 Mbit/s), once, within 2 s (tenths of a second on a quiet
    host). The frames sent on the staged plan until then (its first band and its second input on the
    air at the drop, 12 s and 48 s from there at 0.002 Mbit/s, and the third frame's input if it came
    before the swap) are rescued onto d0 once each and come back within seconds, as do the frames after
    them; yard's lane is never re-planned and its frames never wait. Every frame comes back once,
    exact, and no worker keeps anything. The same on a cluster emulated twice as slow (``deploy.py
    --streams`` dilates): the live view reads its telemetry on the emulated clock."""
    t_drop, frames, n = 1.9, 4, len(graph.units)
    staged, on_d2 = camera_plans(graph)
    on_d0 = chain(graph, ("d0", n))
    planner = ByStream(
        {"d0": Scripted([(staged, ("d0-d1",)), (on_d0, ())], 0.02), "d2": Scripted([(on_d2, ())], 0.02)}
    )
    collapse = step_drop(0.08, 0.002, t_drop, drop_len=3000.0, duration=3600.0)

    def read(ctl):
        in_force = {lane: ctl.plan_of(lane) for lane in ("door", "yard")}
        return in_force, leftovers(ctl, ctl.spec, lanes=("door", "yard"))

    run, (in_force, left) = serve_cameras(
        graph, collapse, frames, read, dilation, adaptation=Adaptation(planner, graph)
    )
    for r in run.reports:
        assert (r.sent, r.completed, r.lost, r.wrong) == (frames, frames, 0, 0), r
    assert len(run.frames) == 2 * frames, run.frames
    assert in_force == {"door": on_d0, "yard": on_d2}, in_force
    assert [e for _, e in run.events] == [f"door: re-planned ({on_d0.describe()})"], run.events
    door_frames = sorted((f for f in run.frames if f.stream == "door"), key=lambda f: f.index)
    # the first band and the second input on the air at the drop were rescued once each; the third
    # frame's input too if it was sent before the swap (it arrives 0.1 s after the drop); the last frame
    # ran on d0 from the start
    assert run.events[0][0] < t_drop + 2.0, run.events
    attempts = [f.attempts for f in door_frames]
    assert attempts[:2] == [2, 2] and attempts[2] in (1, 2) and attempts[3] == 1, run.frames
    assert all(f.latency_s < 6.0 for f in door_frames), run.frames
    assert all(f.latency_s < 1.0 and f.attempts == 1 for f in run.frames if f.stream == "yard"), run.frames
    assert left == CLEAN


def test_requests_queued_on_a_relays_radio_behind_one_caught_by_a_collapse_are_all_rescued_once(graph):
    """A chain d0 - d1 - d2, the sink beyond the relay, three requests entering at once on a plan that
    computes on d2: their inputs cross d0-d1 (50 Mbit/s) in milliseconds and wait on the relay's radio,
    which sends them on one at a time over d1-d2 at 0.08 Mbit/s (1.2 s each). d1-d2 falls to 0.002
    0.8 s in: the first input is on the air, the other two held by the relay for the collapsing link.
    All three are caught and rescued onto d0 once each; the relay lets go of the two it held (none of
    them whole over d1-d2: the rescue cancels them), the five requests come back once each, exact (each
    output crossing the relay once), and no worker keeps anything."""
    t_drop, n = 0.8, len(graph.units)
    spec = cluster({"d0-d1": 50.0, "d1-d2": 0.08}, sink="d2")
    assert spec.route("d0", "d2") == ["d0", "d1", "d2"]
    on_d2, on_d0 = chain(graph, ("d2", n), sink="d2"), chain(graph, ("d0", n), sink="d2")
    planner = Scripted([(on_d2, ("d0-d1", "d1-d2")), (on_d0, ())], floor_mbps=0.02)
    collapse = step_drop(0.08, 0.002, t_drop, drop_len=3000.0, duration=3600.0)
    records, summary, logs, left = run(
        spec, {("d1", "d2"): collapse}, planner, graph, requests=5, window=3, keep=transfers
    )
    assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["outputs_match"], summary
    assert len({r.rid for r in records}) == len(records) == 5, served(records)
    # the three inputs reached the relay, whole, before the drop; only the first went on from there
    inputs, outputs = logs["d0", "d1"][:3], logs["d0", "d1"][3:]
    assert all(sum(n for *_, n in t) == INPUT_BYTES and t[-1][1] < t_drop for t in inputs), logs
    first, *later = logs["d1", "d2"]
    assert caught(first, t_drop, INPUT_BYTES), logs
    assert all(t[0][0] > t_drop and sum(n for *_, n in t) < INPUT_BYTES for t in later), logs
    # after the rescue: each request's output from d0, once over each hop
    assert [sum(n for *_, n in t) for t in outputs] == [OUTPUT_BYTES] * 5, logs
    assert sum(sum(n for *_, n in t) == OUTPUT_BYTES for t in later) == 5, logs
    assert_the_first_three_rescued_once(records, summary, on_d0, t_drop)
    assert left == CLEAN


def test_a_live_comparison_with_rescue_restarts_a_request_caught_by_a_collapse_on_its_agents_new_plan(graph):
    """``evaluate.py compare --backend live --rescue``: the agent's request runs on d1, its 12 kB input
    crossing d0-d1 at 0.02 Mbit/s (4.9 s) until 2 s on the traces' clock, then 0.001. Planned just
    after the clock starts, the request is on the air at the drop whenever it began; serving's watcher
    sees the crawl, the agent's own planner re-plans on d0 and the request restarts there: rescued once,
    exact, long before its input would have arrived (over a minute more). Without a rescue it runs to
    its end on d1."""
    t_drop = 2.0
    spec = cluster({"d0-d1": 0.02, "d0-d2": 50.0})
    n = len(graph.units)
    on_d1, on_d0 = chain(graph, ("d1", n)), chain(graph, ("d0", n))
    planner = Scripted([(on_d1, ("d0-d1",)), (on_d0, ())], floor_mbps=0.01)
    collapse = step_drop(0.02, 0.001, t_drop, drop_len=3000.0, duration=3600.0)
    world = NetworkState(spec, {link_key("d0", "d1"): collapse, link_key("d0", "d2"): constant(50.0)})
    model, objective = models.build("tiny", seed=0), Objective()
    rescue = LiveRescue({"agent": planner}, graph, objective)
    with live_session(spec, "tiny", model, world, rescue=rescue) as session:
        (record,) = run_comparison({"agent": planner}, at_zero(world), 1, graph, objective, session.execute)
        log = first_transfer(pieces(session.controller, "d0", "d1"))
    assert record.plan == on_d1.to_json() and record.outputs_match, record  # the plan it was dealt
    assert record.time_s < t_drop and caught(log, t_drop, INPUT_BYTES), (record, log)
    assert record.rescues == 1 and record.latency_s < t_drop + 4.0, record
    plans = [plan for _, plan in planner.chosen]
    assert plans[0] == on_d1 and plans[-1] == on_d0, planner.chosen  # restarted on its own planner's plan


def test_a_live_comparison_runs_every_agents_request_on_the_same_seconds_of_the_traces(graph):
    """Two agents deal the same plan, on d1 (its 12 kB input over d0-d1: 1 s at 0.1 Mbit/s), for a request
    at t=0; the link falls to 0.005 Mbit/s at 1.5 s. The second agent's request runs after the first's
    on the wall clock, yet from t=0 on the traces' clock as well: both inputs are through before the
    fall, in the same time (had it started where the first left the clock, its input would meet the fall
    and take over ten seconds more). The unsplit model's output for the input takes 2 s here (a large
    model's takes a second or more): it is ready before the clock starts."""
    spec = cluster({"d0-d1": 0.1, "d0-d2": 50.0})
    on_d1 = chain(graph, ("d1", len(graph.units)))
    fall = step_drop(0.1, 0.005, 1.5, drop_len=3000.0, duration=3600.0)
    world = NetworkState(spec, {link_key("d0", "d1"): fall, link_key("d0", "d2"): constant(50.0)})
    planners = {name: Scripted([(on_d1, ())], floor_mbps=0.0) for name in ("first", "second")}
    tiny, objective = models.build("tiny", seed=0), Objective()

    def slow_reference(x: torch.Tensor) -> torch.Tensor:
        time.sleep(2.0)
        return tiny(x)

    with live_session(spec, "tiny", slow_reference, world) as session:
        first, second = run_comparison(planners, at_zero(world), 1, graph, objective, session.execute)
    assert first.outputs_match and second.outputs_match, (first, second)
    assert first.latency_s < 1.45 and second.latency_s < 1.45, (first, second)
    assert second.latency_s == pytest.approx(first.latency_s, abs=0.2), (first, second)
