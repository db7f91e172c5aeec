"""The time-varying world a plan runs in: `NetworkState`, the whole truth.

One bandwidth `Trace` per direct link, a speed factor schedule per device (1.0 = the spec's nominal
gflops) and the intervals during which each device is gone. The cost model and the runtime's link
shaping read it; planners never do. They get a `Snapshot` (env/snapshot.py): what monitors measured up
to time t, taken by `NetworkState.snapshot`. `NetworkState.foresight` is the opposite of a snapshot,
for evaluation only: the world's true future over a request, for the clairvoyant reference.

`NetworkState.sample(spec, dynamics, rng)` draws one world from a `DynamicsConfig` (env/dynamics.py).
Both answer per *direct* link only; routes over relays are the cost model's job (`spec.route`).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from env.dynamics import DynamicsConfig
from env.snapshot import FLOOR_MBPS, NO_TRACES, NetworkError, Rates, Snapshot, direct_link, link_key
from env.trace_kernels import window_means
from env.traces import Trace, TraceSource, constant
from runtime.schedule import TraceStack
from runtime.spec import ClusterSpec


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
                    mean = float(trace.mean_mbps(0.0, trace.duration))
                    factor = link.mbps / mean if mean > 0 else math.inf
                    if not math.isfinite(factor):  # mean 0, or so small (subnormal) that the factor overflows
                        raise NetworkError(
                            f"link {link.a}-{link.b}: trace {trace.name!r} has mean {mean:g} Mbit/s, "
                            f"too small to rescale to the link's {link.mbps:g}"
                        )
                    trace = trace.scaled(factor)
            if dynamics.trace_cap_mbps is not None:
                trace = trace.capped(dynamics.trace_cap_mbps)
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
        direct_link(self.spec, a, b)
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
            direct_link(self.spec, a, b)  # raises the usual error
        return trace.transfer_time(nbytes, t)

    def bandwidth_at(self, a: str, b: str, t: float) -> float:
        """Instantaneous Mbit/s of the direct link a-b at time `t`."""
        return float(self.link_schedule(a, b).bandwidth_at(t))

    def latency(self, a: str, b: str) -> float:
        """Propagation latency of the direct link a-b, from the spec."""
        return direct_link(self.spec, a, b).latency_s

    def speed_at(self, d: str, t: float) -> float:
        """Speed factor of device `d` at time `t` (1.0 = nominal gflops)."""
        return self._speed[d].value_at(t)

    def available_at(self, d: str, t: float) -> bool:
        """Whether device `d` is up at time `t`."""
        i = bisect_right(self._down_starts[d], t) - 1
        return i < 0 or t >= self._down[d][i][1]

    def down_during(self, devices: Iterable[str], t0: float, t1: float) -> bool:
        """Whether one of ``devices`` is down at some moment of [t0, t1]."""
        return self.first_down(devices, t0, t1) is not None

    def first_down(self, devices: Iterable[str], t0: float, t1: float) -> float | None:
        """The first moment of [t0, t1] at which one of ``devices`` is down (None: they are up throughout)."""
        moments = [
            max(start, t0) for d in devices for start, end in self._down[d] if start <= t1 and end > t0
        ]
        return min(moments, default=None)

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

    def past_replayed(self, t: float, lookback_s: float) -> NetworkState:
        """The world as the past makes it look from ``t``, for evaluation only: from ``t`` on, every
        link and device repeats its true last ``lookback_s`` seconds (clipped at time 0; with no past,
        the traces' values at 0 hold), over and over; who is down at ``t`` stays down, everyone else
        stays up; a link dark throughout its last seconds carries ``FLOOR_MBPS`` (next to nothing, where
        nothing would never deliver). Nothing after ``t`` is read: a planner priced on it knows the
        past exactly and the future not at all (the hindsight reference, agents/clairvoyant.py)."""
        if not (t >= 0 and lookback_s > 0):
            raise NetworkError(f"past_replayed needs t >= 0 and lookback_s > 0 (got {t}, {lookback_s})")
        past = min(lookback_s, t)

        def replayed(trace: Trace) -> Trace:
            repeated = (
                constant(trace.value_at(0.0)) if past == 0 else trace.window(t - past, past).shifted(-t)
            )
            return repeated if repeated.period_bytes > 0 else constant(FLOOR_MBPS)

        return NetworkState(
            self.spec,
            {key: replayed(trace) for key, trace in self._links.items()},
            {d: replayed(trace) for d, trace in self._speed.items()},
            {d: [(0.0, math.inf)] for d in self.spec.devices if not self.available_at(d, t)},
        )

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
        snap.__dict__["rates"] = Rates(True, NO_TRACES, links[:, 0].copy(), NO_TRACES, speed)
        snap.__dict__["link_windows"] = links
        return snap
