"""cli/: named scenarios as defaults that flags override, shared flags, and the worlds they describe."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import deploy
import evaluate
from agents import PlannerError
from agents.baselines import DeepSlicing
from bench import generalization, microsplit, staged
from bench import streams as streams_bench
from bench.serving import collapse_world
from cli.scenarios import SCENARIOS, ScenarioError, load_scenario, parse_with_scenario
from env.trace_sets import held_out_sets, trained_on, training_trace_paths
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
    with pytest.raises(SystemExit):
        evaluate.main(["compare", "--cluster", str(TINY3), "--dilation", "3"])  # the sim emulates nothing
    assert "--dilation and --pacing are for the live backend" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        streams_bench.parse(["--dilation", "0.5"])
    assert "must be a number >= 1" in capsys.readouterr().err
    for flag in ("--gap-s", "--warmup-s", "--energy-weight"):  # time running backwards, a negative weight
        with pytest.raises(SystemExit):
            evaluate.main(["compare", "--cluster", str(TINY3), flag, "-1"])
        assert f"{flag}: must be a number >= 0, not -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        deploy.parse(["--cluster", str(TINY3), "--energy-weight", "-1", "--objective", "weighted"])
    assert "must be a number >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # numpy's generators take no negative seed (a world to draw needs one)
        evaluate.main(["compare", "--cluster", str(TINY3), "--seed", "-1", "--traces", "synthetic"])
    assert "--seed: must be >= 0, not -1" in capsys.readouterr().err


def test_each_speed_bench_refuses_the_other_kind_of_policy_in_one_line(capsys):
    pretrained = ROOT / "agents" / "pretrained"
    assert microsplit.main(["--policy", str(pretrained / "vgg16_any.zip")]) == 2
    assert "format 'disnet-staged/1', expected 'disnet-ppo/1'" in capsys.readouterr().out
    assert staged.main(["--policy", str(pretrained / "vgg16_mesh.zip")]) == 2
    assert "format 'disnet-ppo/1', expected 'disnet-staged/1'" in capsys.readouterr().out


def test_an_energy_weight_outside_the_weighted_objective_is_refused_not_ignored(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["compare", "--cluster", str(TINY3), "--energy-weight", "0.5"])
    assert "--energy-weight applies to --objective weighted (not latency)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        deploy.parse(["--cluster", str(TINY3), "--energy-weight", "0.5", "--objective", "energy"])
    assert "applies to --objective weighted (not energy)" in capsys.readouterr().err
    weighted = ["--energy-weight", "0.5", "--objective", "weighted"]
    assert deploy.parse(["--cluster", str(TINY3), *weighted]).energy_weight == 0.5


def test_output_paths_of_the_wrong_kind_are_refused_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "taken.json"
    a_file.write_text("{}")
    with pytest.raises(SystemExit):
        evaluate.main(["compare", "--cluster", str(TINY3), "--json", str(tmp_path)])
    assert "is a folder, not a file to write" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["compare", "--cluster", str(TINY3), "--plots", str(a_file)])
    assert "is a file, not a folder to write into" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        deploy.parse(["--cluster", str(TINY3), "--out", str(a_file / "metrics")])
    assert "a parent of it is a file" in capsys.readouterr().err


@pytest.mark.parametrize("output", ["--json", "--plots"])
def test_an_output_the_system_refuses_is_one_line_after_the_table(tmp_path, monkeypatch, capsys, output):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    monkeypatch.setattr(evaluate, "plot", full_disk)
    where = tmp_path / "out"
    argv = ["compare", "--cluster", str(TINY3), "--model", "tiny", "--agents", "local", "--requests", "1"]
    assert evaluate.main([*argv, output, str(where)]) == 2
    printed = capsys.readouterr().out
    assert "local" in printed  # the table came first
    assert f"error: cannot write {where}: No space left on device" in printed.replace("\n", "")


def test_agent_lists_drop_blanks_around_names():
    args = deploy.parse(["--cluster", str(TINY3), "--agents", "optimal, disnet ,local,"])
    assert args.agents == "optimal,disnet,local"


def test_deploy_dilates_only_the_streams_it_serves(capsys):
    assert deploy.parse(["--cluster", str(TINY3), "--streams", "s.yaml", "--dilation", "2"]).dilation == 2
    assert deploy.parse(["--cluster", str(TINY3), "--streams", "s.yaml"]).dilation is None  # automatic
    with pytest.raises(SystemExit):
        deploy.parse(["--cluster", str(TINY3), "--dilation", "2"])
    assert "--dilation applies to --streams only" in capsys.readouterr().err


def _options(args) -> dict:
    """A parse's options, without what only says where they came from."""
    return {k: v for k, v in vars(args).items() if k not in ("scenario", "dynamics_dir")}


def _evaluate_parse(argv: list[str]):
    parser, subcommands = evaluate.build_parser()
    return parse_with_scenario(parser, argv, subcommands)


@pytest.mark.parametrize(
    "parse, command, text, flags",
    [
        (
            deploy.parse,
            [],
            "cluster: c.yaml\nseed: 7\nduration: 30\nfps: 2\nstatic: true\nchaos: true\nreplan_every: 4\n"
            "replan_margin: 'off'\nobjective: weighted\nenergy_weight: 0.5\ncost: flops\nprofile: p.json\n"
            "out: runs/x\njson: x.json\ncollapse_at: 12.5\ntrace_cap_mbps: 9\n",
            "--cluster {d}/c.yaml --seed 7 --duration 30 --fps 2 --static --chaos --replan-every 4 "
            "--replan-margin off --objective weighted --energy-weight 0.5 --cost flops --profile {d}/p.json "
            "--out runs/x --json x.json --collapse-at 12.5 --trace-cap 9",
        ),
        (
            _evaluate_parse,
            ["compare"],
            "cluster: c.yaml\nagents: [local, optimal]\nbackend: live\nrequests: 3\ngap_s: 1.5\n"
            "warmup_s: 4\nfailures: 0.2\nplots: plots\ndilation: 2\nspec_cap_mbps: 12\n",
            "compare --cluster {d}/c.yaml --agents local,optimal --backend live --requests 3 --gap-s 1.5 "
            "--warmup-s 4 --failures 0.2 --plots plots --dilation 2 --bandwidth-cap 12",
        ),
        (
            _evaluate_parse,
            ["calibrate"],
            "cluster: c.yaml\nplans: 5\nmax_devices: 2\nmax_stages: 3\nnetwork: kernel\nmodel: tiny\n",
            "calibrate --cluster {d}/c.yaml --plans 5 --max-devices 2 --max-stages 3 --network kernel "
            "--model tiny",
        ),
    ],
    ids=["deploy", "compare", "calibrate"],
)
def test_a_scenario_sets_any_option_a_flag_sets_and_flags_still_win(tmp_path, parse, command, text, flags):
    """Options of every kind (shared and the script's own: numbers, choices, switches, files read from the
    scenario's folder, outputs from the working directory) mean in a file what their flags mean."""
    scenario = tmp_path / "all.yaml"
    scenario.write_text(text)
    from_file = parse([*command, "--scenario", str(scenario)])
    from_flags = parse(flags.format(d=tmp_path.resolve()).split())
    assert _options(from_file) == _options(from_flags)
    overridden = parse([*command, "--scenario", str(scenario), "--seed", "11", "--cluster", "other.yaml"])
    assert _options(overridden) == _options(from_flags) | {"seed": 11, "cluster": "other.yaml"}


@pytest.mark.parametrize(
    "command, text, message",
    [
        ([], "window: 0\n", "window: Value error, must be >= 1, not 0"),
        ([], "static: 1\n", "static: Value error, expected true or false"),
        ([], "replan_margin: off\n", "replan_margin: Value error, expected a value, not the boolean False"),
        (
            [],
            "fps: 2\narrival_every: 0.5\n",
            "(top level): Value error, arrival_every and fps exclude each other",
        ),
        ([], "windoww: 2\n", "windoww: Extra inputs are not permitted"),
        (["compare"], "backend: gpu\n", "backend: Value error, invalid choice 'gpu' (choose from sim, live)"),
        (["compare"], "gap_s: soon\n", "gap_s: Value error, 'soon' is not a number"),
        (["compare"], "gap_s: -3\n", "gap_s: Value error, must be a number >= 0, not -3"),
        (["calibrate"], "plans: 0\n", "plans: Value error, must be >= 1, not 0"),
        (["calibrate"], "agents: [local]\n", "agents: Extra inputs are not permitted"),  # compare's only
    ],
)
def test_a_bad_option_in_a_scenario_is_a_usage_error_naming_the_file_and_the_field(
    tmp_path, capsys, command, text, message
):
    scenario = tmp_path / "bad.yaml"
    scenario.write_text(text)
    argv = [*command, "--cluster", str(TINY3), "--scenario", str(scenario)]
    with pytest.raises(SystemExit):
        _evaluate_parse(argv) if command else deploy.parse(argv)
    assert f"{scenario}: {message}" in capsys.readouterr().err


def test_the_generalization_bench_refuses_bad_options_and_never_claims_an_unchecked_target(tmp_path, capsys):
    for argv, message in (
        (["--requests", "0"], "--requests: must be >= 1, not 0"),
        (["--sizes", "10,1"], "--sizes: a mesh needs at least 2 devices"),
        (["--traces-dir", str(tmp_path / "none")], "is not a folder"),
        (["--failures", "sometimes"], "invalid choice: 'sometimes'"),
        (["--agents", "optimal, nosuch"], None),  # parses; the name fails before the first case
    ):
        if message is None:
            assert generalization.parse_args(argv).agents == ["optimal", "nosuch"]
            continue
        with pytest.raises(SystemExit):
            generalization.parse_args(argv)
        assert message in capsys.readouterr().err
    miss = ["n10 mahimahi 15M: local (0.9x the optimiser)"]
    assert generalization.verdict(["local", "disnet"], []) == "not checked (optimal was not run)"
    assert generalization.verdict(["optimal", "ppo:x.zip"], []) == "not checked (no baseline was run)"
    assert generalization.verdict(["optimal", "local"], []) == "met in every case"
    assert generalization.verdict(["optimal", "local"], miss).startswith("missed in 1: n10 mahimahi")


def test_the_generalization_bench_checks_a_policys_per_case_target():
    """1.03x the optimiser without failures, 1.0x with, and below every baseline that ran."""

    def case(failures: bool, ppo: float, local: float) -> dict:
        agents = {"optimal": 2.0, "ppo:p.zip": ppo, "local": local}
        return {
            "devices": 10,
            "traces": "fcc",
            "cap_mbps": 15.0,
            "failures": failures,
            "agents": {n: {"latency_mean_s": s, "vs_optimal": s / 2.0} for n, s in agents.items()},
        }

    met = [case(False, 2.06, 3.0), case(True, 2.0, 3.0)]
    assert generalization.policy_misses(met, "ppo:p.zip") == []
    missed = [case(False, 2.08, 3.0), case(True, 2.02, 3.0), case(False, 2.0, 1.9)]
    assert generalization.policy_misses(missed, "ppo:p.zip") == [
        "n10 fcc 15M: 1.040x the optimiser",
        "n10 fcc 15M F: 1.010x the optimiser",
        "n10 fcc 15M: 1.000x the optimiser, not below local",
    ]


def test_a_cases_ratio_to_the_optimiser_comes_with_the_interval_its_requests_allow():
    """60 requests of about 2 s: one request through a long outage (80 s) makes the ratio 1.65, but draws
    of the same requests without it are near 1, so the interval reaches down there; a steady 5% lead is
    a narrow interval around 1.05."""
    rng = np.random.default_rng(1)
    reference = rng.uniform(1.5, 2.5, 60)
    steady = reference * 1.05
    unlucky = reference.copy()
    unlucky[10] = 80.0
    assert generalization.ratio_interval(reference, reference) == [1.0, 1.0]
    lo, hi = generalization.ratio_interval(steady, reference)
    assert lo == pytest.approx(1.05) and hi == pytest.approx(1.05)
    lo, hi = generalization.ratio_interval(unlucky, reference)
    point = unlucky.mean() / reference.mean()
    assert lo < 1.03 < 1.5 < point < hi
    assert generalization.ratio_interval(unlucky, reference) == [lo, hi]  # the same draws every run
    noisy = reference * rng.uniform(0.9, 1.2, 60)
    lo, hi = generalization.ratio_interval(noisy, reference)
    assert lo < noisy.mean() / reference.mean() < hi and hi - lo < 0.1


@pytest.mark.parametrize(
    "agents", ["local,optimla", "local,clairvoyant", f"ppo:{ROOT / 'agents/pretrained/vgg16_any.zip'}"]
)
def test_deploy_checks_every_planner_before_a_worker_starts(monkeypatch, tmp_path, capsys, agents):
    """A bad name, the evaluation-only clairvoyant, or a policy for another model: an error before the
    cluster starts (not after serving the agents before it, nor a policy quietly served by the optimiser)."""

    def no_cluster(*args, **kwargs):
        raise AssertionError("the cluster started")

    monkeypatch.setattr(deploy, "LocalCluster", no_cluster)
    argv = ["--cluster", str(TINY3), "--model", "tiny", "--cost", "flops", "--agents", agents]
    assert deploy.main([*argv, "--out", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().out


def test_deploy_refuses_what_it_cannot_do_before_a_worker_starts(monkeypatch, tmp_path, capsys):
    """--chaos with nothing but a source and a sink to kill, and serving flags --streams does not take."""

    def no_cluster(*args, **kwargs):
        raise AssertionError("the cluster started")

    monkeypatch.setattr(deploy, "LocalCluster", no_cluster)
    argv = [
        "--cluster",
        str(ROOT / "tests" / "data" / "two.yaml"),
        "--model",
        "tiny",
        "--cost",
        "flops",
        "--chaos",
        "--out",
        str(tmp_path),
    ]
    assert deploy.main(argv) == 2
    assert "--chaos: cluster 'two' has no device to kill but its source, its sink and relays" in (
        capsys.readouterr().out
    )
    argv[1] = str(ROOT / "configs" / "clusters" / "line4.yaml")  # d0 - d1 - d2 - d3: both relays on the path
    assert deploy.main(argv) == 2
    assert "--chaos: cluster 'line4' has no device to kill" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        deploy.parse(
            [
                "--cluster",
                str(TINY3),
                "--streams",
                "s.yaml",
                "--network",
                "kernel",
                "--window",
                "2",
                "--replan-every",
                "5",
            ]
        )
    assert "--replan-every, --window, --network: not for --streams" in capsys.readouterr().err
    # the links' dynamics and how lanes are re-planned are the streams' too
    args = deploy.parse(["--cluster", str(TINY3), "--streams", "s.yaml", "--collapse", "--static"])
    assert args.static and args.dynamics is not None


def test_chaos_never_kills_a_relay_on_every_path_from_the_source_to_the_sink():
    """Killing one would leave nothing to serve on until it came back; a run with --chaos tests recovery."""
    spec = load_cluster(ROOT / "configs" / "clusters" / "line4.yaml")
    assert not spec.connected_without("d0", "d3", "d1") and spec.connected_without("d0", "d1", "d3")
    mesh = load_cluster(ROOT / "configs" / "clusters" / "mesh0.yaml")
    events = deploy.chaos_schedule(mesh, requests=40)
    killed = {device for _, action, device in events if action == "kill"}
    assert len(killed) == 3 and all(mesh.connected_without(mesh.source, mesh.sink, d) for d in killed)


def test_an_interrupted_script_says_so_and_exits_130(capsys):
    from cli.errors import INTERRUPTED_EXIT, reporting_user_errors
    from cli.output import script_console

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert reporting_user_errors(interrupted, script_console()) == INTERRUPTED_EXIT == 130
    assert "interrupted" in capsys.readouterr().out

    def terminated() -> int:  # what `timeout` sends: the same unwinding, so every `with` cleans up
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return 0

    before = signal.getsignal(signal.SIGTERM)
    assert reporting_user_errors(terminated, script_console()) == INTERRUPTED_EXIT
    assert signal.getsignal(signal.SIGTERM) is before  # restored for whoever called the script


def test_deploy_writes_one_json_shape_for_any_number_of_agents(tmp_path):
    out = tmp_path / "serve.json"
    argv = [
        "--cluster",
        str(TINY3),
        "--model",
        "tiny",
        "--cost",
        "flops",
        "--agents",
        "local",
        "--requests",
        "2",
    ]
    assert deploy.main([*argv, "--json", str(out), "--out", str(tmp_path / "metrics")]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == "tiny" and report["cluster"] == "tiny3"
    (local,) = report["agents"]
    assert local["agent"] == "local" and local["completed"] == 2 and local["outputs_match"] is True


def test_a_planner_error_in_the_generalization_bench_names_the_case(tmp_path, capsys, monkeypatch):
    plan, second = DeepSlicing.plan, generalization.START_S + generalization.GAP_S

    def fails_on_the_second_request(self, snapshot, graph, objective):
        if snapshot.time == second:
            raise PlannerError("deepslicing: a bug")
        return plan(self, snapshot, graph, objective)

    monkeypatch.setattr(DeepSlicing, "plan", fails_on_the_second_request)
    recordings = tmp_path / "my-recordings"  # a user's own folder of traces: one set
    recordings.mkdir()
    (recordings / "drive.log").write_text("".join(f"{t} {8 + t % 3}\n" for t in range(0, 400, 5)))
    argv = ["--quick", "--model", "tiny", "--agents", "local,deepslicing", "--traces-dir", str(recordings)]
    assert generalization.main([*argv, "--failures", "on"]) != 0  # the failure cases only: F first
    expected = f"case n6 my-recordings 15M F: deepslicing, request 1 (t = {second:g} s): deepslicing: a bug"
    assert expected in capsys.readouterr().out


def test_the_generalization_bench_takes_a_users_trace_sets_and_leaves_out_what_training_reads(
    tmp_path, capsys
):
    """Sets are found by what the training configs read, not by name: the bench's default folder keeps
    FCC and Mahimahi (training reads Norway and Oboe), a user's folder gives every set in it, and a
    folder with none, or with a file that is not a trace, is an error before any case runs."""
    used = training_trace_paths(generalization.TRAIN_CONFIGS)
    assert {p.name for p in used} >= {"oboe", "pensieve_norway_hsdpa"}
    assert not {p.name for p in used} & {"pensieve_fcc", "mahimahi"}  # a compare section is not training
    shared = generalization.SHARED_TRACES  # resolved even where ../shared is absent
    assert trained_on(shared / "oboe" / "any-file", used) and trained_on(shared, used)
    assert trained_on(shared / "mahimahi", used) is None
    mine = tmp_path / "mine"
    for name, text in (("puffer", "0 5.5\n1 6.0\n"), ("lte", "time_s,mbps\n0,3\n1,4\n"), ("empty", None)):
        (mine / name).mkdir(parents=True)
        if text is not None:
            (mine / name / "a.txt").write_text(text)
    (mine / ".git").mkdir()
    (mine / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert set(generalization.trace_sets(mine)) == {"lte", "puffer"}
    trained = mine / "lte"
    assert held_out_sets(mine, {trained.resolve(): "my.yaml"}) == (
        {"puffer": mine / "puffer"},
        {"lte": "my.yaml"},
    )
    (mine / "puffer" / "notes.md").write_text("recorded on a train\n")
    for folder, message in ((mine / "empty", "no folder of trace files"), (mine, "notes.md:1")):
        assert generalization.main(["--quick", "--agents", "local", "--traces-dir", str(folder)]) == 2
        assert message in capsys.readouterr().out
