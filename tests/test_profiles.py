"""Compute profiles: validated files, the per-host cache, and the profiled cost model as every tool's
default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import synthetic_profile

from agents import make_planner
from env import profiles
from env.config import EnvConfigError, model_graph
from env.network import NetworkState
from env.partition_env import MicroSplitEnv
from env.profiles import ProfileError, read_profile, resolve_profile
from runtime.plan import Plan
from runtime.profiler import profile_path, write_profile
from runtime.spec import load_cluster

GRAPH = model_graph("tiny")
CLUSTERS = Path(__file__).resolve().parents[1] / "configs" / "clusters"


@pytest.fixture
def record():
    return synthetic_profile("tiny", 50.0)


def write(tmp_path, record) -> str:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(record))
    return str(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": None}, "format must be 'disnet-profile/1'"),
        ({"model": "resnet18"}, "profile of model 'resnet18', expected 'tiny'"),
        ({"input_shape": [3, 64, 64]}, "input_shape"),
        ({"units": ["conv0"]}, "units do not match"),
        ({"reference_gflops": 0}, "reference_gflops must be a positive number"),
        ({"unit_seconds": [1e-3]}, "one per unit"),
        ({"unit_seconds": [float("nan")] * len(GRAPH.units)}, "finite seconds"),
        ({"unit_seconds": [0.0] * len(GRAPH.units)}, "not all zero"),
        ({"host": ""}, "host must name"),
        ({"probe_cpu_s": -1.0}, "probe_cpu_s must be a positive number"),
    ],
)
def test_a_profile_that_does_not_describe_the_model_is_refused_by_name(tmp_path, record, change, message):
    path = write(tmp_path, record | change)
    with pytest.raises(ProfileError, match=message) as err:
        read_profile(path, GRAPH)
    assert str(err.value).startswith(path)


def test_unreadable_and_missing_files_are_profile_errors(tmp_path):
    with pytest.raises(ProfileError, match="no such profile file"):
        read_profile(tmp_path / "none.json", GRAPH)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ProfileError, match="not a readable JSON profile"):
        read_profile(tmp_path / "bad.json", GRAPH)


def test_another_hosts_profile_cannot_pace_this_hosts_emulation(tmp_path, record):
    path = write(tmp_path, record | {"host": "raspberrypi"})
    assert read_profile(path, GRAPH).host == "raspberrypi"  # fine to plan on (a device class)
    assert resolve_profile(GRAPH, "profile", path).host == "raspberrypi"
    with pytest.raises(ProfileError, match="measured on host 'raspberrypi'"):
        resolve_profile(GRAPH, "profile", path, same_host=True)


def test_flops_means_no_profile_and_refuses_one(tmp_path, record):
    assert resolve_profile(GRAPH, "flops") is None
    with pytest.raises(ProfileError, match="--cost flops"):
        resolve_profile(GRAPH, "flops", write(tmp_path, record))
    with pytest.raises(ProfileError, match="profile, flops"):
        resolve_profile(GRAPH, "roofline")


def test_every_tool_plans_on_the_profile_by_default(tmp_path, record, monkeypatch):
    """A profile 10x slower than FLOPs predict makes the env and the planners predict 10x the compute."""
    monkeypatch.setenv("DISNET_PROFILES", str(tmp_path))
    slow = record | {"unit_seconds": [10 * u.flops / 50e9 for u in GRAPH.units]}
    write_profile(slow, profile_path("tiny"))
    env = MicroSplitEnv({"model": "tiny", "clusters": ["tiny3"]})
    flops_env = MicroSplitEnv({"model": "tiny", "clusters": ["tiny3"], "cost": "flops"})
    spec = env.sim.cluster_spec
    local = Plan.build(spec.source, spec.sink, [(0, len(GRAPH.units), {spec.source: 1.0})])
    snap = NetworkState.static(spec).snapshot(0.0)
    profiled = env.sim.cost_model.predict(local, snap).device_time[spec.source].compute_s
    by_flops = flops_env.sim.cost_model.predict(local, snap).device_time[spec.source].compute_s
    assert flops_env.sim.profile is None and env.sim.profile.unit_seconds == tuple(slow["unit_seconds"])
    assert profiled == pytest.approx(10 * by_flops, rel=1e-9)
    # a planner handed the env's model keeps its profile on a cluster it was not built for
    planner = make_planner("optimal", cost_model=env.sim.cost_model)
    other = load_cluster(CLUSTERS / "mesh0.yaml")
    assert planner.cost_model(GRAPH, other).profile == env.sim.profile


def test_a_bad_profile_in_an_env_config_names_the_field(tmp_path, record):
    path = write(tmp_path, record | {"model": "resnet18"})
    with pytest.raises(EnvConfigError, match="profile: .*expected 'tiny'"):
        MicroSplitEnv({"model": "tiny", "clusters": ["tiny3"], "profile": path})


def test_cpu_pacing_follows_the_host_drift_since_the_profile_was_measured(tmp_path, record, monkeypatch):
    """The probe convolution now runs 2x the CPU time it took when the profile was measured: each CPU
    second does half the work, so CPU pacing takes the host for half the reference speed."""
    profile = read_profile(write(tmp_path, record | {"probe_cpu_s": 0.004}), GRAPH)
    monkeypatch.setattr(profiles, "conv_cpu_seconds", lambda seconds: [0.008, 0.007, 0.009])
    assert profiles.pacing(profile, "cpu") == {"host_gflops": pytest.approx(25.0)}
    unprobed = read_profile(write(tmp_path, record), GRAPH)
    assert profiles.pacing(unprobed, "cpu") == {"host_gflops": 50.0}


def test_profile_pacing_hands_the_workers_the_profile_itself(tmp_path, record, monkeypatch):
    profile = read_profile(write(tmp_path, record | {"probe_cpu_s": 0.004}), GRAPH)
    monkeypatch.setattr(profiles, "conv_cpu_seconds", lambda seconds: [0.008])  # drift does not matter
    assert profiles.pacing(profile) == {"host_gflops": 50.0, "unit_seconds": profile.unit_seconds}
    with pytest.raises(profiles.ProfileError, match="pacing must be one of profile, cpu"):
        profiles.pacing(profile, "wall")
