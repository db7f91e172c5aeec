"""Cluster description: devices, links, source and sink, loaded from YAML or disnet-mesh JSON.

Pure data and loading; nothing here starts a process (runtime/cluster.py does that). Two file
formats are accepted, told apart by their `format` field:

- `disnet-mesh/1` (the DISNET evaluation meshes in ../shared/scenarios): a device's `compute_rate`
  r becomes r * gflops_per_rate effective GFLOP/s (FLOPs = 2 * MACs), links are `[a, b, mbps]`; a
  device may also set `memory_mb` (the DISNET files do not). Fields disnet does not know are named in a
  warning and ignored, since other tools may write their own into these files.
- `disnet-cluster/1` (configs/clusters/*.yaml): devices with an optional `address` (host:port of the
  worker in a real deployment), `gflops` or `compute_rate`, `power` and `memory_mb`; links with
  `mbps` and `latency_ms`.

Neither format needs a latency: a link without one gets DEFAULT_LATENCY_S (1 ms), a device
without `memory_mb` has unlimited memory (None).

Routing rule (`ClusterSpec.route`): two devices joined by a link always talk over it directly,
because relaying costs a third device's radio time and energy. Otherwise the route is the path
with the least store-and-forward time for a reference payload, i.e. the smallest sum of 1/mbps
over its links (latency is ignored); exact ties go to fewer hops, then to the path whose device
sequence comes first in declaration order. Routes are symmetric: route(b, a) is route(a, b)
reversed.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import cached_property
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from runtime.config import describe_validation_error

MESH_FORMAT = "disnet-mesh/1"
log = logging.getLogger(__name__)
CLUSTER_FORMAT = "disnet-cluster/1"
DEFAULT_LATENCY_S = 1e-3
COMPLETE_CLUSTER_POWER = {"compute": 2.0, "transmit": 1.0, "receive": 1.0, "idle": 0.2}  # watts


class SpecError(ValueError):
    """A cluster description is invalid; the message names the file and the field at fault."""


@dataclass(frozen=True)
class PowerProfile:
    """Power draw in watts while computing, transmitting, receiving and idling."""

    compute_w: float
    transmit_w: float
    receive_w: float
    idle_w: float


@dataclass(frozen=True)
class Device:
    """One device; `gflops` is its effective speed (FLOPs = 2 * MACs), memory None = unlimited."""

    id: str
    address: str | None
    gflops: float
    power: PowerProfile
    memory_mb: float | None


@dataclass(frozen=True)
class Link:
    """An undirected link between devices `a` and `b`."""

    a: str
    b: str
    mbps: float
    latency_s: float


@dataclass(frozen=True)
class ClusterSpec:
    """Devices (in declaration order), undirected links, and the default source and sink.

    Construction checks that links join two distinct known devices at most once and that source
    and sink are known. A disconnected graph is allowed here (route() then raises); files must
    describe a connected cluster.
    """

    name: str
    devices: dict[str, Device]
    links: tuple[Link, ...]
    source: str
    sink: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", dict(self.devices))
        object.__setattr__(self, "links", tuple(self.links))
        for key, device in self.devices.items():
            if key != device.id:
                raise SpecError(f"devices.{key}: key does not match device id {device.id!r}")
        first_index: dict[frozenset[str], int] = {}
        for i, link in enumerate(self.links):
            for end in (link.a, link.b):
                if end not in self.devices:
                    raise SpecError(f"links.{i}: unknown device {end!r}")
            if link.a == link.b:
                raise SpecError(f"links.{i}: self link on device {link.a!r}")
            pair = frozenset((link.a, link.b))
            if pair in first_index:
                raise SpecError(f"links.{i}: duplicate of links.{first_index[pair]} ({link.a}-{link.b})")
            first_index[pair] = i
        for role in ("source", "sink"):
            if getattr(self, role) not in self.devices:
                raise SpecError(f"{role}: unknown device {getattr(self, role)!r}")

    @property
    def device_ids(self) -> tuple[str, ...]:
        """Device ids in declaration order."""
        return tuple(self.devices)

    def neighbours(self, dev: str) -> list[str]:
        """Devices with a direct link to `dev`, in declaration order."""
        self._require(dev)
        return list(self._adjacency[dev])

    def link(self, a: str, b: str) -> Link | None:
        """The direct link between `a` and `b` (either direction), or None."""
        return self._link_index.get(frozenset((a, b)))

    def reachable(self, a: str, b: str) -> bool:
        """Whether some route joins `a` and `b`."""
        self._require(a)
        self._require(b)
        return a == b or (a, b) in self._routes

    def connected_without(self, a: str, b: str, lost: str) -> bool:
        """Whether some path of links joins `a` and `b` once device `lost` is gone (a relay's failure
        cuts them apart when it is on every path)."""
        self._require(a)
        self._require(b)
        if lost in (a, b):
            return False
        seen, frontier = {a}, [a]
        while frontier:
            for d in self._adjacency[frontier.pop()]:
                if d not in seen and d != lost:
                    seen.add(d)
                    frontier.append(d)
        return b in seen

    def route(self, a: str, b: str) -> list[str]:
        """Device path from `a` to `b`, both included (see the module docstring for the rule)."""
        self._require(a)
        self._require(b)
        if a == b:
            return [a]
        path = self._routes.get((a, b))
        if path is None:
            raise SpecError(f"cluster {self.name!r}: no route from {a!r} to {b!r}")
        return list(path)

    def route_links(self, a: str, b: str) -> list[Link]:
        """The links along route(a, b), in travel order (empty when a == b)."""
        path = self.route(a, b)
        return [self._link_index[frozenset(hop)] for hop in pairwise(path)]

    def with_bandwidth_cap(self, mbps: float) -> ClusterSpec:
        """A copy with every link's bandwidth limited to `mbps` (the DISNET evaluation's cap)."""
        cap = _positive("bandwidth cap (Mbit/s)", mbps)
        capped = tuple(replace(link, mbps=min(link.mbps, cap)) for link in self.links)
        return replace(self, links=capped)

    def with_source_sink(self, source: str, sink: str) -> ClusterSpec:
        """A copy with another source (holds the input) and sink (needs the result)."""
        return replace(self, source=source, sink=sink)

    def to_dict(self) -> dict[str, Any]:
        """This spec as a `disnet-cluster/1` mapping that load_cluster reads back equal."""
        devices = []
        for d in self.devices.values():
            entry: dict[str, Any] = {"id": d.id}
            if d.address is not None:
                entry["address"] = d.address
            entry["gflops"] = d.gflops
            entry["power"] = {
                "compute": d.power.compute_w,
                "transmit": d.power.transmit_w,
                "receive": d.power.receive_w,
                "idle": d.power.idle_w,
            }
            if d.memory_mb is not None:
                entry["memory_mb"] = d.memory_mb
            devices.append(entry)
        links = [
            {"a": ln.a, "b": ln.b, "mbps": ln.mbps, "latency_ms": ln.latency_s * 1000.0} for ln in self.links
        ]
        return {
            "format": CLUSTER_FORMAT,
            "name": self.name,
            "source": self.source,
            "sink": self.sink,
            "devices": devices,
            "links": links,
        }

    def to_yaml(self) -> str:
        """to_dict() as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def _require(self, dev: str) -> None:
        if dev not in self.devices:
            raise SpecError(f"cluster {self.name!r}: unknown device {dev!r}")

    @cached_property
    def memory_limited(self) -> bool:
        """Whether some device's memory is limited (planners check weights against it only then)."""
        return any(d.memory_mb is not None for d in self.devices.values())

    @cached_property
    def _link_index(self) -> dict[frozenset[str], Link]:
        return {frozenset((ln.a, ln.b)): ln for ln in self.links}

    @cached_property
    def _adjacency(self) -> dict[str, tuple[str, ...]]:
        near: dict[str, set[str]] = {dev: set() for dev in self.devices}
        for ln in self.links:
            near[ln.a].add(ln.b)
            near[ln.b].add(ln.a)
        return {dev: tuple(d for d in self.devices if d in near[dev]) for dev in self.devices}

    @cached_property
    def _routes(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """All-pairs routes, computed once: one Dijkstra per device, each pair solved from its
        earlier-declared end and mirrored, so that routes are symmetric by construction."""
        order = {dev: i for i, dev in enumerate(self.devices)}
        routes: dict[tuple[str, str], tuple[str, ...]] = {}
        for a in self.devices:
            for b, path in self._fastest_paths_from(a, order).items():
                if order[b] <= order[a]:
                    continue
                if self.link(a, b) is not None:
                    path = (a, b)
                routes[(a, b)] = path
                routes[(b, a)] = path[::-1]
        return routes

    def _fastest_paths_from(self, start: str, order: dict[str, int]) -> dict[str, tuple[str, ...]]:
        """Dijkstra on the key (sum of 1/mbps, hops, device-order path); exact Fractions make
        ties real ties instead of rounding noise."""
        ids = self.device_ids
        done: dict[str, tuple[str, ...]] = {}
        heap: list[tuple[Fraction, int, tuple[int, ...]]] = [(Fraction(0), 0, (order[start],))]
        while heap:
            cost, hops, path = heapq.heappop(heap)
            dev = ids[path[-1]]
            if dev in done:
                continue
            done[dev] = tuple(ids[i] for i in path)
            for nxt in self._adjacency[dev]:
                if nxt not in done:
                    step = 1 / Fraction(self._link_index[frozenset((dev, nxt))].mbps)
                    heapq.heappush(heap, (cost + step, hops + 1, path + (order[nxt],)))
        return done


# ---------------------------------------------------------------------------------------------
# Loading


def load_cluster(
    path: str | Path,
    *,
    gflops_per_rate: float | None = None,
    bandwidth_cap: float | None = None,
) -> ClusterSpec:
    """Load a `disnet-mesh/1` JSON or `disnet-cluster/1` YAML file; raise SpecError if invalid.

    `gflops_per_rate` (GFLOP/s per unit of compute_rate) overrides the file's setting (default
    1.0). `bandwidth_cap` (Mbit/s) is applied on top of any cap the file sets.
    """
    path = Path(path)
    return parse_cluster(
        _read(path), origin=str(path), gflops_per_rate=gflops_per_rate, bandwidth_cap=bandwidth_cap
    )


def parse_cluster(
    data: Any,
    *,
    origin: str = "<dict>",
    gflops_per_rate: float | None = None,
    bandwidth_cap: float | None = None,
) -> ClusterSpec:
    """Build a ClusterSpec from an already parsed mapping; `origin` names it in error messages."""
    rate = None if gflops_per_rate is None else _positive("gflops_per_rate", gflops_per_rate)
    try:
        if not isinstance(data, dict):
            raise SpecError("expected a mapping at the top level")
        fmt = data.get("format")
        if fmt == MESH_FORMAT:
            spec, file_cap = _MeshFile.model_validate(data).build(rate), None
            ignored = _mesh_extras(data)
            if ignored:
                log.warning("%s: ignored (not %s fields): %s", origin, MESH_FORMAT, ", ".join(ignored))
        elif fmt == CLUSTER_FORMAT:
            model = _ClusterFile.model_validate(data)
            spec, file_cap = model.build(rate, Path(origin).stem), model.bandwidth_cap_mbps
        else:
            raise SpecError(f"format: expected {MESH_FORMAT!r} or {CLUSTER_FORMAT!r}, got {fmt!r}")
        unreachable = [d for d in spec.device_ids if not spec.reachable(spec.source, d)]
        if unreachable:
            raise SpecError(
                f"links: devices unreachable from source {spec.source!r}: " + ", ".join(unreachable)
            )
    except ValidationError as exc:
        raise SpecError(describe_validation_error(origin, exc)) from None
    except SpecError as exc:
        raise SpecError(f"{origin}: {exc}") from None
    if file_cap is not None:
        spec = spec.with_bandwidth_cap(file_cap)
    if bandwidth_cap is not None:
        spec = spec.with_bandwidth_cap(bandwidth_cap)
    return spec


def complete_cluster(
    name: str, gflops: dict[str, float], mbps: float, *, source: str | None = None, sink: str | None = None
) -> ClusterSpec:
    """Devices of the given speeds (GFLOP/s, in order), every pair joined by a link of ``mbps``; source
    and sink the first and last device unless named. The least a cluster needs, for tests and benches
    of the runtime where the topology is not what they study."""
    ids = list(gflops)
    return parse_cluster(
        {
            "format": CLUSTER_FORMAT,
            "name": name,
            "source": source or ids[0],
            "sink": sink or ids[-1],
            "devices": [{"id": d, "gflops": g, "power": COMPLETE_CLUSTER_POWER} for d, g in gflops.items()],
            "links": [{"a": a, "b": b, "mbps": mbps} for i, a in enumerate(ids) for b in ids[i + 1 :]],
        },
        origin=name,
    )


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read cluster file ({exc})") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text, object_pairs_hook=_unique_keys)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: invalid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: invalid YAML: {exc}") from None
    except _DuplicateKey as exc:
        raise SpecError(f"{path}: duplicate key {exc.args[0]!r} in a JSON object") from None


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object hook: a repeated key (e.g. a device id) is an error, not a silent overwrite."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _positive(name: str, value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise SpecError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


_Pos = Annotated[float, Field(gt=0)]
_NonNeg = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    """Unknown keys are typos; numeric YAML ids such as `0` are read as the string "0"."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True, frozen=True)


class _Power(_Strict):
    compute: _Pos
    transmit: _NonNeg
    receive: _NonNeg
    idle: _NonNeg

    def build(self) -> PowerProfile:
        return PowerProfile(self.compute, self.transmit, self.receive, self.idle)


class _MeshDevice(_Strict):
    model_config = ConfigDict(extra="ignore")
    compute_rate: _Pos
    power_w: _Power
    memory_mb: _Pos | None = None  # not in the DISNET files; honoured where a user's file sets it


class _MeshFile(_Strict):
    model_config = ConfigDict(extra="ignore")
    format: Literal["disnet-mesh/1"]
    name: str
    devices: dict[str, _MeshDevice] = Field(min_length=1)
    links: list[tuple[str, str, _Pos]]
    source: str
    sink: str

    def build(self, gflops_per_rate: float | None) -> ClusterSpec:
        rate = 1.0 if gflops_per_rate is None else gflops_per_rate
        devices = {
            dev_id: Device(dev_id, None, d.compute_rate * rate, d.power_w.build(), d.memory_mb)
            for dev_id, d in self.devices.items()
        }
        links = tuple(Link(a, b, mbps, DEFAULT_LATENCY_S) for a, b, mbps in self.links)
        return ClusterSpec(self.name, devices, links, self.source, self.sink)


def _mesh_extras(data: dict) -> list[str]:
    """The fields of a valid mesh file that mean nothing to disnet (other tools may add their own, so
    they are named in a warning rather than refused)."""
    top = [k for k in data if k not in _MeshFile.model_fields and k != "description"]
    devices = [
        f"devices.{dev_id}.{k}"
        for dev_id, fields in data["devices"].items()
        for k in fields
        if k not in _MeshDevice.model_fields
    ]
    return top + devices


class _ClusterDevice(_Strict):
    id: str = Field(min_length=1)
    address: str | None = None
    gflops: _Pos | None = None
    compute_rate: _Pos | None = None
    power: _Power
    memory_mb: _Pos | None = None

    @field_validator("address")
    @classmethod
    def _host_port(cls, address: str | None) -> str | None:
        if address is None:
            return None
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise PydanticCustomError("address", "expected host:port with a port in 1..65535")
        return address

    @model_validator(mode="after")
    def _one_speed(self) -> _ClusterDevice:
        if (self.gflops is None) == (self.compute_rate is None):
            raise PydanticCustomError("speed", "give exactly one of gflops or compute_rate")
        return self

    def build(self, gflops_per_rate: float) -> Device:
        gflops = self.gflops if self.gflops is not None else self.compute_rate * gflops_per_rate
        return Device(self.id, self.address, gflops, self.power.build(), self.memory_mb)


class _ClusterLink(_Strict):
    a: str
    b: str
    mbps: _Pos
    latency_ms: _NonNeg = DEFAULT_LATENCY_S * 1000.0


class _ClusterFile(_Strict):
    format: Literal["disnet-cluster/1"]
    name: str | None = None
    description: str | None = None
    gflops_per_rate: _Pos = 1.0
    bandwidth_cap_mbps: _Pos | None = None
    devices: list[_ClusterDevice] = Field(min_length=1)
    links: list[_ClusterLink] = []
    source: str
    sink: str

    def build(self, gflops_per_rate: float | None, default_name: str) -> ClusterSpec:
        rate = self.gflops_per_rate if gflops_per_rate is None else gflops_per_rate
        devices: dict[str, Device] = {}
        for i, d in enumerate(self.devices):
            if d.id in devices:
                raise SpecError(f"devices.{i}.id: duplicate device id {d.id!r}")
            devices[d.id] = d.build(rate)
        links = tuple(Link(ln.a, ln.b, ln.mbps, ln.latency_ms / 1000.0) for ln in self.links)
        return ClusterSpec(self.name or default_name, devices, links, self.source, self.sink)
