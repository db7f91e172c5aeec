"""Bandwidth traces: periodic piecewise-constant Mbit/s series, their generators and config sources.

A `Trace` is what one link's capacity does over time. Values hold from their timestamp until the
next one and the series loops with period `duration`, so callers pass absolute simulation time and
never handle wrap-around themselves. Transfers integrate the series (design.md, rule 4): a transfer
started in a good second that runs into an outage waits the outage out, which a point sample of the
bandwidth would miss. Units: seconds, bytes, Mbit/s (1 Mbit/s = 125 000 bytes/s).

The `Trace` class itself lives in runtime/schedule.py (the runtime's link shaping integrates the same
series) and is re-exported here.

Sources:
- files: Mahimahi packet-delivery traces (binned), Pensieve/Oboe `time mbps` logs, `time_s,mbps`
  CSV, read by env/trace_files.py;
- generators: constant, mean-reverting random walk, Markov-modulated levels with outages, step drop;
- `TraceSource`: a validated config entry (`TraceSpec`) that yields a fresh randomised trace per
  `sample(rng)`, e.g. one per link per episode.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from numba import njit
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, RootModel
from pydantic import ValidationError as PydanticValidationError

from env.trace_files import load_trace, load_trace_dir
from runtime.config import describe_validation_error
from runtime.schedule import BYTES_PER_MBIT, Trace, TraceError, constant  # noqa: F401  (re-exported)

# ------------------------------------------------------------------------------------- generators


def _steps(duration: float, step: float) -> np.ndarray:
    if not (duration > 0 and step > 0):
        raise TraceError(f"duration ({duration}) and step ({step}) must be > 0")
    times = np.arange(math.ceil(duration / step)) * step
    return times[times < duration]  # ceil may overshoot by one step through rounding


def random_walk(
    mean: float,
    sigma: float,
    duration: float,
    step: float = 1.0,
    lo: float = 0.0,
    hi: float = math.inf,
    reversion: float = 0.1,
    *,
    rng: np.random.Generator,
) -> Trace:
    """Gaussian walk from `mean`: x += reversion*(mean - x) + N(0, sigma), clipped to [lo, hi].

    `reversion` pulls the walk back towards `mean` (0 gives a plain clipped random walk) so long
    traces keep the advertised average instead of drifting to a bound.
    """
    if not (lo <= mean <= hi and sigma >= 0 and 0 <= reversion <= 1):
        raise TraceError(
            f"random_walk needs lo <= mean <= hi, sigma >= 0, 0 <= reversion <= 1 "
            f"(got lo={lo}, mean={mean}, hi={hi}, sigma={sigma}, reversion={reversion})"
        )
    times = _steps(duration, step)
    noise = rng.normal(0.0, sigma, size=times.size)
    values = _walk(float(mean), float(lo), float(hi), float(reversion), noise)
    return Trace(times, values, duration, f"random_walk(mean={mean:g},sigma={sigma:g})")


@njit(cache=True)
def _walk(mean: float, lo: float, hi: float, reversion: float, noise: np.ndarray) -> np.ndarray:
    """The walk's recurrence, compiled: every world draws one 600-sample walk per device per episode,
    which in Python was half of an episode reset. Same operations in the same order as the Python loop
    it replaces, so the same noise gives the same values bit for bit."""
    values = np.empty(noise.size)
    x = mean
    for k in range(noise.size):
        values[k] = x
        x = min(hi, max(lo, x + reversion * (mean - x) + noise[k]))
    return values


def _transition_matrix(n: int, transition: float | Sequence[Sequence[float]]) -> np.ndarray:
    if isinstance(transition, (int, float)):
        if not 0 <= transition <= 1:
            raise TraceError(f"markov_outages: switch probability must be in [0, 1], got {transition}")
        if n == 1:
            return np.ones((1, 1))
        return np.where(np.eye(n, dtype=bool), 1.0 - transition, transition / (n - 1))
    try:
        matrix = np.asarray(transition, dtype=np.float64)
    except ValueError:
        raise TraceError(f"markov_outages: transition must be a {n}x{n} matrix") from None
    if matrix.shape != (n, n) or np.any(matrix < 0) or not np.allclose(matrix.sum(axis=1), 1.0):
        raise TraceError(
            f"markov_outages: transition must be a {n}x{n} row-stochastic matrix "
            f"(non-negative rows summing to 1), got shape {matrix.shape}"
        )
    return matrix


def markov_outages(
    levels_mbps: Sequence[float],
    transition: float | Sequence[Sequence[float]],
    outage_prob: float,
    outage_len: float,
    duration: float,
    step: float = 1.0,
    *,
    rng: np.random.Generator,
) -> Trace:
    """Markov-modulated bandwidth levels interrupted by outages (0 Mbit/s).

    Every `step` seconds the level moves along `transition` (a row-stochastic matrix over
    `levels_mbps`, or a probability of jumping to a uniformly chosen other level). Outside an
    outage, each step starts one of `outage_len` seconds with probability `outage_prob`.
    """
    levels = np.asarray(levels_mbps, dtype=np.float64)
    if levels.ndim != 1 or levels.size == 0 or np.any(levels <= 0):
        raise TraceError(f"markov_outages: levels_mbps must be positive values, got {levels_mbps}")
    if not (0 <= outage_prob < 1 and outage_len > 0):
        raise TraceError(
            f"markov_outages needs 0 <= outage_prob < 1 and outage_len > 0 "
            f"(got outage_prob={outage_prob}, outage_len={outage_len})"
        )
    matrix = _transition_matrix(levels.size, transition)
    times = _steps(duration, step)
    outage_steps = math.ceil(outage_len / step)
    draws = rng.random((times.size, 2))  # per step: outage start?, next level
    state = int(rng.integers(levels.size))
    values = _markov_levels(levels, np.cumsum(matrix, axis=1), draws, state, float(outage_prob), outage_steps)
    return Trace(times, values, duration, f"markov_outages({levels.size} levels,p_out={outage_prob:g})")


@njit(cache=True)
def _markov_levels(
    levels: np.ndarray,
    cum_rows: np.ndarray,
    draws: np.ndarray,
    state: int,
    outage_prob: float,
    outage_steps: int,
) -> np.ndarray:
    """The chain's per-step loop, compiled (a Markov load draws one chain per device per episode). The next
    state is the first level whose cumulative transition probability exceeds the draw (bisect right)."""
    values = np.empty(draws.shape[0])
    down = 0
    for k in range(draws.shape[0]):
        if down == 0 and draws[k, 0] < outage_prob:
            down = outage_steps
        if down > 0:
            values[k] = 0.0
            down -= 1
        else:
            values[k] = levels[state]
        state = min(np.searchsorted(cum_rows[state], draws[k, 1], side="right"), levels.size - 1)
    return values


def step_drop(high: float, low: float, t_drop: float, drop_len: float, duration: float) -> Trace:
    """`high` Mbit/s except `low` during [t_drop, t_drop + drop_len): a scripted degradation."""
    if not (t_drop >= 0 and drop_len > 0 and t_drop + drop_len <= duration):
        raise TraceError(
            f"step_drop needs t_drop >= 0, drop_len > 0 and t_drop + drop_len <= duration "
            f"(got t_drop={t_drop}, drop_len={drop_len}, duration={duration})"
        )
    times = np.array([0.0, t_drop, t_drop + drop_len])
    mbps = np.array([high, low, high])
    keep = np.append(times[1:], duration) > times  # drop empty segments (drop at 0 or at the end)
    return Trace(times[keep], mbps[keep], duration, f"step_drop({high:g}->{low:g}@{t_drop:g}s)")


# --------------------------------------------------------------------------- config-level sources


class _SpecBase(BaseModel):
    """Post-processing shared by all kinds: applied as shift -> scale -> cap on every sample."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    scale: PositiveFloat = 1.0
    cap_mbps: PositiveFloat | None = None
    random_offset: bool = False


class FileTraceSpec(_SpecBase):
    """One trace file (format auto-detected); a random start offset by default."""

    kind: Literal["file"]
    path: Path
    bin_s: PositiveFloat = 0.1
    random_offset: bool = True


class DirTraceSpec(_SpecBase):
    """A folder of trace files: each sample picks one uniformly, with a random start offset."""

    kind: Literal["dir"]
    path: Path
    bin_s: PositiveFloat = 0.1
    random_offset: bool = True


class ConstantTraceSpec(_SpecBase):
    """`constant(mbps, duration)`."""

    kind: Literal["constant"]
    mbps: PositiveFloat
    duration: PositiveFloat = 60.0


class RandomWalkTraceSpec(_SpecBase):
    """`random_walk(...)`, a new walk per sample."""

    kind: Literal["random_walk"]
    mean: PositiveFloat
    sigma: NonNegativeFloat
    duration: PositiveFloat = 600.0
    step: PositiveFloat = 1.0
    lo: NonNegativeFloat = 0.0
    hi: PositiveFloat = math.inf
    reversion: Annotated[float, Field(ge=0, le=1)] = 0.1


class MarkovOutagesTraceSpec(_SpecBase):
    """`markov_outages(...)`, a new realisation per sample."""

    kind: Literal["markov_outages"]
    levels_mbps: Annotated[list[PositiveFloat], Field(min_length=1)]
    transition: Annotated[float, Field(ge=0, le=1)] | list[list[NonNegativeFloat]] = 0.1
    outage_prob: Annotated[float, Field(ge=0, lt=1)] = 0.0
    outage_len: PositiveFloat = 5.0
    duration: PositiveFloat = 600.0
    step: PositiveFloat = 1.0


class StepDropTraceSpec(_SpecBase):
    """`step_drop(...)`: keep `random_offset` false to have the drop at `t_drop`."""

    kind: Literal["step_drop"]
    high: PositiveFloat
    low: NonNegativeFloat
    t_drop: NonNegativeFloat
    drop_len: PositiveFloat
    duration: PositiveFloat


_AnySpec = Annotated[
    FileTraceSpec
    | DirTraceSpec
    | ConstantTraceSpec
    | RandomWalkTraceSpec
    | MarkovOutagesTraceSpec
    | StepDropTraceSpec,
    Field(discriminator="kind"),
]


class TraceSpec(RootModel[_AnySpec]):
    """Config entry describing where a link's traces come from, selected by `kind`.

    YAML examples::

        trace: {kind: dir, path: ../../shared/traces/mahimahi, scale: 2.0, cap_mbps: 20}
        trace: {kind: random_walk, mean: 20, sigma: 2, lo: 1, hi: 40}
        trace: {kind: markov_outages, levels_mbps: [2, 10, 30], transition: 0.1,
                outage_prob: 0.01, outage_len: 3}
        trace: {kind: step_drop, high: 20, low: 2, t_drop: 30, drop_len: 30, duration: 120}

    Fields other than `kind` are the keyword arguments of the loader/generator of the same name,
    plus `scale`, `cap_mbps` and `random_offset` (defaults to true for file and dir kinds).
    """


class TraceSource:
    """A validated `TraceSpec` that yields a fresh trace per `sample(rng)`.

    Files are loaded and generator arguments checked once, at construction, so a bad config fails
    when it is loaded rather than mid-training. `origin` (e.g. the YAML file and key) prefixes
    every error message.
    """

    def __init__(
        self,
        spec: TraceSpec | Mapping | str | os.PathLike,
        *,
        base_dir: str | os.PathLike | None = None,
        origin: str = "trace spec",
    ) -> None:
        def resolve(path: str | os.PathLike) -> Path:
            return Path(base_dir) / path if base_dir is not None else Path(path)

        if isinstance(spec, (str, os.PathLike)):
            spec = {"kind": "dir" if resolve(spec).is_dir() else "file", "path": spec}
        try:
            self.spec = spec.root if isinstance(spec, TraceSpec) else TraceSpec.model_validate(spec).root
        except PydanticValidationError as e:
            raise TraceError(describe_validation_error(origin, e)) from None
        self._traces: list[Trace] = []
        try:
            if isinstance(self.spec, (FileTraceSpec, DirTraceSpec)):
                path = resolve(self.spec.path)
                if isinstance(self.spec, FileTraceSpec):
                    self._traces = [load_trace(path, self.spec.bin_s)]
                else:
                    self._traces = load_trace_dir(path, self.spec.bin_s)
            else:  # one throw-away draw surfaces cross-field errors (e.g. lo > mean) now
                self._generate(np.random.default_rng(0))
        except TraceError as e:
            raise TraceError(f"{origin}: {e}") from None

    def _generate(self, rng: np.random.Generator) -> Trace:
        s = self.spec
        if isinstance(s, ConstantTraceSpec):
            return constant(s.mbps, s.duration)
        if isinstance(s, RandomWalkTraceSpec):
            return random_walk(s.mean, s.sigma, s.duration, s.step, s.lo, s.hi, s.reversion, rng=rng)
        if isinstance(s, MarkovOutagesTraceSpec):
            return markov_outages(
                s.levels_mbps,
                s.transition,
                s.outage_prob,
                s.outage_len,
                s.duration,
                s.step,
                rng=rng,
            )
        assert isinstance(s, StepDropTraceSpec)
        return step_drop(s.high, s.low, s.t_drop, s.drop_len, s.duration)

    def sample(self, rng: np.random.Generator) -> Trace:
        """A trace for one link/episode: base trace (random file or fresh generation), then
        optional random start offset, scale and cap."""
        if self._traces:
            trace = self._traces[int(rng.integers(len(self._traces)))]
        else:
            trace = self._generate(rng)
        if self.spec.random_offset:
            trace = trace.shifted(rng.uniform(0.0, trace.duration))
        if self.spec.scale != 1.0:
            trace = trace.scaled(self.spec.scale)
        if self.spec.cap_mbps is not None:
            trace = trace.capped(self.spec.cap_mbps)
        return trace
