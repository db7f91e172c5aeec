"""The time-varying world a plan runs in, and the part of it a planner may observe.

`NetworkState` is the whole truth: one bandwidth `Trace` per direct link, a speed factor schedule per
device (1.0 = the spec's nominal gflops) and the intervals during which each device is gone. The cost
model and the runtime's link shaping read it; planners never do. They get a `Snapshot`: what a
monitor on the devices could have measured up to time t (windowed mean bandwidths, recent per-second
history, speed factors, who is up), never anything after t.

Both answer per *direct* link only; routes over relays are the cost model's job (`spec.route`).

Failure evidence is what a monitor's heartbeats show: per device, the failures (up -> down transitions)
seen over the last ``failure_window_s`` seconds and the seconds it was seen up, from which
``Snapshot.failure_rate`` estimates how often it fails. ``NetworkState.foresight`` is the opposite of a
snapshot, for evaluation only: the world's true future over a request, for the clairvoyant reference.

`DynamicsConfig` (pydantic, the `dynamics:` section of a training config) says how the world
changes; `NetworkState.sample(spec, dynamics, rng)` draws one world from it, e.g. per episode. The
default config is a static world: every link constant at its spec bandwidth, speed 1, no failures.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from numba import njit
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PlainSerializer,
    PositiveFloat,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from env.traces import Trace, TraceSource, constant, markov_outages, random_walk
from runtime import schedule
from runtime.config import describe_validation_error
from runtime.schedule import BYTES_PER_MBIT, TraceStack
from runtime.spec import ClusterSpec, Link


class NetworkError(ValueError):
    """A dynamics config or network state is invalid, or a query names a link that does not exist."""


def link_key(a: str, b: str) -> tuple[str, str]:
    """The canonical key of the undirected link a-b: the sorted pair."""
    return (a, b) if a <= b else (b, a)


def _direct_link(spec: ClusterSpec, a: str, b: str) -> Link:
    link = spec.link(a, b)
    if link is None:
        raise NetworkError(
            f"cluster {spec.name!r}: no direct link {a}-{b} (multi-hop routes go through spec.route)"
        )
    return link


# ---------------------------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class Snapshot:
    """What a planner may know at decision time `time`: measurements of the past only.

    `speed[d]` is the measured speed factor of device d (1.0 = nominal gflops), `link_mbps` the recent
    measured bandwidth per direct link and `link_history` its per-second means, oldest first, both
    keyed by `link_key`. Costs derived from a snapshot assume these values hold from now on.
    `failures[d]` counts the times device d was seen to fail over the last `failure_window_s` seconds
    and `uptime_s[d]` the seconds it was seen up in them (devices without an entry: no evidence).
    """

    time: float
    spec: ClusterSpec
    source: str
    sink: str
    available: frozenset[str]
    speed: dict[str, float]
    link_mbps: dict[tuple[str, str], float]
    link_history: dict[tuple[str, str], tuple[float, ...]]
    failure_window_s: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    uptime_s: dict[str, float] = field(default_factory=dict)

    def device_gflops(self, d: str) -> float:
        """Effective GFLOP/s of device `d` at its measured speed."""
        return self.spec.devices[d].gflops * self.speed[d]

    def failure_rate(self, d: str) -> float:
        """Failures per second of device `d` while up, as its evidence shows them (failures seen over
        seconds seen up; 0 without a failure seen)."""
        seen = self.failures.get(d, 0)
        return seen / max(self.uptime_s.get(d, 0.0), 1.0) if seen else 0.0

    def transfer_time(self, a: str, b: str, nbytes: float, t: float) -> float:
        """Seconds to send `nbytes` over the direct link a-b at its measured bandwidth (no latency);
        infinite if the link measured 0. `t` is accepted for the conditions interface and unused."""
        _direct_link(self.spec, a, b)
        if nbytes == 0:
            return 0.0
        mbps = self.link_mbps[link_key(a, b)]
        return nbytes * 8 / (mbps * 1e6) if mbps > 0 else math.inf

    def latency(self, a: str, b: str) -> float:
        """Propagation latency of the direct link a-b, from the spec."""
        return _direct_link(self.spec, a, b).latency_s

    def speed_at(self, d: str, t: float) -> float:
        """Measured speed factor of `d` (constant over the future as far as a snapshot knows)."""
        return self.speed[d]

    @cached_property
    def rates(self) -> Rates:
        """The snapshot as arrays for the compiled cost model: constant measured rates."""
        return Rates(
            True,
            _NO_TRACES,
            np.array([self.link_mbps[link_key(ln.a, ln.b)] for ln in self.spec.links], dtype=np.float64),
            _NO_TRACES,
            np.array([self.speed[d] for d in self.spec.devices], dtype=np.float64),
        )

    @cached_property
    def link_windows(self) -> np.ndarray:
        """(links in spec order, 1 + H): each link's windowed mean, then its per-second history
        right-aligned, a shorter history padded on the left with the mean (H: the longest history)."""
        keys = [link_key(ln.a, ln.b) for ln in self.spec.links]
        width = max((len(self.link_history[k]) for k in keys), default=0)
        rows = []
        for k in keys:
            hist, mean = self.link_history[k], self.link_mbps[k]
            rows.append((mean, *(mean,) * (width - len(hist)), *hist))
        return np.array(rows, dtype=np.float64).reshape(len(keys), 1 + width)


@dataclass(frozen=True)
class Rates:
    """Conditions as arrays, what the compiled cost model reads: links in ``spec.links`` order, devices in
    ``spec.devices`` order. A world has trace stacks; a snapshot has empty stacks and the constant
    measured values (Mbit/s per link, speed factor per device) it assumes from now on."""

    constant: bool
    links: TraceStack
    link_mbps: np.ndarray
    speeds: TraceStack
    speed: np.ndarray


_NO_TRACES = TraceStack(())


@njit(cache=True)
def _window_means(times, mbps, rate, cum, lo, hi, duration, period, t, window_s, history, n_windows):
    """``Trace.mean_mbps`` (same routine, same float operations) of every stacked trace over the
    snapshot's windows at ``t``: [t - window_s, t], then the one-second windows ending at
    t - history + 1, ..., t (all clipped at 0); the first ``n_windows`` of them."""
    out = np.empty((lo.size, n_windows))
    for w in range(n_windows):
        if w == 0:
            t0, t1 = max(0.0, t - window_s), t
        else:
            t0, t1 = max(0.0, (t - history) + (w - 1)), max(0.0, (t - history) + w)
        for i in range(lo.size):
            if t1 == t0:
                out[i, w] = mbps[_segment_at(times, lo[i], hi[i], duration[i], t0)]
            else:
                k0, _, c0 = _locate(times, rate, cum, lo[i], hi[i], duration[i], t0)
                k1, _, c1 = _locate(times, rate, cum, lo[i], hi[i], duration[i], t1)
                out[i, w] = ((k1 - k0) * period[i] + c1 - c0) / (t1 - t0) / BYTES_PER_MBIT
    return out


# the one integration routine (runtime/schedule.py), compiled into the kernels that call it
_locate = njit(schedule.locate)
_segment_at = njit(schedule.segment_at)
_carry_seconds = njit(schedule.carry_seconds)


def window_means(stack: TraceStack, t: float, window_s: float, history: int, n_windows: int) -> np.ndarray:
    """(traces, windows) means of ``_window_means``'s windows."""
    return _window_means(
        stack.times, stack.mbps, stack.rate, stack.cum, stack.lo, stack.hi, stack.duration, stack.period,
        float(t), float(window_s), history, n_windows,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ config


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _to_source(value: Any, info: ValidationInfo) -> TraceSource:
    """Build (and so load and check) a trace source at config time; relative paths are resolved
    against the `base_dir` of the validation context (the config file's folder)."""
    if isinstance(value, TraceSource):
        return value
    base_dir = (info.context or {}).get("base_dir")
    return TraceSource(value, base_dir=base_dir, origin="trace")


_Source = Annotated[
    TraceSource,
    BeforeValidator(_to_source),
    PlainSerializer(lambda source: source.spec.model_dump(mode="json"), return_type=dict),
]


class LinkDynamics(_Config):
    """Bandwidth traces per link: `default` for every link (None: constant at the spec bandwidth),
    `per_link` overrides keyed "a-b" (either order). Values are TraceSpecs or a trace file/folder."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    default: _Source | None = None
    per_link: dict[str, _Source] = {}

    @field_validator("per_link", mode="before")
    @classmethod
    def _keys_name_links(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for key in value:
                if not (isinstance(key, str) and "-" in key.strip("-")):
                    raise ValueError(f"key {key!r} must name a link as 'a-b'")
        return value


class NoLoad(_Config):
    """Every device runs at its nominal speed."""

    kind: Literal["none"] = "none"

    def schedule(self, duration: float, rng: np.random.Generator) -> Trace:
        return constant(1.0, duration)


class RandomWalkLoad(_Config):
    """Speed factor follows a mean-reverting random walk clipped to [lo, hi], one value per step."""

    kind: Literal["random_walk"]
    lo: PositiveFloat = 0.3
    hi: PositiveFloat = 1.0
    mean: PositiveFloat | None = None  # None: midway between lo and hi
    sigma: NonNegativeFloat = 0.05
    step_s: PositiveFloat = 1.0
    reversion: Annotated[float, Field(ge=0, le=1)] = 0.1

    @model_validator(mode="after")
    def _ordered(self) -> RandomWalkLoad:
        if self.lo > self.hi:
            raise ValueError(f"lo ({self.lo}) must not exceed hi ({self.hi})")
        if self.mean is not None and not self.lo <= self.mean <= self.hi:
            raise ValueError(f"mean ({self.mean}) must lie in [lo, hi] = [{self.lo}, {self.hi}]")
        return self

    def schedule(self, duration: float, rng: np.random.Generator) -> Trace:
        mean = (self.lo + self.hi) / 2 if self.mean is None else self.mean
        return random_walk(mean, self.sigma, duration, self.step_s, self.lo, self.hi, self.reversion, rng=rng)


class MarkovLoad(_Config):
    """Speed factor jumps between `levels` (e.g. nominal and slowed down) as a Markov chain stepped
    every `step_s`; `transition` is a switch probability or a row-stochastic matrix."""

    kind: Literal["markov"]
    levels: Annotated[list[PositiveFloat], Field(min_length=1)] = [1.0, 0.5]
    transition: Annotated[float, Field(ge=0, le=1)] | list[list[NonNegativeFloat]] = 0.05
    step_s: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _matrix_fits(self) -> MarkovLoad:
        self.schedule(self.step_s, np.random.default_rng(0))  # raises on a bad transition matrix
        return self

    def schedule(self, duration: float, rng: np.random.Generator) -> Trace:
        return markov_outages(self.levels, self.transition, 0.0, self.step_s, duration, self.step_s, rng=rng)


class FailureConfig(_Config):
    """Devices leave and come back: failures arrive at `rate_per_min` per device while it is up (a
    Poisson process), each lasting an exponential time of mean `mean_downtime_s`. `exempt` devices
    never fail (None: the cluster's source and sink)."""

    rate_per_min: NonNegativeFloat = 0.0
    mean_downtime_s: PositiveFloat = 30.0
    exempt: list[str] | None = None

    def downtime(
        self, spec: ClusterSpec, horizon_s: float, rngs: Sequence[np.random.Generator]
    ) -> dict[str, list[tuple[float, float]]]:
        """Down intervals per device, failures starting within [0, horizon_s); one rng per device."""
        exempt = (spec.source, spec.sink) if self.exempt is None else tuple(self.exempt)
        unknown = [d for d in exempt if d not in spec.devices]
        if unknown:
            raise NetworkError(f"failures.exempt: unknown device(s) {unknown} in cluster {spec.name!r}")
        out: dict[str, list[tuple[float, float]]] = {}
        for dev, rng in zip(spec.devices, rngs, strict=True):
            intervals: list[tuple[float, float]] = []
            if self.rate_per_min > 0 and dev not in exempt:
                t = rng.exponential(60.0 / self.rate_per_min)
                while t < horizon_s:
                    end = t + rng.exponential(self.mean_downtime_s)
                    intervals.append((float(t), float(end)))
                    t = end + rng.exponential(60.0 / self.rate_per_min)
            out[dev] = intervals
        return out


class DynamicsConfig(_Config):
    """How the world changes during an episode (defaults: a static world).

    Link traces are post-processed in this order: the TraceSpec's own shift/scale/cap, then
    `scale_to_spec` (the trace's period mean becomes the spec link's Mbit/s, so topology bandwidths
    keep their meaning while the trace supplies the shape), then `bandwidth_cap_mbps`. Load and
    failure schedules are drawn for `horizon_s` seconds: load loops with that period, failures
    start only before it. `seed` is used when `NetworkState.sample` gets no rng.
    """

    links: LinkDynamics = LinkDynamics()
    scale_to_spec: bool = True
    bandwidth_cap_mbps: PositiveFloat | None = None
    load: Annotated[NoLoad | RandomWalkLoad | MarkovLoad, Field(discriminator="kind")] = NoLoad()
    failures: FailureConfig = FailureConfig()
    horizon_s: PositiveFloat = 3600.0
    seed: int = 0

    @classmethod
    def parse(
        cls, data: Any, *, origin: str = "<dict>", base_dir: str | Path | None = None
    ) -> DynamicsConfig:
        """Validate a parsed YAML mapping; errors become a NetworkError naming `origin` and the field.
        Relative trace paths are resolved against `base_dir` (default: the working directory)."""
        try:
            return cls.model_validate(data, context={"base_dir": base_dir})
        except ValidationError as exc:
            raise NetworkError(describe_validation_error(origin, exc)) from None


# ----------------------------------------------------------------------------------- network state


def _child_rngs(rng: np.random.Generator, n: int) -> list[np.random.Generator]:
    """Independent generators, one per link or device, so one item's config leaves the others'
    draws unchanged."""
    return [np.random.default_rng(int(s)) for s in rng.integers(2**63, size=n)]


def _resolve_overrides(
    spec: ClusterSpec, per_link: Mapping[str, TraceSource]
) -> dict[tuple[str, str], TraceSource]:
    """Map "a-b" keys to link keys; ids may contain '-', so try every split that names a link."""
    out: dict[tuple[str, str], TraceSource] = {}
    for name, source in per_link.items():
        keys = {
            link_key(name[:i], name[i + 1 :])
            for i, ch in enumerate(name)
            if ch == "-" and spec.link(name[:i], name[i + 1 :]) is not None
        }
        if len(keys) != 1:
            problem = "names no link" if not keys else "is ambiguous"
            raise NetworkError(f"links.per_link.{name}: {problem} in cluster {spec.name!r}")
        (key,) = keys
        if key in out:
            raise NetworkError(f"links.per_link.{name}: link {key[0]}-{key[1]} given twice")
        out[key] = source
    return out


def _merged(dev: str, intervals: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    out: list[tuple[float, float]] = []
    for t0, t1 in sorted((float(a), float(b)) for a, b in intervals):
        if not (math.isfinite(t0) and t1 > t0):
            raise NetworkError(f"downtime.{dev}: interval ({t0}, {t1}) needs a finite start before its end")
        if out and t0 <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], t1))
        else:
            out.append((t0, t1))
    return tuple(out)


class NetworkState:
    """One realisation of the world: per-link bandwidth traces, per-device speed factor schedules
    (Traces whose values are factors) and down intervals [t0, t1) per device. Times are seconds
    since the episode start. Devices without a speed schedule run at 1.0; without downtime, stay up.
    """

    def __init__(
        self,
        spec: ClusterSpec,
        link_traces: Mapping[tuple[str, str], Trace],
        speed: Mapping[str, Trace] | None = None,
        downtime: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    ) -> None:
        self.spec = spec
        self._links: dict[tuple[str, str], Trace] = {}
        for (a, b), trace in link_traces.items():
            key = link_key(a, b)
            if spec.link(a, b) is None:
                raise NetworkError(f"link_traces: no link {a}-{b} in cluster {spec.name!r}")
            if key in self._links:
                raise NetworkError(f"link_traces: link {a}-{b} given twice")
            self._links[key] = trace
        missing = [f"{ln.a}-{ln.b}" for ln in spec.links if link_key(ln.a, ln.b) not in self._links]
        if missing:
            raise NetworkError(f"link_traces: no trace for link(s) {', '.join(missing)}")
        # both directions of every link: transfer_time is the cost model's innermost call
        self._directed = {**self._links, **{(b, a): trace for (a, b), trace in self._links.items()}}
        for name, given in (("speed", speed), ("downtime", downtime)):
            unknown = sorted(set(given or {}) - set(spec.devices))
            if unknown:
                raise NetworkError(f"{name}: unknown device(s) {unknown} in cluster {spec.name!r}")
        nominal = constant(1.0)
        self._speed = {d: (speed or {}).get(d, nominal) for d in spec.devices}
        self._down = {d: _merged(d, (downtime or {}).get(d, ())) for d in spec.devices}
        self._down_starts = {d: [t0 for t0, _ in iv] for d, iv in self._down.items()}
        self._ever_down = [d for d, iv in self._down.items() if iv]
        # the same traces as arrays: spec order for the compiled cost model; the snapshot's dicts keep
        # the order of `link_traces`
        order = {link_key(ln.a, ln.b): i for i, ln in enumerate(spec.links)}
        self._link_slots = np.array([order[key] for key in self._links], dtype=np.int64)
        self._link_keys = list(self._links)
        stack = TraceStack(tuple(self._links[link_key(ln.a, ln.b)] for ln in spec.links))
        self.rates = Rates(False, stack, np.zeros(0), TraceStack(tuple(self._speed.values())), np.zeros(0))

    @classmethod
    def static(cls, spec: ClusterSpec) -> NetworkState:
        """A constant world: every link at its spec bandwidth, every device at speed 1, always up."""
        return cls(spec, {link_key(ln.a, ln.b): constant(ln.mbps) for ln in spec.links})

    @classmethod
    def sample(
        cls,
        spec: ClusterSpec,
        dynamics: DynamicsConfig | None = None,
        rng: np.random.Generator | None = None,
    ) -> NetworkState:
        """Draw one world: a trace per link, a speed schedule and down intervals per device.
        Without `rng`, `dynamics.seed` seeds the draw (same config and seed, same world)."""
        dynamics = DynamicsConfig() if dynamics is None else dynamics
        rng = np.random.default_rng(dynamics.seed) if rng is None else rng
        link_rng, load_rng, fail_rng = _child_rngs(rng, 3)
        overrides = _resolve_overrides(spec, dynamics.links.per_link)
        traces: dict[tuple[str, str], Trace] = {}
        for link, link_rng_i in zip(spec.links, _child_rngs(link_rng, len(spec.links)), strict=True):
            key = link_key(link.a, link.b)
            source = overrides.get(key, dynamics.links.default)
            if source is None:
                trace = constant(link.mbps)
            else:
                trace = source.sample(link_rng_i)
                if dynamics.scale_to_spec:
                    mean = trace.mean_mbps(0.0, trace.duration)
                    if mean <= 0:
                        raise NetworkError(f"link {link.a}-{link.b}: trace {trace.name!r} has mean 0 Mbit/s")
                    trace = trace.scaled(link.mbps / mean)
            if dynamics.bandwidth_cap_mbps is not None:
                trace = trace.capped(dynamics.bandwidth_cap_mbps)
            traces[key] = trace
        n = len(spec.devices)
        speed = {
            d: dynamics.load.schedule(dynamics.horizon_s, r)
            for d, r in zip(spec.devices, _child_rngs(load_rng, n), strict=True)
        }
        downtime = dynamics.failures.downtime(spec, dynamics.horizon_s, _child_rngs(fail_rng, n))
        return cls(spec, traces, speed, downtime)

    def link_schedule(self, a: str, b: str) -> Trace:
        """The bandwidth trace of the direct link a-b (the runtime shapes the link with it)."""
        _direct_link(self.spec, a, b)
        return self._links[link_key(a, b)]

    def speed_schedule(self, d: str) -> Trace:
        """Device `d`'s speed factor over time, as a Trace of factors."""
        return self._speed[d]

    def down_intervals(self, d: str) -> tuple[tuple[float, float], ...]:
        """Sorted, disjoint [t0, t1) intervals during which device `d` is gone."""
        return self._down[d]

    def transfer_time(self, a: str, b: str, nbytes: float, t: float) -> float:
        """Seconds to carry `nbytes` over the direct link a-b from time `t` (trace integration,
        latency not included)."""
        trace = self._directed.get((a, b))
        if trace is None:
            _direct_link(self.spec, a, b)  # raises the usual error
        return trace.transfer_time(nbytes, t)

    def bandwidth_at(self, a: str, b: str, t: float) -> float:
        """Instantaneous Mbit/s of the direct link a-b at time `t`."""
        return float(self.link_schedule(a, b).bandwidth_at(t))

    def latency(self, a: str, b: str) -> float:
        """Propagation latency of the direct link a-b, from the spec."""
        return _direct_link(self.spec, a, b).latency_s

    def speed_at(self, d: str, t: float) -> float:
        """Speed factor of device `d` at time `t` (1.0 = nominal gflops)."""
        return self._speed[d].value_at(t)

    def available_at(self, d: str, t: float) -> bool:
        """Whether device `d` is up at time `t`."""
        i = bisect_right(self._down_starts[d], t) - 1
        return i < 0 or t >= self._down[d][i][1]

    def down_during(self, devices: Iterable[str], t0: float, t1: float) -> bool:
        """Whether one of ``devices`` is down at some moment of [t0, t1]."""
        return any(start <= t1 and end > t0 for d in devices for start, end in self._down[d])

    def failure_evidence(self, t: float, window_s: float) -> tuple[dict[str, int], dict[str, float]]:
        """Per device, the failures that began in (t - window_s, t] and the seconds it was up in
        [t - window_s, t] (clipped at 0): what heartbeats over that window show."""
        lo = max(0.0, t - window_s)
        failures, uptime = dict.fromkeys(self.spec.devices, 0), dict.fromkeys(self.spec.devices, t - lo)
        for d in self._ever_down:  # the snapshot's hot path: most devices never fail
            intervals = self._down[d]
            down = sum(max(0.0, min(end, t) - max(start, lo)) for start, end in intervals if start < t)
            failures[d] = sum(lo < start <= t for start, _ in intervals)
            uptime[d] = t - lo - down
        return failures, uptime

    def foresight(self, t: float, horizon_s: float) -> Snapshot:
        """The world's true future over [t, t + horizon_s] as a snapshot, for evaluation only: the mean
        bandwidth and speed of every link and device over it, the devices up throughout it, and the
        world's own rates, so that the cost model prices a plan on the traces themselves."""
        if not (t >= 0 and horizon_s > 0):
            raise NetworkError(f"foresight needs t >= 0 and horizon_s > 0 (got {t}, {horizon_s})")
        t1 = t + horizon_s
        snap = Snapshot(
            time=t,
            spec=self.spec,
            source=self.spec.source,
            sink=self.spec.sink,
            available=frozenset(d for d in self.spec.devices if not self.down_during((d,), t, t1)),
            speed={d: trace.mean_mbps(t, t1) for d, trace in self._speed.items()},
            link_mbps={key: trace.mean_mbps(t, t1) for key, trace in self._links.items()},
            link_history={key: () for key in self._links},
        )
        # the cost model integrates the world's traces from t; the completion reads the means
        means = replace(self.rates, link_mbps=snap.rates.link_mbps, speed=snap.rates.speed)
        snap.__dict__["rates"] = means
        return snap

    def snapshot(
        self, t: float, window_s: float = 5.0, history: int = 8, failure_window_s: float = 300.0
    ) -> Snapshot:
        """What monitors measured up to `t`: time-weighted means over [t - window_s, t] of each link's
        bandwidth and each device's speed factor, the last `history` one-second link means (oldest
        first), who is up at `t`, and each device's failures and uptime over the last
        `failure_window_s` seconds. Windows are clipped at time 0, where the world begins."""
        if not (t >= 0 and window_s >= 0 and history >= 0 and failure_window_s >= 0):
            raise NetworkError(
                "snapshot needs t >= 0, window_s >= 0, history >= 0, failure_window_s >= 0 "
                f"(got {t}, {window_s}, {history}, {failure_window_s})"
            )
        links = window_means(self.rates.links, t, window_s, history, 1 + history)  # spec order
        speed = window_means(self.rates.speeds, t, window_s, history, 1)[:, 0]
        mine = links[self._link_slots]  # the order of the dicts
        keys = self._link_keys
        failures, uptime = self.failure_evidence(t, failure_window_s)
        snap = Snapshot(
            time=t,
            spec=self.spec,
            source=self.spec.source,
            sink=self.spec.sink,
            available=frozenset(d for d in self.spec.devices if self.available_at(d, t)),
            speed=dict(zip(self._speed, speed.tolist(), strict=True)),
            link_mbps=dict(zip(keys, mine[:, 0].tolist(), strict=True)),
            link_history=dict(zip(keys, map(tuple, mine[:, 1:].tolist()), strict=True)),
            failure_window_s=min(t, failure_window_s),
            failures=failures,
            uptime_s=uptime,
        )
        # what Snapshot.rates and .link_windows would compute from these dicts
        snap.__dict__["rates"] = Rates(True, _NO_TRACES, links[:, 0].copy(), _NO_TRACES, speed)
        snap.__dict__["link_windows"] = links
        return snap
