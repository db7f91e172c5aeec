"""Behaviour of env/network.py, env/snapshot.py and env/dynamics.py: what a snapshot may know (the past
only), exact per-link transfer times, sampling worlds from a DynamicsConfig (scaling, load, failures,
seeds) and config errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from env.dynamics import DynamicsConfig
from env.network import NetworkState
from env.snapshot import FLOOR_MBPS, NetworkError, Snapshot, link_key
from env.traces import Trace, constant, step_drop
from runtime.spec import ClusterSpec, Device, Link, PowerProfile, load_cluster

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
MB = 1e6  # bytes


def _line_spec() -> ClusterSpec:
    """a - b - c in a line (no direct a-c link); source a, sink c."""
    power = PowerProfile(1.0, 1.0, 1.0, 0.1)
    devices = {d: Device(d, None, g, power, None) for d, g in (("a", 2.0), ("b", 4.0), ("c", 8.0))}
    links = (Link("b", "a", 20.0, 0.002), Link("b", "c", 40.0, 0.003))
    return ClusterSpec("line3", devices, links, "a", "c")


def _world_with(trace_ab: Trace, spec: ClusterSpec | None = None) -> NetworkState:
    spec = spec or _line_spec()
    return NetworkState(spec, {("a", "b"): trace_ab, ("b", "c"): constant(40.0)})


def _drop_at_10(t_drop: float = 10.0) -> Trace:
    return step_drop(high=20.0, low=2.0, t_drop=t_drop, drop_len=20.0, duration=60.0)


def test_link_key_is_the_sorted_pair():
    assert link_key("b", "a") == link_key("a", "b") == ("a", "b")
    assert link_key("10", "9") == ("10", "9")


def test_static_world_snapshot_equals_spec():
    spec = load_cluster(REPO / "configs" / "clusters" / "tiny3.yaml")
    snap = NetworkState.static(spec).snapshot(7.5, window_s=2.0, history=3)
    assert isinstance(snap, Snapshot)
    assert (snap.time, snap.source, snap.sink) == (7.5, spec.source, spec.sink)
    assert snap.available == frozenset(spec.devices)
    assert snap.speed == pytest.approx(dict.fromkeys(spec.devices, 1.0))
    expected = {link_key(ln.a, ln.b): ln.mbps for ln in spec.links}
    assert snap.link_mbps == pytest.approx(expected)
    assert set(snap.link_history) == set(expected)
    for key, samples in snap.link_history.items():
        assert samples == pytest.approx((expected[key],) * 3)
    assert snap.device_gflops("d2") == pytest.approx(spec.devices["d2"].gflops)
    assert snap.transfer_time("d1", "d0", 5 * MB, 7.5) == pytest.approx(5 * 8 / 50)
    assert snap.latency("d0", "d2") == spec.link("d0", "d2").latency_s


def test_default_dynamics_sample_is_the_static_world():
    spec = _line_spec()
    world = NetworkState.sample(spec, DynamicsConfig())
    for t in (0.0, 3.3, 1000.0):
        assert world.bandwidth_at("a", "b", t) == 20.0 and world.bandwidth_at("c", "b", t) == 40.0
        assert world.speed_at("a", t) == 1.0 and world.available_at("a", t)


def test_snapshot_sees_only_the_past():
    world = _world_with(_drop_at_10())
    assert world.snapshot(9.0).link_mbps[("a", "b")] == pytest.approx(20.0)
    assert world.snapshot(9.999).link_mbps[("a", "b")] == pytest.approx(20.0)
    assert world.snapshot(12.0, window_s=1.0).link_mbps[("a", "b")] == pytest.approx(2.0)
    assert world.snapshot(10.5, window_s=1.0).link_mbps[("a", "b")] == pytest.approx(11.0)
    # history: one-second means, oldest first, the last one ending at t
    assert world.snapshot(12.0, history=4).link_history[("a", "b")] == pytest.approx((20, 20, 2, 2))
    assert world.snapshot(10.5, history=2).link_history[("a", "b")] == pytest.approx((20.0, 11.0))


def test_snapshot_is_blind_to_the_future():
    """Two worlds equal up to t=10 and different after it give the same snapshot at t <= 10."""
    early, late = _world_with(_drop_at_10(10.0)), _world_with(_drop_at_10(25.0))
    for t in (0.0, 4.0, 10.0):
        assert early.snapshot(t) == late.snapshot(t)
    assert early.snapshot(11.0) != late.snapshot(11.0)


def test_the_replayed_past_repeats_the_last_seconds_and_reads_nothing_later():
    """From t, each link repeats its last seconds; two worlds equal up to t replay the same past, who is
    down at t stays down, and with no past yet the traces' first values hold."""
    early, late = _world_with(_drop_at_10(10.0)), _world_with(_drop_at_10(25.0))
    down = NetworkState(
        _line_spec(),
        {("a", "b"): _drop_at_10(), ("b", "c"): constant(40.0)},
        downtime={"b": [(9.0, 9.5), (11.5, 14.0)]},
    )
    replay = early.past_replayed(12.0, 4.0)  # the last 4 s: 2 s at 20 Mbit/s, then 2 s at 2
    t = 12.0 + np.linspace(0.0, 20.0, 401)
    expected = np.where(np.mod(t - 12.0, 4.0) < 2.0, 20.0, 2.0)
    np.testing.assert_array_equal(replay.link_schedule("a", "b").bandwidth_at(t), expected)
    assert replay.transfer_time("a", "b", 6 * MB, 12.0) == pytest.approx(4.2)  # 5 + 0.5 MB, then 0.5 at 20
    for world in (early, late):  # equal up to 9 s, so their pasts replayed from then are too
        np.testing.assert_array_equal(
            world.past_replayed(9.0, 4.0).link_schedule("a", "b").bandwidth_at(t), 20.0
        )
    replay = down.past_replayed(12.0, 4.0)
    assert not any(replay.available_at("b", t) for t in (12.0, 1000.0))  # down at 12: stays down
    assert down.past_replayed(10.0, 4.0).available_at("b", 100.0)  # it came back before 10: stays up
    assert late.past_replayed(0.0, 4.0).bandwidth_at("a", "b", 50.0) == 20.0
    dark = _world_with(step_drop(high=20.0, low=0.0, t_drop=10.0, drop_len=20.0, duration=60.0))
    assert dark.past_replayed(15.0, 4.0).bandwidth_at("a", "b", 16.0) == FLOOR_MBPS  # never nothing at all
    with pytest.raises(NetworkError, match="lookback_s > 0"):
        late.past_replayed(5.0, 0.0)


def test_snapshot_windows_are_clipped_at_time_zero():
    snap = _world_with(_drop_at_10()).snapshot(0.5, window_s=5.0, history=3)
    assert snap.link_mbps[("a", "b")] == pytest.approx(20.0)
    assert snap.link_history[("a", "b")] == pytest.approx((20.0, 20.0, 20.0))
    with pytest.raises(NetworkError, match="t >= 0"):
        NetworkState.static(_line_spec()).snapshot(-1.0)


def test_transfer_time_integrates_the_link_trace():
    trace = _drop_at_10()
    world = _world_with(trace)
    # from t=9: 1 s at 20 Mbit/s carries 2.5 MB, the remaining 0.5 MB at 2 Mbit/s takes 2 s
    assert world.transfer_time("a", "b", 3 * MB, 9.0) == pytest.approx(3.0)
    assert world.transfer_time("b", "a", 3 * MB, 9.0) == pytest.approx(3.0)
    for nbytes, t in ((1e5, 0.0), (7 * MB, 8.2), (40 * MB, 55.0)):
        assert world.transfer_time("a", "b", nbytes, t) == trace.transfer_time(nbytes, t)
    assert world.link_schedule("b", "a") is trace
    assert world.bandwidth_at("a", "b", 12.0) == 2.0
    assert world.latency("b", "a") == 0.002
    assert world.transfer_time("b", "c", 5 * MB, 3.0) == pytest.approx(5 * 8 / 40)


def test_queries_without_a_direct_link_fail_clearly():
    world = NetworkState.static(_line_spec())
    snap = world.snapshot(1.0)
    for call in (
        lambda: world.transfer_time("a", "c", 1.0, 0.0),
        lambda: world.latency("c", "a"),
        lambda: world.link_schedule("a", "c"),
        lambda: snap.transfer_time("a", "c", 1.0, 0.0),
        lambda: snap.latency("a", "c"),
    ):
        with pytest.raises(NetworkError, match="no direct link"):
            call()


def test_snapshot_of_an_outage_gives_infinite_transfer_time():
    world = _world_with(step_drop(high=20.0, low=0.0, t_drop=10.0, drop_len=20.0, duration=60.0))
    snap = world.snapshot(15.0, window_s=2.0)
    assert snap.transfer_time("a", "b", 1.0, 15.0) == float("inf")
    assert snap.transfer_time("a", "b", 0.0, 15.0) == 0.0
    # the true world waits the outage out: 0.25 MB at 20 Mbit/s after t=30
    assert world.transfer_time("a", "b", 0.25 * MB, 29.0) == pytest.approx(1.1)


def test_constructor_checks_links_and_devices():
    spec = _line_spec()
    with pytest.raises(NetworkError, match="no trace for link"):
        NetworkState(spec, {("a", "b"): constant(1.0)})
    with pytest.raises(NetworkError, match="no link a-c"):
        NetworkState(spec, {("a", "b"): constant(1.0), ("b", "c"): constant(1.0), ("a", "c"): constant(1.0)})
    with pytest.raises(NetworkError, match="given twice"):
        NetworkState(spec, {("a", "b"): constant(1.0), ("b", "a"): constant(1.0), ("b", "c"): constant(1.0)})
    links = {("a", "b"): constant(1.0), ("b", "c"): constant(1.0)}
    with pytest.raises(NetworkError, match="speed: unknown device"):
        NetworkState(spec, links, speed={"z": constant(1.0)})
    with pytest.raises(NetworkError, match="downtime.b"):
        NetworkState(spec, links, downtime={"b": [(5.0, 5.0)]})


def test_downtime_intervals_are_merged_and_queried_half_open():
    spec = _line_spec()
    links = {("a", "b"): constant(1.0), ("b", "c"): constant(1.0)}
    world = NetworkState(spec, links, downtime={"b": [(8.0, 12.0), (2.0, 4.0), (3.0, 5.0), (12.0, 13.0)]})
    assert world.down_intervals("b") == ((2.0, 5.0), (8.0, 13.0))
    up = [t for t in (0.0, 1.99, 2.0, 4.5, 5.0, 7.0, 8.0, 12.5, 13.0) if world.available_at("b", t)]
    assert up == [0.0, 1.99, 5.0, 7.0, 13.0]
    assert world.snapshot(9.0).available == frozenset({"a", "c"})


def test_scale_to_spec_gives_each_link_its_spec_mean():
    spec = load_cluster(REPO / "configs" / "clusters" / "mesh0.yaml")
    walk = {"kind": "random_walk", "mean": 5.0, "sigma": 2.0, "lo": 0.5, "hi": 20.0, "duration": 300.0}
    world = NetworkState.sample(spec, DynamicsConfig.parse({"links": {"default": walk}}))
    for ln in spec.links:
        trace = world.link_schedule(ln.a, ln.b)
        assert np.ptp(trace.mbps) > 0
        assert trace.mean_mbps(0.0, trace.duration) == pytest.approx(ln.mbps, rel=0.01)
    raw = NetworkState.sample(
        spec, DynamicsConfig.parse({"links": {"default": walk}, "scale_to_spec": False})
    )
    for ln in spec.links:  # same seed, same draws: scaling only changes the level, not the shape
        shape = raw.link_schedule(ln.a, ln.b)
        factor = ln.mbps / shape.mean_mbps(0.0, shape.duration)
        assert factor != pytest.approx(1.0, rel=0.05)
        np.testing.assert_allclose(world.link_schedule(ln.a, ln.b).mbps, shape.mbps * factor)


def test_per_link_override_and_cap():
    spec = _line_spec()
    config = DynamicsConfig.parse(
        {
            "links": {
                "per_link": {
                    "c-b": {
                        "kind": "step_drop",
                        "high": 10,
                        "low": 1,
                        "t_drop": 5,
                        "drop_len": 5,
                        "duration": 20,
                    }
                }
            },
            "scale_to_spec": False,
            "trace_cap_mbps": 8.0,
        }
    )
    world = NetworkState.sample(spec, config)
    assert world.bandwidth_at("a", "b", 3.0) == 8.0  # default: spec 20 Mbit/s, capped
    assert [world.bandwidth_at("b", "c", t) for t in (1.0, 6.0, 11.0)] == [8.0, 1.0, 8.0]
    unknown = DynamicsConfig.parse({"links": {"per_link": {"a-c": {"kind": "constant", "mbps": 1}}}})
    with pytest.raises(NetworkError, match=r"links\.per_link\.a-c: names no link"):
        NetworkState.sample(spec, unknown)


def test_device_ids_with_dashes_resolve_in_link_keys():
    power = PowerProfile(1.0, 1.0, 1.0, 0.1)
    devices = {d: Device(d, None, 1.0, power, None) for d in ("pi-1", "pi-2")}
    spec = ClusterSpec("dash", devices, (Link("pi-1", "pi-2", 10.0, 0.001),), "pi-1", "pi-2")
    config = DynamicsConfig.parse(
        {"links": {"per_link": {"pi-2-pi-1": {"kind": "constant", "mbps": 3}}}, "scale_to_spec": False}
    )
    assert NetworkState.sample(spec, config).bandwidth_at("pi-1", "pi-2", 0.0) == 3.0


def _busy_config(seed: int = 0) -> DynamicsConfig:
    return DynamicsConfig.parse(
        {
            "links": {"default": {"kind": "markov_outages", "levels_mbps": [1, 5, 9], "duration": 120}},
            "load": {"kind": "random_walk", "lo": 0.4, "hi": 0.9, "sigma": 0.2},
            "failures": {"rate_per_min": 2.0, "mean_downtime_s": 10.0},
            "horizon_s": 600.0,
            "seed": seed,
        }
    )


def _fingerprint(world: NetworkState) -> tuple:
    spec = world.spec
    return (
        tuple(tuple(world.link_schedule(ln.a, ln.b).mbps) for ln in spec.links),
        tuple(tuple(world.speed_schedule(d).mbps) for d in spec.devices),
        tuple(world.down_intervals(d) for d in spec.devices),
    )


def test_sampling_is_deterministic_under_a_seed():
    spec = load_cluster(REPO / "configs" / "clusters" / "mesh0.yaml")
    first = _fingerprint(NetworkState.sample(spec, _busy_config(seed=3)))
    assert _fingerprint(NetworkState.sample(spec, _busy_config(seed=3))) == first
    assert _fingerprint(NetworkState.sample(spec, _busy_config(seed=4))) != first
    by_rng = [
        _fingerprint(NetworkState.sample(spec, _busy_config(), np.random.default_rng(11))) for _ in "ab"
    ]
    assert by_rng[0] == by_rng[1]


def test_failures_give_down_intervals_and_spare_source_and_sink():
    spec = load_cluster(REPO / "configs" / "clusters" / "mesh0.yaml")
    world = NetworkState.sample(spec, _busy_config())
    for d in spec.devices:
        intervals = world.down_intervals(d)
        if d in (spec.source, spec.sink):
            assert intervals == ()
            continue
        assert intervals, f"device {d} never failed at 2 failures/min over 600 s"
        assert all(t0 < 600.0 and t0 < t1 for t0, t1 in intervals)
        t0, t1 = intervals[0]
        assert not world.available_at(d, (t0 + t1) / 2) and d not in world.snapshot((t0 + t1) / 2).available
        assert world.available_at(d, t1)
    down_time = sum(t1 - t0 for d in spec.devices for t0, t1 in world.down_intervals(d))
    assert 0.1 < down_time / (8 * 600.0) < 0.5  # up ~30 s, down ~10 s: ~25% of the time


def test_failures_exempt_list_replaces_the_default():
    spec = _line_spec()
    config = DynamicsConfig.parse({"failures": {"rate_per_min": 5.0, "exempt": ["b"]}, "horizon_s": 300})
    world = NetworkState.sample(spec, config)
    assert world.down_intervals("b") == ()
    assert world.down_intervals("a") and world.down_intervals("c")
    bad = DynamicsConfig.parse({"failures": {"rate_per_min": 1.0, "exempt": ["zz"]}})
    with pytest.raises(NetworkError, match="failures.exempt"):
        NetworkState.sample(spec, bad)


def test_random_walk_load_stays_in_bounds():
    spec = load_cluster(REPO / "configs" / "clusters" / "mesh0.yaml")
    world = NetworkState.sample(spec, _busy_config())
    for d in spec.devices:
        factors = world.speed_schedule(d).mbps
        assert factors.min() >= 0.4 and factors.max() <= 0.9 and np.ptp(factors) > 0
        assert 0.4 <= world.speed_at(d, 123.4) <= 0.9
        assert 0.4 <= world.snapshot(50.0).speed[d] <= 0.9


def test_markov_load_uses_only_its_levels():
    spec = _line_spec()
    config = DynamicsConfig.parse(
        {"load": {"kind": "markov", "levels": [1.0, 0.25], "transition": 0.2}, "horizon_s": 200}
    )
    world = NetworkState.sample(spec, config)
    for d in spec.devices:
        assert set(world.speed_schedule(d).mbps) == {1.0, 0.25}
    snap = world.snapshot(100.0, window_s=0.0)
    assert snap.speed["b"] == world.speed_at("b", 100.0)
    assert snap.device_gflops("b") == pytest.approx(4.0 * snap.speed_at("b", 100.0))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"linkz": {}}, "linkz"),
        ({"failures": {"rate_per_min": -1}}, "failures.rate_per_min"),
        ({"failures": {"mean_downtime_s": 0}}, "failures.mean_downtime_s"),
        ({"load": {"kind": "random_walk", "lo": 0.9, "hi": 0.5}}, "load.random_walk"),
        ({"load": {"kind": "markov", "transition": [[1.0]]}}, "load.markov"),
        ({"load": {"kind": "sometimes"}}, "load"),
        ({"trace_cap_mbps": 0}, "trace_cap_mbps"),
        ({"links": {"per_link": {"0-1": {"kind": "bogus"}}}}, "links.per_link.0-1"),
        ({"links": {"per_link": {"ab": {"kind": "constant", "mbps": 1}}}}, "links.per_link"),
        ({"links": {"default": {"kind": "dir", "path": "no/such/dir"}}}, "links.default"),
    ],
)
def test_config_errors_name_the_file_and_field(data, field):
    with pytest.raises(NetworkError) as info:
        DynamicsConfig.parse(data, origin="train.yaml")
    assert f"train.yaml: {field}" in str(info.value)


def test_relative_trace_paths_resolve_against_base_dir(tmp_path):
    (tmp_path / "t.csv").write_text("time_s,mbps\n0,4\n1,6\n")
    config = DynamicsConfig.parse(
        {
            "links": {"default": {"kind": "file", "path": "t.csv", "random_offset": False}},
            "scale_to_spec": False,
        },
        base_dir=tmp_path,
    )
    world = NetworkState.sample(_line_spec(), config)
    assert [world.bandwidth_at("a", "b", t) for t in (0.5, 1.5)] == [4.0, 6.0]
    again = DynamicsConfig.model_validate(config.model_dump(mode="json"), context={"base_dir": tmp_path})
    assert again.links.default.spec == config.links.default.spec


@pytest.mark.parametrize("mbps", ["0", "1e-320"])
def test_a_trace_too_thin_to_rescale_to_its_link_is_a_network_error(tmp_path, mbps):
    (tmp_path / "thin.log").write_text(f"0 {mbps}\n5 0\n")
    config = DynamicsConfig.parse({"links": {"default": str(tmp_path / "thin.log")}})
    with pytest.raises(NetworkError, match="thin.log.*too small to rescale"):
        NetworkState.sample(_line_spec(), config)


def test_recorded_norway_traces_drive_the_links():
    folder = SHARED / "traces" / "pensieve_norway_hsdpa"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    spec = load_cluster(REPO / "configs" / "clusters" / "mesh0.yaml")
    config = DynamicsConfig.parse({"links": {"default": str(folder)}})
    world = NetworkState.sample(spec, config, np.random.default_rng(5))
    recordings = {p.name for p in folder.iterdir()}
    for ln in spec.links:
        trace = world.link_schedule(ln.a, ln.b)
        assert trace.name.split("@")[0] in recordings
        assert trace.mean_mbps(0.0, trace.duration) == pytest.approx(ln.mbps, rel=0.01)
        assert world.transfer_time(ln.a, ln.b, MB, 42.0) == trace.transfer_time(MB, 42.0) > 0
    snap = world.snapshot(60.0)
    assert all(v >= 0 and np.isfinite(v) for v in snap.link_mbps.values())
    assert len({round(v, 6) for v in snap.link_mbps.values()}) > 1


def _random_trace(rng: np.random.Generator, name: str) -> Trace:
    """Irregular segments, some of them outages (0 Mbit/s), non-integer period."""
    n = int(rng.integers(1, 40))
    times = np.concatenate(([0.0], np.sort(rng.uniform(0.0, 30.0, n - 1))))
    mbps = np.where(rng.random(n) < 0.2, 0.0, rng.uniform(0.1, 50.0, n))
    mbps[0] = max(mbps[0], 1.0)
    return Trace(times, mbps, float(times[-1] + rng.uniform(0.1, 3.0)), name)


@pytest.mark.parametrize("seed", range(4))
def test_snapshot_means_are_the_scalar_trace_integrals(seed):
    """The compiled snapshot computes exactly what Trace.mean_mbps says for every link window and speed
    (windows clipped at 0, crossing the period wrap, zero-length at t = 0)."""
    rng = np.random.default_rng(seed)
    spec = _line_spec()
    links = {("c", "b"): _random_trace(rng, "cb"), ("a", "b"): _random_trace(rng, "ab")}  # not spec order
    speed = {d: _random_trace(rng, d) for d in ("a", "c")}
    world = NetworkState(spec, links, speed)
    for t in (0.0, 0.25, 3.0, *rng.uniform(0.0, 200.0, 20)):
        snap = world.snapshot(float(t), window_s=2.5, history=4)
        start = max(0.0, t - 2.5)
        edges = [max(0.0, t - 4 + k) for k in range(5)]
        for (a, b), trace in links.items():
            key = link_key(a, b)
            assert snap.link_mbps[key] == trace.mean_mbps(start, t)
            assert snap.link_history[key] == tuple(
                trace.mean_mbps(e0, e1) for e0, e1 in zip(edges[:-1], edges[1:], strict=True)
            )
        assert snap.speed == {d: world.speed_schedule(d).mean_mbps(start, t) for d in spec.devices}
        fresh = Snapshot(**{f: getattr(snap, f) for f in Snapshot.__dataclass_fields__})
        np.testing.assert_array_equal(snap.rates.link_mbps, fresh.rates.link_mbps)
        np.testing.assert_array_equal(snap.rates.speed, fresh.rates.speed)
        np.testing.assert_array_equal(snap.link_windows, fresh.link_windows)


def test_link_windows_pad_a_short_history_with_the_mean():
    snap = NetworkState.static(_line_spec()).snapshot(3.0, history=2)
    short = Snapshot(**{**{f: getattr(snap, f) for f in Snapshot.__dataclass_fields__}, "link_history": {
        ("a", "b"): (7.0,), ("b", "c"): (1.0, 2.0)}})  # fmt: skip
    np.testing.assert_array_equal(short.link_windows, [[20.0, 20.0, 7.0], [40.0, 1.0, 2.0]])


def test_snapshot_carries_the_failures_and_uptime_heartbeats_saw():
    spec = _line_spec()
    world = NetworkState(
        spec, {("a", "b"): constant(20.0), ("b", "c"): constant(40.0)}, downtime={"b": [(10, 20), (50, 60)]}
    )
    snap = world.snapshot(55.0, failure_window_s=300.0)
    assert snap.failure_window_s == 55.0  # clipped at the world's start
    assert snap.failures == {"a": 0, "b": 2, "c": 0}
    assert snap.uptime_s == {"a": 55.0, "b": 55.0 - 10.0 - 5.0, "c": 55.0}
    assert snap.failure_rate("b") == pytest.approx(2 / 40.0) and snap.failure_rate("a") == 0.0
    recent = world.snapshot(55.0, failure_window_s=30.0)  # only the second failure, 5 s of it down
    assert recent.failures["b"] == 1 and recent.uptime_s["b"] == 25.0
    assert NetworkState.static(spec).snapshot(5.0).failure_rate("b") == 0.0
    with pytest.raises(NetworkError, match="failure_window_s"):
        world.snapshot(5.0, failure_window_s=-1.0)


def test_foresight_prices_plans_on_the_world_itself_and_drops_devices_about_to_fail():
    from env.cost_model import CostModel
    from runtime import models
    from runtime.graph import LayerGraph
    from runtime.plan import Plan

    spec = _line_spec()
    world = NetworkState(
        spec, {("a", "b"): _drop_at_10(), ("b", "c"): constant(40.0)}, downtime={"b": [(12.0, 30.0)]}
    )
    ahead = world.foresight(8.0, 5.0)
    assert ahead.available == {"a", "c"}  # b fails within the horizon
    assert world.foresight(8.0, 3.9).available == {"a", "b", "c"}
    assert ahead.link_mbps[("a", "b")] == pytest.approx((2 * 20.0 + 3 * 2.0) / 5)
    graph = LayerGraph.from_model(models.build("tiny"), models.input_shape("tiny"), "tiny")
    model = CostModel(graph, spec)
    plan = Plan.build("a", "c", [(0, len(graph.units), {"b": 1.0})])
    t = 9.999  # the input crosses a-b as it drops 10x
    future = world.foresight(t, 1.0)
    assert model.latency(plan, future, t) == model.latency(plan, world, t)  # the traces, not a mean
    assert model.latency(plan, future, t) > 2 * model.latency(plan, world.snapshot(t), t)
    with pytest.raises(NetworkError, match="horizon_s"):
        world.foresight(1.0, 0.0)
