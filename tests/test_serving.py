"""Live serving: nothing lost or duplicated through worker kills, hot swaps, and planner failures."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

import deploy
from agents import make_planner
from agents.base import Planner
from agents.serving import Decider, RequestLog, ServeOptions, Tally, moved, serve
from env.cost_model import Objective
from env.network import NetworkState
from runtime import models
from runtime.cluster import LocalCluster
from runtime.graph import LayerGraph
from runtime.spec import load_cluster

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "clusters"
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    spec = load_cluster(CONFIGS / "tiny3.yaml")
    model = models.build("tiny", seed=0)
    graph = LayerGraph.from_model(model, models.input_shape("tiny"), "tiny")
    return spec, model, graph


class Broken(Planner):
    name = "broken"

    def plan(self, snapshot, graph, objective):
        raise RuntimeError("policy exploded")


def test_chaos_loses_nothing(setup):
    spec, model, graph = setup
    decide = Decider(make_planner("deepslicing", graph=graph, spec=spec), graph, Objective())
    options = ServeOptions(requests=10, replan_every=3, chaos=[(3, "kill", "d1"), (6, "restart", "d1")])
    with LocalCluster(spec, model="tiny", controller_options={"dead_after_s": 1.0}) as cluster:
        report = serve(cluster, model, decide, options, agent="deepslicing")
    summary = report.summary()
    assert summary["completed"] == 10 and summary["lost"] == 0 and summary["duplicated"] == 0
    assert summary["outputs_match"] is True
    assert summary["worker_kills"] == 1 and summary["replans"] >= 1


def test_static_never_replans_and_broken_planner_falls_back(setup):
    spec, model, graph = setup
    decide = Decider(Broken(), graph, Objective(), fallback=make_planner("local"))
    with LocalCluster(spec, model="tiny") as cluster:
        report = serve(cluster, model, decide, ServeOptions(requests=4, static=True), agent="broken")
    summary = report.summary()
    assert summary["replans"] == 0 and summary["completed"] == 4 and summary["outputs_match"]
    assert decide.fallbacks == 1  # planned once, by the fallback


def test_moved_detects_what_matters(setup):
    spec, _, graph = setup
    snap = NetworkState.static(spec).snapshot(0.0)
    plan = make_planner("local").plan(snap, graph, Objective())  # everything on the source d0, sink d2
    slower_link = replace(snap, link_mbps={**snap.link_mbps, ("d0", "d2"): 10.0})
    assert moved(plan, snap, slower_link, 0.3)
    unused_link = replace(snap, link_mbps={**snap.link_mbps, ("d1", "d2"): 10.0})
    assert not moved(plan, snap, unused_link, 0.3)
    assert moved(plan, snap, replace(snap, available=frozenset({"d0", "d2"})), 0.3)
    assert moved(plan, snap, replace(snap, speed={**snap.speed, "d0": 0.5}), 0.3)


def test_deploy_cli_reports_bad_input(capsys):
    assert deploy.main(["--cluster", "nope.yaml", "--model", "tiny"]) == 2
    assert "nope.yaml" in capsys.readouterr().out


def test_tally_counts_duplicates_and_mismatches_without_keeping_records():
    tally = Tally()
    base = 2**51  # the controller's ids start at a random 52-bit number
    for rid, match in ((base + 5, True), (base + 70_000, True), (base - 3, True), (base + 5, False)):
        tally.add(RequestLog(0, rid, 0.0, 1.5, 2.0, match, "{}", False))
    assert tally.completed == 3 and tally.duplicated == 1 and tally.mismatched == 1
    assert list(tally.latency_s) == [1.5] * 4
    assert len(tally._seen) < 70_000 // 8 + 3 * 4096  # a bit per request id, not an object per record
