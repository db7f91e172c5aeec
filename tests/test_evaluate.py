"""evaluate.py compare: the JSON interface, both backends, and clean errors."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

import evaluate
from agents import PlannerError
from agents.baselines import DeepSlicing
from env.cost_model import Objective
from serving.comparison_report import print_summary, summarize
from serving.evaluation import RequestRecord, SimExecutor

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = str(ROOT / "configs" / "clusters" / "tiny3.yaml")
POLICIES = ROOT / "agents" / "pretrained"
FIVE_DEVICES = ROOT / "tests" / "data" / "five.yaml"  # a small static cluster
KEYS = {
    "latency_mean_s",
    "latency_p50_s",
    "latency_p95_s",
    "energy_mean_j",
    "decision_time_mean_s",
    "outputs_match",
    "plan",
    "fallbacks",
    "failed_requests",
    "regret_mean",
    "bound_gap_median",
    "bound_gap_p95",
}


def run(tmp_path, *extra):
    out = tmp_path / "result.json"
    code = evaluate.main(["compare", "--cluster", CLUSTER, "--model", "tiny", "--json", str(out), *extra])
    return code, (json.loads(out.read_text()) if out.exists() else None)


def test_sim_compare_writes_the_documented_json(tmp_path):
    code, report = run(
        tmp_path, "--agents", "optimal,local,deepslicing", "--requests", "3", "--bandwidth-cap", "10"
    )
    assert code == 0
    assert report["model"] == "tiny" and report["backend"] == "sim" and report["spec_cap_mbps"] == 10
    assert set(report["agents"]) == {"optimal", "local", "deepslicing"}
    for summary in report["agents"].values():
        assert KEYS <= set(summary)
        assert summary["outputs_match"] is None  # nothing is computed in the simulator
    best = report["agents"]["optimal"]["latency_mean_s"]
    assert all(best <= s["latency_mean_s"] + 1e-12 for s in report["agents"].values())
    ratio = report["latency_ratio"]["optimal"]["local"]
    assert ratio == report["agents"]["local"]["latency_mean_s"] / best
    assert all(s["regret_mean"] is None for s in report["agents"].values())  # no clairvoyant asked for
    assert report["agents"]["local"]["fallbacks"] == 0


def test_sim_compare_with_failures_reports_regret_against_the_clairvoyant(tmp_path, capsys):
    agents = "clairvoyant,hindsight,local"
    code, report = run(tmp_path, "--agents", agents, "--requests", "2", "--failures", "3")
    assert code == 0 and report["failures_per_min"] == 3
    agents = report["agents"]
    assert agents["clairvoyant"]["regret_mean"] == 0.0
    assert agents["hindsight"]["regret_mean"] >= 0.0  # the ceiling weighs its plans too
    records = {(r["agent"], r["index"]): r["latency_s"] for r in report["records"]}
    expected = sum(records[("local", i)] / records[("clairvoyant", i)] - 1 for i in range(2)) / 2
    assert agents["local"]["regret_mean"] == expected > 0
    assert "regret" in capsys.readouterr().out


def record(agent, index, latency, world_time=0.0, fallback=None, gap=None):
    return RequestRecord(agent, index, world_time, latency, 1.0, 0.0, None, "{}", fallback, gap)


def test_summaries_count_fallbacks_and_match_regret_to_the_same_request_of_the_same_world():
    records = [  # two worlds, requests at the same index and time: regret must not mix them up
        record("clairvoyant", 0, 1.0),
        record("ppo", 0, 1.5, fallback="cluster too large"),
        record("optimal", 0, 1.2, gap=0.1),
        record("clairvoyant", 0, 2.0),
        record("ppo", 0, 2.0),
        record("optimal", 0, 3.0, gap=0.3),
    ]
    summary = summarize(records)
    assert summary["ppo"]["fallbacks"] == 1 and summary["optimal"]["fallbacks"] == 0
    assert summary["ppo"]["regret_mean"] == (0.5 + 0.0) / 2
    assert summary["optimal"]["regret_mean"] == (0.2 + 0.5) / 2
    assert summary["optimal"]["bound_gap_median"] == 0.2 and summary["ppo"]["bound_gap_median"] is None


def test_regret_is_on_the_objective_the_clairvoyant_minimised():
    records = [
        RequestRecord("clairvoyant", 0, 0.0, 2.0, 1.0, 0.0, None, "{}"),
        RequestRecord("ppo", 0, 0.0, 1.0, 3.0, 0.0, None, "{}"),  # faster, on three times the energy
    ]
    assert summarize(records)["ppo"]["regret_mean"] == -0.5
    assert summarize(records, Objective("energy"))["ppo"]["regret_mean"] == 2.0
    assert summarize(records, Objective("weighted", 1.0))["ppo"]["regret_mean"] == 4.0 / 3.0 - 1.0


def test_sim_compare_on_energy_reports_regret_on_energy(tmp_path):
    code, report = run(
        tmp_path, "--agents", "clairvoyant,deepslicing", "--requests", "2", "--objective", "energy"
    )
    assert code == 0
    energy = {(r["agent"], r["index"]): r["energy_j"] for r in report["records"]}
    expected = sum(energy[("deepslicing", i)] / energy[("clairvoyant", i)] - 1 for i in range(2)) / 2
    assert report["agents"]["deepslicing"]["regret_mean"] == expected >= 0


def test_live_compare_checks_every_output_and_reports_fidelity(tmp_path):
    """Served with serving's rescue watching (``--rescue``) on a cluster whose links never move: nothing
    to rescue, every output exact."""
    agents = ("--agents", "deepslicing,local", "--requests", "2")
    code, report = run(tmp_path, *agents, "--backend", "live", "--dilation", "1", "--rescue")
    assert code == 0
    assert all(s["outputs_match"] is True and s["rescues"] == 0 for s in report["agents"].values())
    assert all(s["latency_mean_s"] > 0 and s["energy_mean_j"] > 0 for s in report["agents"].values())
    assert report["dilation"] == 1 and report["cost"] == "profile"
    assert report["fidelity"] and report["fidelity_min"] == min(report["fidelity"].values())
    assert all(0 < f <= 1 for f in report["fidelity"].values())


def test_bad_input_is_a_message_not_a_traceback(tmp_path, capsys):
    code = evaluate.main(["compare", "--cluster", str(tmp_path / "missing.yaml"), "--model", "tiny"])
    assert code == 2
    assert "missing.yaml" in capsys.readouterr().out
    code, _ = run(tmp_path, "--agents", "optimal,nosuch")
    assert code == 2
    assert "unknown planner 'nosuch'" in capsys.readouterr().out
    code, _ = run(tmp_path, "--failures", "-1")
    assert code == 2 and "rate_per_min" in capsys.readouterr().out


def test_a_policy_for_another_model_or_a_larger_cluster_is_an_error_not_a_fallback(tmp_path, capsys):
    for policy in ("vgg16_mesh.zip", "vgg16_any.zip"):  # a fixed-slot and an any-cluster policy
        code, report = run(tmp_path, "--agents", f"local,ppo:{POLICIES / policy}", "--requests", "1")
        assert code == 2 and report is None
        assert f"policy {policy} was trained for vgg16_bn, not tiny" in capsys.readouterr().out


def test_the_clairvoyant_is_the_ceiling_on_a_small_static_cluster(tmp_path):
    """Without traces the future is the snapshot: no online planner may beat the clairvoyant (its search
    once left a polished policy 10.8% and the robust optimiser 1.6% below it here)."""
    polished = f"ppo-top3-polish:{POLICIES / 'vgg16_any.zip'}"
    out = tmp_path / "five.json"
    code = evaluate.main(
        [
            "compare",
            "--cluster",
            str(FIVE_DEVICES),
            "--model",
            "vgg16_bn",
            "--cost",
            "flops",
            "--requests",
            "1",
            "--agents",
            f"clairvoyant,optimal,snapshot-optimal,{polished}",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    agents = json.loads(out.read_text())["agents"]
    assert all(s["regret_mean"] >= 0 for s in agents.values()), {
        a: s["regret_mean"] for a, s in agents.items()
    }


def test_the_table_names_every_agent_in_full_and_says_which_way_the_ratios_go():
    bare, polished = "ppo:agents/pretrained/vgg16_any.zip", "ppo-top3-polish:agents/pretrained/vgg16_any.zip"
    records = [record(bare, 0, 2.0), record(polished, 0, 1.0), record("local", 0, 4.0)]
    console = Console(width=140, record=True)
    print_summary(summarize(records), console, "title")
    text = console.export_text()
    assert "ppo:vgg16_any.zip" in text and "ppo-top3-polish:vgg16_any.zip" in text and "…" not in text
    assert "fastest: ppo-top3-polish:vgg16_any.zip; the others' mean latency and energy over its: " in text
    assert "ppo:vgg16_any.zip 2.00x / 1.00x" in text


def test_an_interrupted_comparison_reports_the_requests_every_agent_finished(tmp_path, monkeypatch):
    execute = SimExecutor.__call__

    def interrupted_on_the_third_request(self, agent, index, t, plan):
        if index == 2 and agent == "deepslicing":  # the other agent has run request 2 already
            raise KeyboardInterrupt
        return execute(self, agent, index, t, plan)

    monkeypatch.setattr(SimExecutor, "__call__", interrupted_on_the_third_request)
    code, report = run(tmp_path, "--agents", "local,deepslicing", "--requests", "5")
    assert code == 130
    assert report["interrupted_after_requests"] == 2
    assert {agent: s["requests"] for agent, s in report["agents"].items()} == {"local": 2, "deepslicing": 2}
    assert sorted((r["agent"], r["index"]) for r in report["records"]) == [
        ("deepslicing", 0),
        ("deepslicing", 1),
        ("local", 0),
        ("local", 1),
    ]


def test_with_failures_no_agent_beats_the_clairvoyant_on_any_request(tmp_path):
    """It weighs every other agent's plan for the request and prices a plan that loses a device as the
    comparison charges it (the retry on top): before, the robust optimiser beat it by 14% here."""
    out = tmp_path / "result.json"
    argv = [
        "compare",
        "--cluster",
        str(FIVE_DEVICES),
        "--model",
        "tiny",
        "--failures",
        "6",
        "--json",
        str(out),
    ]
    agents = "clairvoyant,optimal,deepslicing,disnet"
    assert evaluate.main([*argv, "--agents", agents, "--requests", "6"]) == 0
    records = json.loads(out.read_text())["records"]
    ceiling = {r["index"]: r["latency_s"] for r in records if r["agent"] == "clairvoyant"}
    assert any(r["failed"] for r in records)  # failures happened, or this test proves nothing
    assert all(r["latency_s"] >= ceiling[r["index"]] - 1e-12 for r in records)


def test_a_planner_error_says_which_agent_and_request_it_stopped_at(tmp_path, capsys, monkeypatch):
    plan, calls = DeepSlicing.plan, []

    def fails_on_the_second_request(self, snapshot, graph, objective):
        calls.append(snapshot.time)
        if len(calls) == 2:
            raise PlannerError("deepslicing: a bug")
        return plan(self, snapshot, graph, objective)

    monkeypatch.setattr(DeepSlicing, "plan", fails_on_the_second_request)
    code, _ = run(tmp_path, "--agents", "local,deepslicing", "--requests", "3")
    assert code != 0
    assert (
        f"error: deepslicing, request 1 (t = {calls[1]:g} s): deepslicing: a bug" in capsys.readouterr().out
    )
