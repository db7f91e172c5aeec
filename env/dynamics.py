"""How the world changes: `DynamicsConfig`, the `dynamics:` section of a training or evaluation config.

It says which bandwidth trace each link follows (`LinkDynamics`), how each device's speed factor moves
(`NoLoad`, `RandomWalkLoad`, `MarkovLoad`) and how devices fail (`FailureConfig`). Pydantic validates
it on load, traces included; `NetworkState.sample(spec, dynamics, rng)` (env/network.py) draws one world
from it, e.g. per episode. The default config is a static world: every link constant at its spec
bandwidth, speed 1, no failures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
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

from env.snapshot import NetworkError
from env.traces import Trace, TraceSource, constant, markov_outages, random_walk
from runtime.config import describe_validation_error
from runtime.spec import ClusterSpec


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
    keep their meaning while the trace supplies the shape), then `trace_cap_mbps`. Load and
    failure schedules are drawn for `horizon_s` seconds: load loops with that period, failures
    start only before it. `seed` is used when `NetworkState.sample` gets no rng.
    """

    links: LinkDynamics = LinkDynamics()
    scale_to_spec: bool = True
    trace_cap_mbps: PositiveFloat | None = None
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
