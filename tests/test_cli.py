"""cli/: named scenarios as defaults that flags override, shared flags, and the worlds they describe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import deploy
import evaluate
from bench.serving import collapse_world
from cli.scenarios import SCENARIOS, ScenarioError, load_scenario
from runtime.spec import load_cluster

ROOT = Path(__file__).resolve().parents[1]
TINY3 = ROOT / "configs" / "clusters" / "tiny3.yaml"


def test_every_shipped_scenario_loads_and_names_files_that_exist():
    names = sorted(p.stem for p in SCENARIOS.glob("*.yaml"))
    assert {"demo", "collapse"} <= set(names)
    for name in names:
        scenario = load_scenario(name)
        assert scenario.cluster is None or Path(scenario.cluster).is_file()
        policies = [a.split(":", 1)[1] for a in scenario.agents or [] if ":" in a]
        assert all(Path(p).is_file() for p in policies)


def test_the_demo_is_a_scenario_whose_options_flags_override():
    demo = deploy.parse(["--demo"])
    assert Path(demo.cluster) == ROOT / "configs" / "clusters" / "mesh0.yaml"
    assert demo.model == "vgg16_bn" and demo.requests == 8 and demo.spec_cap_mbps == 15
    assert demo.traces == "synthetic"
    policy = ROOT / "agents" / "pretrained" / "vgg16_mesh.zip"
    assert demo.agents == f"ppo:{policy},optimal,disnet,deepslicing"
    shorter = deploy.parse(["--demo", "--requests", "2", "--agent", "optimal"])
    assert shorter.requests == 2 and shorter.agents == "optimal" and shorter.spec_cap_mbps == 15


def test_deploy_and_the_serving_bench_collapse_the_same_world():
    spec = load_cluster(TINY3)
    moved = deploy.world_for(
        spec, deploy.parse(["--cluster", str(TINY3), "--collapse", "--collapse-at", "40"])
    )
    bench = collapse_world(spec, drop_at=40.0)
    for link in spec.links:
        ours, theirs = moved.link_schedule(link.a, link.b), bench.link_schedule(link.a, link.b)
        assert [ours.bandwidth_at(t) for t in (39.5, 40.5, 69.5, 70.5)] == [20, 2, 2, 20]
        assert all(ours.bandwidth_at(t) == theirs.bandwidth_at(t) for t in range(0, 200, 3))
    as_written = deploy.world_for(spec, deploy.parse(["--cluster", str(TINY3), "--collapse"]))
    assert as_written.link_schedule("d0", "d1").bandwidth_at(20.5) == 2  # the scenario drops at 20 s


def test_the_spec_cap_and_the_replayed_trace_cap_are_separate(tmp_path):
    recorded = tmp_path / "walk.csv"
    recorded.write_text("time_s,mbps\n0,30\n1,4\n2,12\n3,30\n")
    argv = ["--cluster", str(TINY3), "--traces", str(recorded), "--trace-mode", "replay"]
    args = deploy.parse([*argv, "--bandwidth-cap", "20", "--trace-cap", "10"])
    spec = load_cluster(TINY3, bandwidth_cap=args.spec_cap_mbps)
    assert {link.mbps for link in spec.links} == {20}
    trace = deploy.world_for(spec, args).link_schedule("d0", "d1")
    assert [trace.bandwidth_at(t) for t in (0.5, 1.5, 2.5, 3.5)] == [10, 4, 10, 10]


def test_trace_paths_in_a_scenario_are_read_from_its_folder(tmp_path, monkeypatch):
    (tmp_path / "walk.csv").write_text("time_s,mbps\n0,30\n1,4\n2,12\n3,30\n")
    replayed = tmp_path / "replayed.yaml"
    replayed.write_text(
        "dynamics:\n  links:\n    default: {kind: file, path: walk.csv, random_offset: false}\n"
        "  scale_to_spec: false\n"
    )
    sampled = tmp_path / "sampled.yaml"
    sampled.write_text("traces: walk.csv\n")
    monkeypatch.chdir(ROOT)  # not the scenarios' folder
    spec = load_cluster(TINY3)
    args = deploy.parse(["--cluster", str(TINY3), "--scenario", str(replayed)])
    trace = deploy.world_for(spec, args).link_schedule("d0", "d1")
    assert [trace.bandwidth_at(t) for t in (0.5, 1.5, 2.5)] == [30, 4, 12]
    args = deploy.parse(["--cluster", str(TINY3), "--scenario", str(sampled)])
    assert Path(args.traces) == (tmp_path / "walk.csv").resolve()
    assert deploy.world_for(spec, args).link_schedule("d0", "d1").mean_mbps(0, 4) == pytest.approx(50)


def test_evaluate_takes_a_scenario_file_in_either_subcommand(tmp_path):
    scenario = tmp_path / "small.yaml"
    scenario.write_text(
        f"cluster: {TINY3}\nmodel: tiny\nagents: [local, optimal]\nrequests: 2\nspec_cap_mbps: 10\n"
    )
    out = tmp_path / "result.json"
    assert (
        evaluate.main(["compare", "--scenario", str(scenario), "--agents", "local", "--json", str(out)]) == 0
    )
    report = json.loads(out.read_text())
    assert report["model"] == "tiny" and report["spec_cap_mbps"] == 10
    assert set(report["agents"]) == {"local"}  # the flag won over the scenario's agents
    assert len([r for r in report["records"] if r["agent"] == "local"]) == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("requests: 0\n", "requests"),
        ("clusterr: x.yaml\n", "clusterr"),
        ("traces: synthetic\ndynamics: {}\n", "choose one"),
        ("dynamics: {links: {default: {kind: nosuch}}}\n", "dynamics"),
        ("[1, 2\n", "not YAML"),
    ],
)
def test_a_bad_scenario_is_a_one_line_usage_error_naming_the_file(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=message):
        load_scenario(str(path))
    with pytest.raises(SystemExit):
        deploy.parse(["--scenario", str(path)])
    assert "bad.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["calibrate", "--scenario", "no-such-scenario"])
    assert "no scenario 'no-such-scenario'" in capsys.readouterr().err


def test_shared_flags_reject_bad_numbers_in_every_script(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["compare", "--cluster", str(TINY3), "--requests", "0"])
    assert "must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["calibrate", "--cluster", str(TINY3), "--dilation", "0.5"])
    assert "must be a number >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        deploy.parse(["--cluster", str(TINY3), "--bandwidth-cap", "0"])
    assert "must be > 0" in capsys.readouterr().err
