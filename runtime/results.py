"""What a controller hands back: a request's ``Result``, the ``InFlight`` view of a running attempt, and
the errors it raises.

``result_of`` turns a finished request (its output and its workers' telemetry) into a ``Result`` on the
emulated cluster's clock: latency counts from its first attempt, energy includes what its abandoned
attempts spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from runtime.attempts import PendingRequest
from runtime.deployment import Deployment
from runtime.plan import Plan
from runtime.spec import ClusterSpec
from runtime.timeline import Timeline, build_timeline, undilated

DEFAULT_LANE = ""  # the lane of ``infer``, ``stream`` and ``deploy`` without a lane


class ControllerError(RuntimeError):
    """The cluster cannot do what was asked (no plan, no live workers, a request that keeps failing)."""


class RequestFailed(ControllerError):
    """A worker reported an error that re-running the request will not fix."""


@dataclass(frozen=True)
class Result:
    rid: int
    output: torch.Tensor
    latency_s: float  # source holds the input (of the first attempt) -> sink holds the whole output
    energy_j: float  # the timeline's, plus the radio and compute of abandoned attempts (rescued or re-run)
    timeline: Timeline
    plan: Plan
    wall_s: float  # controller hands the input over -> controller has the result
    attempts: int
    rescues: int = 0  # attempts abandoned by ``restart`` (counted in ``attempts``)
    verified: bool | None = None  # recomputed locally and equal (False: a mismatch); None: not sampled


@dataclass(frozen=True)
class InFlight:
    """A request whose attempt is running, as ``Controller.in_flight`` reports it."""

    rid: int
    plan: Plan
    current: bool  # its plan is the plan in force
    elapsed_s: float  # since its current attempt was sent
    progress: float  # fraction of the attempt's radio bytes (every hop) already carried, 0..1
    rescues: int
    lane: str = DEFAULT_LANE


def result_of(
    p: PendingRequest,
    plan: Plan,
    parts: dict[str, Deployment],
    spec: ClusterSpec,
    epoch: float,
    dilation: float,
    verified: bool | None,
) -> tuple[Result, list[dict[str, Any]]]:
    """The result of finished request ``p`` (run on ``plan``, whose parts were ``parts``), and its
    telemetry events (on the controller's clock) for the controller's measurements."""
    events = [e for evs in p.telemetry.values() for e in evs]
    starts = [e["t"] for e in events if e["ev"] == "input"]
    # a restarted request's latency includes the time its abandoned attempts ran
    latency = (p.done_at - starts[0] if starts else p.received - p.sent) + p.sent - p.first_sent
    d = dilation
    complete = set(parts) <= set(p.telemetry)
    timeline = build_timeline(spec, parts, [undilated(e, epoch, d) for e in events], latency / d, complete)
    energy = sum(t.energy_j for t in timeline.devices.values()) + p.abandoned_j / d
    result = Result(
        p.rid,
        p.output,
        latency / d,
        energy,
        timeline,
        plan,
        (p.received - p.submitted) / d,
        p.attempts,
        p.rescues,
        verified,
    )
    return result, events
