"""ClusterSpec loading, validation and routing."""

from __future__ import annotations

import copy
import json
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from runtime.spec import (
    DEFAULT_LATENCY_S,
    ClusterSpec,
    Device,
    Link,
    PowerProfile,
    SpecError,
    complete_cluster,
    load_cluster,
)

CLUSTERS = Path(__file__).resolve().parents[1] / "configs" / "clusters"
SCENARIOS = Path(__file__).resolve().parents[2] / "shared" / "scenarios"
BUNDLED = ["mesh0", "tiny3", "line4"]


@pytest.fixture
def scenarios() -> Path:
    if not SCENARIOS.is_dir():
        pytest.skip("shared scenarios directory not available")
    return SCENARIOS


def _spec(device_ids: list[str], links: list[tuple[str, str, float]]) -> ClusterSpec:
    power = PowerProfile(1.0, 1.0, 1.0, 0.0)
    devices = {d: Device(d, None, 1.0, power, None) for d in device_ids}
    edges = tuple(Link(a, b, mbps, DEFAULT_LATENCY_S) for a, b, mbps in links)
    return ClusterSpec("test", devices, edges, device_ids[0], device_ids[-1])


def _simple_paths(spec: ClusterSpec, a: str, b: str) -> list[list[str]]:
    out: list[list[str]] = []

    def walk(path: list[str]) -> None:
        if path[-1] == b:
            out.append(path)
            return
        for nxt in spec.neighbours(path[-1]):
            if nxt not in path:
                walk(path + [nxt])

    walk([a])
    return out


def _cost(spec: ClusterSpec, path: list[str]) -> Fraction:
    return sum((1 / Fraction(spec.link(u, v).mbps) for u, v in pairwise(path)), Fraction(0))


# ------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("index", range(4))
def test_disnet_mesh_json_loads_as_written(scenarios: Path, index: int) -> None:
    path = scenarios / f"disnet-mesh{index}.json"
    raw = json.loads(path.read_text())
    spec = load_cluster(path)
    assert len(spec.devices) == 10 and len(spec.links) == 15
    assert spec.device_ids == tuple(raw["devices"])
    assert (spec.source, spec.sink) == (str(raw["source"]), str(raw["sink"]))
    for dev_id, entry in raw["devices"].items():
        device = spec.devices[dev_id]
        assert device.gflops == entry["compute_rate"]
        p = entry["power_w"]
        assert device.power == PowerProfile(p["compute"], p["transmit"], p["receive"], p["idle"])
        assert device.memory_mb is None and device.address is None
    assert [(ln.a, ln.b, ln.mbps) for ln in spec.links] == [
        (str(a), str(b), float(m)) for a, b, m in raw["links"]
    ]
    assert all(ln.latency_s == DEFAULT_LATENCY_S for ln in spec.links)
    assert all(spec.reachable(spec.source, d) for d in spec.device_ids)


def test_mesh0_yaml_equals_disnet_mesh0_json(scenarios: Path) -> None:
    assert load_cluster(CLUSTERS / "mesh0.yaml") == load_cluster(scenarios / "disnet-mesh0.json")


@pytest.mark.parametrize("path", [CLUSTERS / "mesh0.yaml", "scenario"])
def test_gflops_per_rate_scales_compute_rate(scenarios: Path, path: Path | str) -> None:
    if path == "scenario":
        path = scenarios / "disnet-mesh0.json"
    base = load_cluster(path)
    scaled = load_cluster(path, gflops_per_rate=2.5)
    for dev_id, device in base.devices.items():
        assert scaled.devices[dev_id].gflops == pytest.approx(2.5 * device.gflops)


def test_a_complete_cluster_links_every_pair_directly_from_its_first_device_to_its_last() -> None:
    spec = complete_cluster("k4", {"a": 1, "b": 2, "c": 3, "d": 4}, 40)
    assert (spec.name, spec.source, spec.sink) == ("k4", "a", "d")
    assert {d: spec.devices[d].gflops for d in spec.device_ids} == {"a": 1, "b": 2, "c": 3, "d": 4}
    assert sorted(tuple(sorted((ln.a, ln.b))) for ln in spec.links) == sorted(
        (x, y) for i, x in enumerate("abcd") for y in "abcd"[i + 1 :]
    )
    assert all(ln.mbps == 40 for ln in spec.links)
    assert all(spec.route(x, y) == [x, y] for x in "abcd" for y in "abcd" if x != y)
    named = complete_cluster("k4", {"a": 1, "b": 1}, 40, source="b", sink="b")
    assert (named.source, named.sink) == ("b", "b")


def test_file_gflops_per_rate_applies_only_to_compute_rate_devices(tmp_path: Path) -> None:
    data = _base_yaml()
    data["gflops_per_rate"] = 3.0
    data["devices"][1] = {**data["devices"][1], "compute_rate": 2}
    del data["devices"][1]["gflops"]
    spec = load_cluster(_write(tmp_path, data))
    assert spec.devices["b"].gflops == 6.0
    assert spec.devices["a"].gflops == data["devices"][0]["gflops"]
    assert load_cluster(_write(tmp_path, data), gflops_per_rate=0.5).devices["b"].gflops == 1.0


def test_bundled_configs_describe_their_topologies() -> None:
    tiny = load_cluster(CLUSTERS / "tiny3.yaml")
    assert sorted(d.gflops for d in tiny.devices.values()) == [2, 4, 8]
    ids = tiny.device_ids
    assert all(tiny.link(a, b) is not None for a in ids for b in ids if a != b)
    assert {ln.mbps for ln in tiny.links} == {50}

    line = load_cluster(CLUSTERS / "line4.yaml")
    ids = line.device_ids
    assert len(ids) == 4 and len(line.links) == 3
    assert (line.source, line.sink) == (ids[0], ids[-1])
    assert [line.neighbours(d) for d in ids] == [
        [ids[1]],
        [ids[0], ids[2]],
        [ids[1], ids[3]],
        [ids[2]],
    ]


@pytest.mark.parametrize("name", BUNDLED)
def test_to_yaml_round_trips(tmp_path: Path, name: str) -> None:
    spec = load_cluster(CLUSTERS / f"{name}.yaml")
    path = tmp_path / "copy.yaml"
    path.write_text(spec.to_yaml())
    assert load_cluster(path) == spec


# ------------------------------------------------------------------------------- routing


@pytest.mark.parametrize("name", BUNDLED)
def test_direct_link_is_the_route(name: str) -> None:
    spec = load_cluster(CLUSTERS / f"{name}.yaml")
    for ln in spec.links:
        assert spec.route(ln.a, ln.b) == [ln.a, ln.b]
        assert spec.route_links(ln.b, ln.a) == [ln]


def test_line_routes_through_relays() -> None:
    spec = load_cluster(CLUSTERS / "line4.yaml")
    d0, d1, d2, d3 = spec.device_ids
    assert spec.route(d0, d3) == [d0, d1, d2, d3]
    assert spec.route_links(d0, d3) == [spec.link(d0, d1), spec.link(d1, d2), spec.link(d2, d3)]
    assert spec.route(d2, d0) == [d2, d1, d0]
    assert spec.route(d1, d1) == [d1] and spec.route_links(d1, d1) == []


@pytest.mark.parametrize("name", BUNDLED)
def test_routes_are_symmetric_valid_and_fastest(name: str) -> None:
    spec = load_cluster(CLUSTERS / f"{name}.yaml")
    for a in spec.device_ids:
        for b in spec.device_ids:
            path = spec.route(a, b)
            assert path[0] == a and path[-1] == b and len(set(path)) == len(path)
            assert spec.route(b, a) == path[::-1]
            assert [spec.link(u, v) for u, v in pairwise(path)] == spec.route_links(a, b)
            if a != b and spec.link(a, b) is None:
                best = min(_cost(spec, p) for p in _simple_paths(spec, a, b))
                assert _cost(spec, path) == best


def test_fastest_path_beats_fewer_hops_and_ties_are_deterministic() -> None:
    slow_short = _spec(
        ["a", "m", "x", "y", "z"],
        [("a", "m", 10), ("m", "z", 10), ("a", "x", 100), ("x", "y", 100), ("y", "z", 100)],
    )
    assert slow_short.route("a", "z") == ["a", "x", "y", "z"]

    # 1/20 + 1/20 == 3 * 1/30 exactly: the tie goes to fewer hops.
    tie_hops = _spec(
        ["a", "p", "q", "r", "z"],
        [("a", "p", 30), ("p", "q", 30), ("q", "z", 30), ("a", "r", 20), ("r", "z", 20)],
    )
    assert tie_hops.route("a", "z") == ["a", "r", "z"]

    # Equal cost and hops: the relay declared first wins, whatever its name.
    links = [("a", "r1", 20), ("r1", "z", 20), ("a", "r2", 20), ("r2", "z", 20)]
    assert _spec(["a", "r2", "r1", "z"], links).route("a", "z") == ["a", "r2", "z"]
    assert _spec(["a", "r1", "r2", "z"], links).route("z", "a") == ["z", "r1", "a"]


def test_unreachable_pair_raises_spec_error() -> None:
    spec = _spec(["a", "b", "c"], [("a", "b", 10)])
    assert not spec.reachable("a", "c")
    with pytest.raises(SpecError, match="no route"):
        spec.route("a", "c")
    with pytest.raises(SpecError, match="unknown device 'nope'"):
        spec.neighbours("nope")


def test_bandwidth_cap_limits_every_link(tmp_path: Path) -> None:
    spec = load_cluster(CLUSTERS / "mesh0.yaml")
    capped = spec.with_bandwidth_cap(15)
    assert [ln.mbps for ln in capped.links] == [min(ln.mbps, 15.0) for ln in spec.links]
    assert min(ln.mbps for ln in spec.links) < 15 < max(ln.mbps for ln in spec.links)
    assert load_cluster(CLUSTERS / "mesh0.yaml", bandwidth_cap=15) == capped
    assert capped.devices == spec.devices

    data = _base_yaml()
    data["bandwidth_cap_mbps"] = 20
    path = _write(tmp_path, data)
    assert max(ln.mbps for ln in load_cluster(path).links) == 20
    assert max(ln.mbps for ln in load_cluster(path, bandwidth_cap=30).links) == 20
    assert max(ln.mbps for ln in load_cluster(path, bandwidth_cap=5).links) == 5
    for bad in (0, -1, float("nan")):
        with pytest.raises(SpecError, match="bandwidth cap"):
            spec.with_bandwidth_cap(bad)


def test_with_source_sink() -> None:
    spec = load_cluster(CLUSTERS / "line4.yaml")
    d0, d1, d2, d3 = spec.device_ids
    moved = spec.with_source_sink(d2, d1)
    assert (moved.source, moved.sink) == (d2, d1) and moved.links == spec.links
    with pytest.raises(SpecError, match="sink: unknown device"):
        spec.with_source_sink(d0, "nope")


# ------------------------------------------------------------------------------- validation


def _base_yaml() -> dict:
    power = {"compute": 2.0, "transmit": 1.0, "receive": 1.0, "idle": 0.1}
    return {
        "format": "disnet-cluster/1",
        "name": "base",
        "source": "a",
        "sink": "c",
        "devices": [
            {"id": d, "gflops": g, "power": dict(power)} for d, g in zip("abc", (2, 4, 8), strict=True)
        ],
        "links": [{"a": "a", "b": "b", "mbps": 50}, {"a": "b", "b": "c", "mbps": 40}],
    }


def _write(tmp_path: Path, data: dict, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if name.endswith(".yaml") else json.dumps(data))
    return path


def _set(data: dict, dotted: str, value: object) -> dict:
    data = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


YAML_ERRORS = [
    ("devices.1.power.compute", -1, "devices.1.power.compute: Input should be greater than 0"),
    ("devices.0.gflops", "fast", "devices.0.gflops: Input should be a valid number"),
    ("devices.2.memory_mb", float("inf"), "devices.2.memory_mb: Input should be a finite number"),
    ("links.1.mbps", 0, "links.1.mbps: Input should be greater than 0"),
    ("links.0.latency_ms", -2, "links.0.latency_ms: Input should be greater than or equal to 0"),
    ("links.1.b", "zz", "links.1: unknown device 'zz'"),
    ("links.0.b", "a", "links.0: self link on device 'a'"),
    ("links.1", {"a": "b", "b": "a", "mbps": 5}, "links.1: duplicate of links.0"),
    ("devices.2.id", "a", "devices.2.id: duplicate device id 'a'"),
    ("links", [{"a": "a", "b": "b", "mbps": 50}], "links: devices unreachable from source 'a': c"),
    ("format", "disnet-cluster/9", "format: expected 'disnet-mesh/1' or 'disnet-cluster/1'"),
    ("source", "q", "source: unknown device 'q'"),
    ("devices.0.address", "10.0.0.1", "devices.0.address: expected host:port"),
    ("devices.0.compute_rate", 3, "devices.0: give exactly one of gflops or compute_rate"),
    ("devices.1.gflop", 3, "devices.1.gflop: Extra inputs are not permitted"),
    ("devices.1.power", {"compute": 1.0}, "devices.1.power.transmit: Field required"),
    ("devices", [], "devices: List should have at least 1 item"),
]


@pytest.mark.parametrize(("field", "value", "expected"), YAML_ERRORS)
def test_bad_yaml_field_raises_spec_error_naming_file_and_field(
    tmp_path: Path, field: str, value: object, expected: str
) -> None:
    path = _write(tmp_path, _set(_base_yaml(), field, value))
    with pytest.raises(SpecError) as info:
        load_cluster(path)
    assert f"{path}: {expected}" in str(info.value)


def test_valid_base_yaml_loads(tmp_path: Path) -> None:
    # Guards the error cases above: each fails only because of its own change.
    spec = load_cluster(_write(tmp_path, _set(_base_yaml(), "devices.0.address", "10.0.0.1:5555")))
    assert spec.devices["a"].address == "10.0.0.1:5555"
    assert spec.route("a", "c") == ["a", "b", "c"]


def _mesh_json() -> dict:
    power = {"compute": 3.8, "transmit": 1.0, "receive": 1.0, "idle": 0.0}
    return {
        "format": "disnet-mesh/1",
        "name": "m",
        "devices": {str(i): {"compute_rate": i + 1, "power_w": dict(power)} for i in range(3)},
        "links": [[0, 1, 20], [1, 2, 30]],
        "source": 0,
        "sink": 2,
    }


def test_a_mesh_file_may_set_memory_and_names_the_fields_it_ignores(tmp_path: Path, caplog) -> None:
    data = _mesh_json()
    data["devices"]["1"]["memory_mb"] = 64
    data["devices"]["2"]["compute_rat"] = 3  # a typo beside the real field
    data["generator"] = "mine"
    spec = load_cluster(_write(tmp_path, data, "m.json"))
    assert spec.devices["1"].memory_mb == 64 and spec.devices["0"].memory_mb is None
    assert "m.json: ignored (not disnet-mesh/1 fields): generator, devices.2.compute_rat" in caplog.text
    with pytest.raises(SpecError, match="devices.1.memory_mb: Input should be greater than 0"):
        load_cluster(_write(tmp_path, _set(data, "devices.1.memory_mb", 0), "bad.json"))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("links.1", [1, 2, 0], "links.1.2: Input should be greater than 0"),
        ("links.0", [0, 7, 20], "links.0: unknown device '7'"),
        ("devices.1.power_w.idle", -0.5, "devices.1.power_w.idle: Input should be greater"),
        ("links", [[0, 1, 20]], "links: devices unreachable from source '0': 2"),
        ("sink", 9, "sink: unknown device '9'"),
    ],
)
def test_bad_mesh_json_raises_spec_error(tmp_path: Path, field: str, value: object, expected: str) -> None:
    assert load_cluster(_write(tmp_path, _mesh_json(), "ok.json")).route("0", "2") == [
        "0",
        "1",
        "2",
    ]
    path = _write(tmp_path, _set(_mesh_json(), field, value), "bad.json")
    with pytest.raises(SpecError) as info:
        load_cluster(path)
    assert f"{path}: {expected}" in str(info.value)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "dup.json",
            '{"format": "disnet-mesh/1", "devices": {"1": {}, "1": {}}}',
            "duplicate key '1'",
        ),
        ("broken.json", '{"format": ', "invalid JSON"),
        ("broken.yaml", "devices: [\n  - {id: a", "invalid YAML"),
        ("list.yaml", "- 1\n- 2\n", "expected a mapping at the top level"),
        ("empty.yaml", "", "expected a mapping at the top level"),
        ("noformat.yaml", "name: x\n", "format: expected"),
    ],
)
def test_unreadable_files_raise_spec_error(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_cluster(path)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)


def test_missing_file_and_bad_arguments_raise_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_cluster(tmp_path / "absent.yaml")
    with pytest.raises(SpecError, match="gflops_per_rate"):
        load_cluster(CLUSTERS / "tiny3.yaml", gflops_per_rate=0)
