"""A periodic piecewise-constant rate series and the exact time it needs to carry B bytes.

One definition shared by the runtime's link shaping (emulation) and by env's traces and cost model, so the
emulated network and the model integrate bandwidth the same way (design.md, rule 4): a transfer that runs
into an outage waits it out, which a point sample of the bandwidth would miss. Values hold from their
timestamp until the next one and the series loops with period ``duration``, so callers pass absolute time.
Units: seconds, bytes, Mbit/s (1 Mbit/s = 125 000 bytes/s).

The routine itself is three plain functions (``locate``, ``segment_at``, ``carry_seconds``) over a trace's
arrays, in the subset of Python that numba compiles: ``Trace``'s scalar methods run them on list mirrors
(a binary search over a list beats a numpy call's fixed overhead), env's cost model compiles the same
functions and runs them over a ``TraceStack`` (many traces in one set of arrays). O(log n) per query;
``bandwidth_at`` is also vectorised with ``np.searchsorted``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

BYTES_PER_MBIT = 1e6 / 8


# ---- the integration routine -------------------------------------------------------------------
# Plain functions over one trace's arrays (or list mirrors) ``times``, ``rate`` (bytes/s) and ``cum`` (bytes
# carried from 0 to ``times[i]``), the trace occupying indices ``[lo, hi)`` so that many traces can share
# one concatenated array (``TraceStack``). They are written in the subset of Python that numba compiles:
# env's cost model and network state compile these very functions, so the runtime's link shaping, Trace's
# scalar methods and the compiled replay integrate bandwidth with one definition. No calls between them:
# a compiled caller chains them itself.


def locate(times, rate, cum, lo: int, hi: int, duration: float, t: float) -> tuple[float, float, float]:
    """Absolute time -> (whole periods, time in period, bytes carried since period start)."""
    k, r = divmod(t, duration)
    if r >= duration:  # divmod of a tiny negative t rounds r up to the period
        k, r = k + 1.0, 0.0
    a, b = lo + 1, hi  # bisect_right(times[lo:hi], r) - 1; times[lo] == 0 <= r
    while a < b:
        m = (a + b) // 2
        if r < times[m]:
            b = m
        else:
            a = m + 1
    i = a - 1
    return k, r, cum[i] + rate[i] * (r - times[i])


def segment_at(times, lo: int, hi: int, duration: float, t: float) -> int:
    """Index of the segment holding absolute time ``t`` (``t % duration``)."""
    r = t % duration
    if r >= duration:  # rounding of a tiny negative t: the last segment
        return hi - 1
    a, b = lo + 1, hi
    while a < b:
        m = (a + b) // 2
        if r < times[m]:
            b = m
        else:
            a = m + 1
    return a - 1


def carry_seconds(
    times,
    rate,
    cum,
    lo: int,
    hi: int,
    duration: float,
    period: float,
    max_rate: float,
    nbytes: float,
    t0: float,
    r0: float,
    c0: float,
) -> float:
    """Seconds to carry ``nbytes`` (> 0) from absolute time ``t0``, whose ``locate`` is ``(_, r0, c0)``.

    Inverts the cumulative-bytes curve, so outages (0 Mbit/s) are waited out and long transfers wrap
    over as many periods as needed. ``period`` (bytes per period) must be > 0.
    """
    target = c0 + nbytes
    # A transfer within rounding error (of the byte sums, and of t0 as a float) of a segment
    # end finishes there, not after the outage that may follow: search for target - slack.
    x = abs(t0) + duration
    slack = 1e-12 * (target + period) + 8 * max_rate * (math.nextafter(x, math.inf) - x)
    slack = min(slack, 1e-6 * period)  # keeps rem - slack in (0, period] below
    extra = math.ceil((target - slack) / period) - 1  # whole periods passed
    rem = target - extra * period
    if rem <= slack:  # the ceil rounded the wrong way
        extra, rem = extra - 1, rem + period
    elif rem - slack > period:
        extra, rem = extra + 1, rem - period
    a, b, v = lo, hi, rem - slack  # bisect_left(cum[lo:hi] + [period], v): cum[j-1] < v <= cum[j]
    while a < b:
        m = (a + b) // 2
        if cum[m] < v:
            a = m + 1
        else:
            b = m
    j = a  # segment j - 1 has a positive rate
    r1 = times[j - 1] + (rem - cum[j - 1]) / rate[j - 1]
    return max(0.0, extra * duration + r1 - r0)


class TraceError(ValueError):
    """A trace file, spec or series is unusable (message names the file/line or field)."""


@dataclass(frozen=True, eq=False)
class Trace:
    """Immutable periodic piecewise-constant bandwidth series.

    `mbps[i]` holds on `[times[i], times[i+1])`, the last value until `duration`, then the series
    repeats. `times[0]` must be 0 and times strictly increasing. `cum_bytes[i]` is the bytes carried
    from 0 to `times[i]` (`cum_bytes[-1]`: one whole period). Arrays are stored read-only, so a
    trace can be shared between environments and links.
    """

    times: np.ndarray
    mbps: np.ndarray
    duration: float
    name: str = "trace"
    cum_bytes: np.ndarray = field(init=False, repr=False)
    rate: np.ndarray = field(init=False, repr=False)  # bytes/s per segment
    _max_rate: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        times = np.array(self.times, dtype=np.float64).reshape(-1)
        mbps = np.array(self.mbps, dtype=np.float64).reshape(-1)
        duration = float(self.duration)
        where = f"trace {self.name!r}"
        if times.size == 0 or times.size != mbps.size:
            raise TraceError(f"{where}: need equal, non-zero numbers of times and values")
        if not (np.isfinite(times).all() and np.isfinite(mbps).all()):
            raise TraceError(f"{where}: times and values must be finite")
        if times[0] != 0.0:
            raise TraceError(f"{where}: times must start at 0, got {times[0]}")
        spans = np.diff(times)
        if (spans <= 0).any():
            raise TraceError(f"{where}: times must be strictly increasing")
        if (mbps < 0).any():
            raise TraceError(f"{where}: bandwidth must be >= 0 Mbit/s")
        if not (math.isfinite(duration) and duration > times[-1]):
            raise TraceError(f"{where}: duration {duration} must exceed the last time {times[-1]}")
        self._store(times, mbps, duration, spans)

    def _store(self, times: np.ndarray, mbps: np.ndarray, duration: float, spans: np.ndarray) -> None:
        """Set the series (float64 arrays, made read-only; ``spans``: the times' differences) and what
        follows from it: rate and cum_bytes."""
        rate = mbps * BYTES_PER_MBIT
        cum = np.empty(times.size + 1)
        cum[0] = 0.0
        np.cumsum(rate * np.append(spans, duration - times[-1]), out=cum[1:])
        for arr in (times, mbps, rate, cum):
            arr.setflags(write=False)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "mbps", mbps)
        object.__setattr__(self, "duration", duration)
        object.__setattr__(self, "cum_bytes", cum)
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "_max_rate", float(rate.max()))

    def _derived(self, times: np.ndarray, mbps: np.ndarray, name: str) -> Trace:
        """A trace of the same duration made from this valid one by an operation that keeps it valid
        (scale, cap, shift): the checks of ``__post_init__`` are skipped, as an episode reset derives
        dozens of traces."""
        trace = object.__new__(Trace)
        object.__setattr__(trace, "name", name)
        times = np.asarray(times, dtype=np.float64)
        trace._store(times, np.asarray(mbps, dtype=np.float64), self.duration, np.diff(times))
        return trace

    @cached_property
    def _lists(self) -> tuple[list[float], list[float], list[float]]:
        """List mirrors of times, rate and cum_bytes for the scalar queries (a list beats numpy's
        per-call cost there); built on first use, as traces used only through a TraceStack never need
        them."""
        return self.times.tolist(), self.rate.tolist(), self.cum_bytes.tolist()

    def __repr__(self) -> str:
        return (
            f"Trace(name={self.name!r}, segments={self.times.size}, duration={self.duration:g}s, "
            f"mean={self.mean_mbps(0.0, self.duration):.3f}Mbit/s)"
        )

    @property
    def period_bytes(self) -> float:
        """Bytes the link carries in one full period."""
        return float(self.cum_bytes[-1])

    def _split(self, t: float, lists: bool = True) -> tuple[float, float, float]:
        """Absolute time -> (whole periods, time in period, bytes carried since period start); on the
        list mirrors, or (``lists=False``: one-off queries) on the arrays, same values."""
        times, rate, cum = self._lists if lists else (self.times, self.rate, self.cum_bytes)
        return locate(times, rate, cum, 0, len(times), self.duration, t)

    def value_at(self, t: float) -> float:
        """Mbit/s at one absolute time ``t``: the scalar fast path of ``bandwidth_at``."""
        times, rate, _ = self._lists
        return rate[segment_at(times, 0, len(times), self.duration, t)] / BYTES_PER_MBIT

    def bandwidth_at(self, t: float | np.ndarray) -> float | np.ndarray:
        """Mbit/s at absolute time(s) `t` (scalar or array, wraps around the period)."""
        r = np.mod(t, self.duration)  # r may round to `duration`: that is the last segment anyway
        values = self.mbps[np.searchsorted(self.times, r, side="right") - 1]
        return float(values) if np.ndim(values) == 0 else values

    def bytes_between(self, t0: float, t1: float) -> float:
        """Bytes the link can carry in [t0, t1] (exact integral, any number of periods)."""
        if t1 < t0:
            raise ValueError(f"bytes_between needs t0 <= t1, got {t0} > {t1}")
        lists = "_lists" in self.__dict__  # a trace read only through a TraceStack never builds them
        k0, _, c0 = self._split(t0, lists)
        k1, _, c1 = self._split(t1, lists)
        return (k1 - k0) * self.period_bytes + c1 - c0

    def mean_mbps(self, t0: float, t1: float) -> float:
        """Time-weighted mean Mbit/s over [t0, t1]: what a link monitor measures in that window."""
        if t1 == t0:
            return float(self.bandwidth_at(t0))
        return self.bytes_between(t0, t1) / (t1 - t0) / BYTES_PER_MBIT

    def transfer_time(self, nbytes: float, t0: float) -> float:
        """Seconds to carry `nbytes` starting at absolute time `t0` (latency not included).

        Inverts the cumulative-bytes curve, so outages (0 Mbit/s) are waited out and long
        transfers wrap over as many periods as needed.
        """
        if not (nbytes >= 0 and math.isfinite(nbytes)):
            raise ValueError(f"nbytes must be finite and >= 0, got {nbytes}")
        if nbytes == 0:
            return 0.0
        period = self.period_bytes
        if period <= 0:
            raise TraceError(f"trace {self.name!r} carries no bytes in a whole period")
        _, r0, c0 = self._split(t0)
        times, rate, cum = self._lists
        return carry_seconds(
            times, rate, cum, 0, len(times), self.duration, period, self._max_rate, nbytes, t0, r0, c0
        )

    def scaled(self, factor: float) -> Trace:
        """Every value multiplied by `factor` (>= 0)."""
        if not (factor >= 0 and math.isfinite(factor)):
            raise ValueError(f"scale factor must be finite and >= 0, got {factor}")
        return self._derived(self.times, self.mbps * factor, f"{self.name}*{factor:g}")

    def capped(self, max_mbps: float) -> Trace:
        """Values limited to `max_mbps` (e.g. a radio's peak rate)."""
        if not max_mbps >= 0:
            raise ValueError(f"cap must be >= 0 Mbit/s, got {max_mbps}")
        mbps = np.minimum(self.mbps, max_mbps)
        return self._derived(self.times, mbps, f"{self.name}<={max_mbps:g}")

    def shifted(self, offset_s: float) -> Trace:
        """The same loop started `offset_s` seconds in: new(t) == old(t + offset_s)."""
        o = float(offset_s) % self.duration
        if o >= self.duration:
            o = 0.0
        i = int(np.searchsorted(self.times, o, side="right")) - 1
        times = np.concatenate(([0.0], self.times[i + 1 :] - o, self.times[: i + 1] + self.duration - o))
        mbps = np.concatenate((self.mbps[i:], self.mbps[: i + 1]))
        # drop empty pieces: the tail piece when o is a segment start, or ones lost to rounding
        keep = np.append(times[1:], self.duration) > times
        return self._derived(times[keep], mbps[keep], f"{self.name}@{o:g}s")

    def window(self, t0: float, length_s: float) -> Trace:
        """The series over [t0, t0 + length_s) as a loop of period ``length_s``: new(t) == old(t0 + t)
        for 0 <= t < length_s, then again. What the link would do if those seconds repeated."""
        if not (length_s > 0 and math.isfinite(length_s) and math.isfinite(t0)):
            raise ValueError(f"a window needs a finite start and a length > 0, got {t0}, {length_s}")
        start = self.shifted(t0)
        laps = math.ceil(length_s / self.duration)
        times = np.concatenate([start.times + k * self.duration for k in range(laps)])
        mbps = np.tile(start.mbps, laps)
        keep = times < length_s
        return Trace(times[keep], mbps[keep], length_s, f"{self.name}[{t0:g}+{length_s:g}s]")


def constant(mbps: float, duration: float = 1.0) -> Trace:
    """A link that always carries ``mbps``."""
    return Trace([0.0], [mbps], duration, f"constant({mbps:g})")


@dataclass(frozen=True, eq=False)
class TraceStack:
    """Several traces in one set of concatenated arrays, for compiled or vectorised queries.

    Trace ``i`` occupies indices ``[lo[i], hi[i])`` of ``times``, ``mbps``, ``rate`` (bytes/s) and ``cum``;
    ``duration``, ``period`` (bytes per period) and ``max_rate`` hold one value per trace. Pass the slices
    to ``locate``, ``segment_at`` and ``carry_seconds`` (env compiles them and loops over many queries).
    """

    traces: tuple[Trace, ...]
    times: np.ndarray = field(init=False, repr=False)
    mbps: np.ndarray = field(init=False, repr=False)
    rate: np.ndarray = field(init=False, repr=False)
    cum: np.ndarray = field(init=False, repr=False)
    lo: np.ndarray = field(init=False, repr=False)
    hi: np.ndarray = field(init=False, repr=False)
    duration: np.ndarray = field(init=False, repr=False)
    period: np.ndarray = field(init=False, repr=False)
    max_rate: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        traces = tuple(self.traces)
        sizes = np.array([tr.times.size for tr in traces], dtype=np.int64)
        hi = np.cumsum(sizes)
        arrays = {
            "traces": traces,
            "times": np.concatenate([tr.times for tr in traces]) if traces else np.zeros(0),
            "mbps": np.concatenate([tr.mbps for tr in traces]) if traces else np.zeros(0),
            "rate": np.concatenate([tr.rate for tr in traces]) if traces else np.zeros(0),
            "cum": np.concatenate([tr.cum_bytes[:-1] for tr in traces]) if traces else np.zeros(0),
            "lo": hi - sizes,
            "hi": hi,
            "duration": np.array([tr.duration for tr in traces], dtype=np.float64),
            "period": np.array([tr.period_bytes for tr in traces], dtype=np.float64),
            "max_rate": np.array([tr._max_rate for tr in traces], dtype=np.float64),
        }
        for name, value in arrays.items():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.traces)
