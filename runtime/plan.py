"""Plan: where each part of one inference runs.

A plan names the source device (holds the input), the sink device (needs the output) and an ordered list
of stages. A stage covers units ``[start, end)`` and splits the output of its last unit among devices in
the listed order: rows for a spatial stage, features for a flat one. Shares are relative weights,
turned into integer sizes by the largest remainder method; devices that end up with zero rows are
dropped. Plans are plain data: JSON in, JSON out, and ``validate`` says exactly what is wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from runtime.halo import Rows, contiguous_ranges, split_by_shares

PLAN_FORMAT = "disnet-plan/1"


class PlanError(ValueError):
    """A plan that cannot run on the given graph or cluster; the message names the stage and device."""


@dataclass(frozen=True)
class Assignment:
    device: str
    share: float


@dataclass(frozen=True)
class Stage:
    start: int
    end: int
    assignments: tuple[Assignment, ...]

    @cached_property
    def devices(self) -> tuple[str, ...]:
        """The assigned devices in listed order (computed once: searches ask for them many times)."""
        return tuple(a.device for a in self.assignments)


@dataclass(frozen=True)
class Band:
    """The part of a stage's output one device computes."""

    device: str
    rows: Rows


@dataclass(frozen=True)
class Plan:
    source: str
    sink: str
    stages: tuple[Stage, ...]

    @classmethod
    def build(cls, source: str, sink: str, stages: Iterable[tuple[int, int, dict[str, float]]]) -> Plan:
        """Convenience constructor: ``stages`` as ``(start, end, {device: share})``."""
        return cls(
            str(source),
            str(sink),
            tuple(
                Stage(s, e, tuple(Assignment(str(d), float(w)) for d, w in shares.items()))
                for s, e, shares in stages
            ),
        )

    @property
    def devices(self) -> set[str]:
        """Every device the plan touches, source and sink included."""
        return {self.source, self.sink} | {d for st in self.stages for d in st.devices}

    def bands(self, graph) -> list[list[Band]]:
        """Per stage, the non-empty output range of each device, in listed order."""
        result = []
        for stage in self.stages:
            sizes = split_by_shares(graph.extent(stage.end), [a.share for a in stage.assignments])
            ranges = contiguous_ranges(sizes)
            result.append(
                [Band(a.device, r) for a, r in zip(stage.assignments, ranges, strict=True) if r[1] > r[0]]
            )
        return result

    # ---- validation ----------------------------------------------------------------------------
    def validate(self, graph, devices: Iterable[str] | None = None) -> Plan:
        """Raise ``PlanError`` on the first problem found; return the plan itself when it is valid."""
        known = set(devices) if devices is not None else None
        n = len(graph.units)
        if not self.stages:
            raise PlanError("plan has no stages")
        for role, dev in (("source", self.source), ("sink", self.sink)):
            if known is not None and dev not in known:
                raise PlanError(f"{role} device {dev!r} is not in the cluster")
        expected_start = 0
        for i, stage in enumerate(self.stages):
            where = f"stage {i} [{stage.start}, {stage.end})"
            if not (0 <= stage.start < stage.end <= n):
                raise PlanError(f"{where}: unit range outside the model's {n} units")
            if stage.start < expected_start:
                raise PlanError(f"{where}: overlaps the previous stage, which ends at {expected_start}")
            if stage.start > expected_start:
                raise PlanError(f"{where}: units [{expected_start}, {stage.start}) are not in any stage")
            if stage.end not in graph.cut_points:
                unit = graph.units[stage.end - 1]
                raise PlanError(
                    f"{where}: cannot cut after unit {stage.end - 1} ({unit.name}); "
                    f"allowed cut points are {graph.cut_points}"
                )
            if not stage.assignments:
                raise PlanError(f"{where}: no devices assigned")
            seen: set[str] = set()
            for a in stage.assignments:
                if known is not None and a.device not in known:
                    raise PlanError(f"{where}: device {a.device!r} is not in the cluster")
                if a.device in seen:
                    raise PlanError(f"{where}: device {a.device!r} is listed twice")
                seen.add(a.device)
                if not (isinstance(a.share, (int, float)) and math.isfinite(a.share) and a.share > 0):
                    raise PlanError(f"{where}: device {a.device!r} has share {a.share!r}; must be > 0")
            extent = graph.extent(stage.end)
            if len(stage.assignments) > extent:
                raise PlanError(
                    f"{where}: {len(stage.assignments)} devices but the output has only {extent} "
                    f"{'rows' if graph.stage_kind(stage.end) == 'spatial' else 'features'}"
                )
            expected_start = stage.end
        if expected_start != n:
            raise PlanError(f"units [{expected_start}, {n}) are not in any stage")
        return self

    # ---- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "source": self.source,
            "sink": self.sink,
            "stages": [
                {
                    "start": s.start,
                    "end": s.end,
                    "assign": [[a.device, a.share] for a in s.assignments],
                }
                for s in self.stages
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        try:
            if data.get("format", PLAN_FORMAT) != PLAN_FORMAT:
                raise PlanError(f"unknown plan format {data.get('format')!r}; expected {PLAN_FORMAT}")
            stages = tuple(
                Stage(
                    int(s["start"]),
                    int(s["end"]),
                    tuple(Assignment(str(d), float(w)) for d, w in s["assign"]),
                )
                for s in data["stages"]
            )
            return cls(str(data["source"]), str(data["sink"]), stages)
        except PlanError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PlanError(f"malformed plan JSON: {type(exc).__name__}: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise PlanError("plan JSON must be an object")
        return cls.from_dict(data)

    def describe(self) -> str:
        """Compact human-readable form, e.g. ``8 -> [0,18) {8:0.4, 9:0.6} -> [18,27) {9} -> 4``."""
        parts = [self.source]
        for s in self.stages:
            devs = ", ".join(f"{a.device}:{a.share:.2g}" for a in s.assignments)
            parts.append(f"[{s.start},{s.end}) {{{devs}}}")
        parts.append(self.sink)
        return " -> ".join(parts)


def random_plan(
    graph,
    devices: list[str],
    rng,
    *,
    max_devices: int = 8,
    max_stages: int | None = None,
    source: str | None = None,
    sink: str | None = None,
) -> Plan:
    """A random valid plan: random cut points, 1..max_devices devices per stage, random band sizes.

    Band sizes are drawn directly as integers (shares equal to row counts), so one-row bands occur.
    ``rng`` is a ``numpy.random.Generator``. Used by tests, calibration and exploration.
    """
    inner = graph.cut_points[1:-1]
    most = len(inner) if max_stages is None else min(len(inner), max_stages - 1)
    cuts = sorted(rng.choice(inner, size=rng.integers(0, most + 1), replace=False).tolist())
    bounds = [0, *cuts, len(graph.units)]
    stages = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        extent = graph.extent(end)
        k = int(rng.integers(1, min(max_devices, len(devices), extent) + 1))
        chosen = rng.choice(devices, size=k, replace=False).tolist()
        sizes = _random_composition(extent, k, rng)
        stages.append((start, end, dict(zip(chosen, sizes, strict=True))))
    src = source if source is not None else str(rng.choice(devices))
    dst = sink if sink is not None else str(rng.choice(devices))
    return Plan.build(src, dst, stages)


def _random_composition(total: int, parts: int, rng) -> list[int]:
    """``parts`` positive integers summing to ``total``, biased towards uneven splits."""
    if parts == 1:
        return [total]
    cuts = sorted(rng.choice(range(1, total), size=parts - 1, replace=False).tolist())
    return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
