"""Many cameras, one mesh: several concurrent streams served on one cluster, each on its own plan.

A streams file (``disnet-streams/1`` YAML, validated by pydantic) names each stream's source and sink
device, model, frame rate and p95 latency SLO::

    format: disnet-streams/1
    frames: 30            # per stream
    planning: joint       # joint (agents/streams.py) or independent (each stream planned alone)
    streams:
      - {name: door, source: "8", sink: "4", model: vgg16_bn, fps: 0.3, slo_s: 6}
      - {name: yard, source: "1", sink: "4", model: vgg16_bn, slo_s: 6}   # no fps: the planned rate

``serve_streams`` runs them open loop: frame ``k`` of a stream arrives at ``phase + k / fps`` whether or
not the cluster keeps up, and its latency counts from its arrival. Each stream is a lane of the controller
(runtime/controller.py): its own plan, its own replanner when a worker dies, with an ``Adaptation`` its
own re-plans and rescues as the links move (the single-stream loop's policies, kept to the stream's
devices), and its requests never move to another stream's plan. Every output is checked against the unsplit model; the report gives per stream
the frames per second sustained, p50 / p95 latency, SLO misses, lost frames and wrong outputs.

Every time is the emulated cluster's, as the controller reports it: under a time dilation D
(runtime/emulation.py) the run takes D x as long on the wall clock and frame ``k`` is submitted
``D (phase + k / fps)`` wall seconds in, but arrivals, latencies, rates, chaos times and the drain are
emulated seconds, so a run at any D measures the same cluster.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agents.base import Planner
from agents.streams import LATENCY, Demand, JointPlanner, LanePlanner, StreamsPlan, plan_independently
from env.contention import Contention
from env.cost_model import CostModel
from env.snapshot import Snapshot
from env.telemetry import LiveView
from runtime import models
from runtime.config import describe_validation_error
from runtime.controller import Controller, ControllerError, Replanner, Result
from runtime.exactness import Reference, matches, reference_pool
from runtime.graph import LayerGraph
from runtime.plan import Plan
from serving.gil import prompt_switches
from serving.heap import setup_frozen
from serving.loop import ServeOptions
from serving.policies import Adaptive, Decider, Rescue

FORMAT = "disnet-streams/1"


class StreamsFileError(ValueError):
    """A streams file that cannot be used; the message names the file and the field."""


class StreamSpec(BaseModel):
    """One camera: where its frames come from and go to, its model, frame rate and p95 SLO."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    source: str
    sink: str
    model: str
    fps: float | None = Field(default=None, gt=0)  # None: the rate the planner finds for all streams
    slo_s: float = Field(gt=0)

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        models.input_shape(model)  # a zoo name or an importable model of the user's, else ModelError
        return model


class StreamsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["disnet-streams/1"]
    frames: int = Field(default=30, ge=1)
    planning: Literal["joint", "independent"] = "joint"
    streams: list[StreamSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> StreamsFile:
        names = [s.name for s in self.streams]
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must be unique: {names}")
        if len({s.model for s in self.streams}) > 1:
            raise ValueError("every stream of one run must use the same model (one cluster serves one model)")
        return self


def load_streams(path: str | Path, devices: Sequence[str] | None = None) -> StreamsFile:
    """Read and validate a streams file; ``devices`` (the cluster's) checks every source and sink."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise StreamsFileError(f"{path}: cannot read: {exc}") from None
    try:
        streams = StreamsFile.model_validate(data)
    except ValidationError as exc:
        raise StreamsFileError(describe_validation_error(str(path), exc)) from None
    if devices is not None:
        for i, s in enumerate(streams.streams):
            for role in ("source", "sink"):
                if getattr(s, role) not in devices:
                    raise StreamsFileError(
                        f"{path}: streams.{i}.{role}: device {getattr(s, role)!r} is not in the cluster "
                        f"({', '.join(devices)})"
                    )
    return streams


@dataclass(frozen=True)
class Frame:
    """One served frame: its stream, index, arrival and completion (emulated s since the run began),
    latency and check."""

    stream: str
    index: int
    arrival_s: float
    done_s: float
    latency_s: float
    exact: bool
    attempts: int


@dataclass
class StreamReport:
    """What one stream got: the figures of the per-stream table and JSON."""

    name: str
    fps_target: float
    slo_s: float
    sent: int
    completed: int
    lost: int
    wrong: int
    fps_sustained: float
    p50_s: float
    p95_s: float
    slo_misses: int

    @property
    def met(self) -> bool:
        """Kept up (>= 90% of its rate), p95 within the SLO, nothing lost, every output exact."""
        return (
            self.lost == 0
            and self.wrong == 0
            and self.p95_s <= self.slo_s
            and self.fps_sustained >= 0.9 * self.fps_target
        )


@dataclass
class StreamsRun:
    """Every frame of a run and each stream's report."""

    reports: list[StreamReport]
    frames: list[Frame] = field(repr=False)
    events: list[tuple[float, str]] = field(default_factory=list)  # (time s, what happened)

    def summary(self) -> dict:
        return {
            "streams": [vars(r) | {"met": r.met, "slo_s": _finite(r.slo_s)} for r in self.reports],
            "events": [{"t_s": t, "event": e} for t, e in self.events],
        }


def _finite(x: float) -> float | None:
    """``x``, or None (JSON null) for an SLO of infinity: a stream with none."""
    return x if math.isfinite(x) else None


def sustained_fps(done_s: Sequence[float]) -> float:
    """Frames per second between the first and the last completion (0 with fewer than two)."""
    if len(done_s) < 2:
        return 0.0
    span = max(done_s) - min(done_s)
    return (len(done_s) - 1) / span if span > 0 else math.inf


def report(stream: StreamSpec, fps: float, sent: int, frames: Sequence[Frame]) -> StreamReport:
    """The per-stream figures from the frames of ``stream`` that came back."""
    latency = np.array([f.latency_s for f in frames])
    has = latency.size > 0
    return StreamReport(
        name=stream.name,
        fps_target=float(fps),  # a planner's rate may be a numpy float: ``met`` would be a numpy bool
        slo_s=stream.slo_s,
        sent=sent,
        completed=len(frames),
        lost=sent - len(frames),
        wrong=sum(not f.exact for f in frames),
        fps_sustained=sustained_fps([f.done_s for f in frames]),
        p50_s=float(np.percentile(latency, 50)) if has else math.nan,
        p95_s=float(np.percentile(latency, 95)) if has else math.nan,
        slo_misses=int((latency > stream.slo_s).sum()),
    )


Chaos = tuple[float, Callable[[], None], str]  # (emulated seconds into the run, action, description)


@dataclass(frozen=True)
class Adaptation:
    """How ``serve_streams`` re-plans each lane as conditions move, as serving one stream does
    (serving/loop.py): after a frame of a lane when a link, a device's speed or the devices up that the
    lane's plan depends on moved by more than ``threshold`` (relative), never merely every N frames (a
    lane's frames come many times faster than one request after another, and each plan takes the robust
    optimiser seconds of CPU that the host's emulated devices share), and while frames run, restarting one whose plan conditions collapsed under
    (``rescue_margin``; None: never). Each lane plans with ``planner`` kept to its own devices
    (``LanePlanner``), on the cluster's live view as the stream sees it, in the background (plans are
    taken up when done: a frame never waits for one, the other streams' arrivals keep their times), on
    one thread for every lane, and a new plan replaces the lane's when it gains ``margin`` of its score."""

    planner: Planner
    graph: LayerGraph
    threshold: float = ServeOptions.threshold
    margin: float | None = ServeOptions.replan_margin
    rescue_margin: float | None = ServeOptions.rescue_margin


def serve_streams(
    ctl: Controller,
    streams: Sequence[StreamSpec],
    plans: Sequence[Plan],
    fps: Sequence[float],
    frames: int,
    reference: Reference,
    *,
    replanners: Mapping[str, Replanner] | None = None,
    adaptation: Adaptation | None = None,
    chaos: Sequence[Chaos] = (),
    seed: int = 0,
    input_pool: int = 4,
    drain_s: float | None = None,
    on_frame: Callable[[Frame], None] | None = None,
    restart_clock: bool = False,
) -> StreamsRun:
    """Serve ``frames`` frames of each stream open loop, stream ``i`` on ``plans[i]`` at ``fps[i]``.

    Streams are evenly phased (stream ``i`` starts ``i / (n fps_i)`` s in). ``chaos`` actions (e.g. kill a
    worker) run at their time. After the last arrival the run waits up to ``drain_s`` (default: 4 x the
    largest finite SLO + 30 s; with no finite SLO, the arrivals' span stands in for it) for the frames
    still out; those that never come back are lost. Rates and times are in the controller's emulated time
    (``ctl.now()``: wall time / its dilation). Without an ``adaptation`` a lane is re-planned only when a
    worker of its plan dies (by its ``replanners`` entry; the controller's fallback without one); with
    one, as the ``Adaptation`` says (every lane). ``restart_clock``: the links' and speeds' schedules
    start again at t=0 as the first frame is due, once everything is set up (``Controller.restart_clock``).
    """
    if not (len(streams) == len(plans) == len(fps)):
        raise ValueError("one plan and one rate per stream")
    pool = reference_pool(reference, ctl.input_shape, input_pool, seed)
    lanes = _Lanes(ctl, streams, plans, adaptation)
    for s, plan in zip(streams, plans, strict=True):
        lanes.start(s, plan, (replanners or {}).get(s.name))
    slos = [s.slo_s for s in streams if math.isfinite(s.slo_s)]
    longest = max(slos) if slos else frames / min(fps)  # no SLO at all: as long as the arrivals last
    drain = drain_s if drain_s is not None else 4 * longest + 30.0
    loop = _OpenLoop(ctl, streams, pool, on_frame, lanes)
    try:
        with setup_frozen(), prompt_switches():  # a lane's planning must not stall the others' frames
            if restart_clock:
                ctl.restart_clock()
            loop.run(arrivals(fps, frames), chaos, drain)
    finally:
        lanes.close()
    # frames never sent (a run stopped early) count as sent and lost
    reports = [
        report(s, fps[i], frames, [f for f in loop.served if f.stream == s.name])
        for i, s in enumerate(streams)
    ]
    return StreamsRun(reports, loop.served, sorted(loop.events))  # a swap is told after its frame


class _Lanes:
    """Each stream's lane of the controller and what keeps its plan: a replanner for dead workers, or
    with an ``Adaptation`` an ``Adaptive`` keeper per lane (and their ``Rescue`` watchers, called
    together while frames run)."""

    def __init__(
        self, ctl: Controller, streams: Sequence[StreamSpec], plans: Sequence[Plan], adapt: Adaptation | None
    ):
        self.ctl = ctl
        self.keepers: dict[str, Adaptive] = {}
        self.rescues: list[Rescue] = []
        self.told: dict[str, int] = {}  # swaps per lane already handed out by ``after_frame``
        if adapt is None:
            return
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="planner")
        live = LiveView(ctl.spec, ctl)
        for s, plan in zip(streams, plans, strict=True):
            decide = Decider(LanePlanner(adapt.planner, plan.devices), adapt.graph, LATENCY)
            keeper = Adaptive(
                ctl,
                decide,
                lambda s=s: lane_view(live.snapshot(), s),
                adapt.threshold,
                adapt.margin,
                plan_wait_s=0.0,
                lane=s.name,
                thread=self.thread,
            )
            self.keepers[s.name] = keeper
            if adapt.rescue_margin is not None:
                self.rescues.append(Rescue(keeper, adapt.rescue_margin))

    def start(self, stream: StreamSpec, plan: Plan, replan: Replanner | None) -> None:
        """Deploy ``plan`` on the stream's lane and attach what keeps it."""
        keeper = self.keepers.get(stream.name)
        if keeper is not None:
            keeper.start(plan)
            replan = keeper.for_devices
        else:
            self.ctl.deploy(plan, lane=stream.name)
        self.ctl.attach(replan, self._watch if self.rescues else None, lane=stream.name)

    def _watch(self) -> None:
        for rescue in self.rescues:
            rescue()

    def after_frame(self, stream: str) -> list[tuple[float, Plan]]:
        """A frame of ``stream`` came back: (controller time, plan) of every plan its lane swapped in since
        the last one (mid-frame, by a rescue, or now)."""
        keeper = self.keepers.get(stream)
        if keeper is None:
            return []
        keeper.after_request(due=False)
        told, self.told[stream] = self.told.get(stream, 0), len(keeper.swapped)
        return keeper.swapped[told:]

    def close(self) -> None:
        """The watchers leave (the cluster may serve another run) and the planning stops."""
        if not self.keepers:
            return
        for name, keeper in self.keepers.items():
            self.ctl.attach(keeper.for_devices, None, lane=name)
            keeper.close()
        self.thread.shutdown(wait=False, cancel_futures=True)


def arrivals(fps: Sequence[float], frames: int) -> list[tuple[float, int, int]]:
    """(arrival s, stream, frame) of every frame in arrival order, stream ``i`` phased ``i / n`` of its
    period behind the first."""
    n = len(fps)
    return sorted(((k + i / n) / fps[i], i, k) for i in range(n) for k in range(frames))


class _OpenLoop:
    """Frames submitted at their arrival times whether or not the cluster keeps up, results collected as
    they come back."""

    def __init__(
        self,
        ctl: Controller,
        streams: Sequence[StreamSpec],
        pool: Sequence[tuple[torch.Tensor, torch.Tensor]],
        on_frame: Callable[[Frame], None] | None,
        lanes: _Lanes,
    ):
        self.ctl, self.streams, self.pool, self.on_frame, self.lanes = ctl, streams, pool, on_frame, lanes
        self.out: dict[int, tuple[int, int, float]] = {}  # rid -> (stream, frame, arrival)
        self.served: list[Frame] = []
        self.events: list[tuple[float, str]] = []

    def run(self, due: Sequence[tuple[float, int, int]], chaos: Sequence[Chaos], drain_s: float) -> None:
        """Submit the ``due`` frames and run the ``chaos`` at their times, until every frame is back or
        ``drain_s`` have passed since the last arrival."""
        pending_chaos = sorted(chaos, key=lambda c: c[0])
        start = self.ctl.now()
        next_due = 0
        try:
            while next_due < len(due) or self.out:
                now = self.ctl.now() - start
                while next_due < len(due) and due[next_due][0] <= now:
                    self._submit(*due[next_due])
                    next_due += 1
                while pending_chaos and pending_chaos[0][0] <= now:
                    _, action, what = pending_chaos.pop(0)
                    action()
                    self.events.append((now, what))
                if next_due == len(due) and now > due[-1][0] + drain_s:
                    break
                self._collect(start)
        except ControllerError as exc:  # a request that keeps failing: the rest of the run is lost
            self.events.append((self.ctl.now() - start, f"stopped: {exc}"))

    def _submit(self, arrival: float, i: int, k: int) -> None:
        x = self.pool[k % len(self.pool)][0]
        self.out[self.ctl.submit(x, lane=self.streams[i].name)] = (i, k, arrival)

    def _collect(self, start: float) -> None:
        for r in self.ctl.collect(0.02):
            i, k, arrival = self.out.pop(r.rid)
            expected = self.pool[k % len(self.pool)][1]
            done_s = _done_at(self.ctl, r) - start
            name = self.streams[i].name
            self.served.append(_frame(name, k, arrival, done_s, r, expected))
            for at, plan in self.lanes.after_frame(name):
                self.events.append((at - start, f"{name}: re-planned ({plan.describe()})"))
            if self.on_frame is not None:
                self.on_frame(self.served[-1])


def _done_at(ctl: Controller, r: Result) -> float:
    """When the sink held the output, on ``ctl.now()``'s emulated clock: the timeline's "done" instants
    are emulated ones counted from the controller's epoch (runtime/results.py); the moment the result
    arrived here if its telemetry is missing."""
    done = r.timeline.of("done")
    return done[-1]["t"] - ctl.epoch if done else ctl.now()


def _frame(stream: str, k: int, arrival: float, done_s: float, r: Result, expected: torch.Tensor) -> Frame:
    """A result as a served frame: its latency counts from its arrival to the sink holding the output."""
    return Frame(stream, k, arrival, done_s, done_s - arrival, matches(r.output, expected), r.attempts)


def stream_demands(streams: Sequence[StreamSpec]) -> list[Demand]:
    return [Demand(s.source, s.sink, s.slo_s) for s in streams]


def plan_streams(
    streams: Sequence[StreamSpec],
    planning: str,
    planner: Planner,
    cost: CostModel,
    snapshot: Snapshot,
    graph: LayerGraph,
    say: Callable[[str], None] = lambda _msg: None,
) -> StreamsPlan:
    """Each stream's plan and their predicted equal rate, planned ``joint``ly or ``independent``ly
    (``say``: the joint planner's progress)."""
    demands = stream_demands(streams)
    if planning == "joint":
        return JointPlanner(planner, cost, say=say).plan(snapshot, graph, demands)
    if planning == "independent":
        return plan_independently(planner, snapshot, graph, demands, Contention(cost))
    raise ValueError(f"planning must be joint or independent, not {planning!r}")


def lane_view(snapshot: Snapshot, stream: StreamSpec) -> Snapshot:
    """``snapshot`` as ``stream`` sees it: its own source and sink, each replaced by the fastest device up
    when it is down."""
    up = snapshot.available
    fastest = max(sorted(up), key=lambda d: snapshot.spec.devices[d].gflops)
    source = stream.source if stream.source in up else fastest
    sink = stream.sink if stream.sink in up else fastest
    return replace(snapshot, source=source, sink=sink)


def replanner(
    stream: StreamSpec,
    planner: Planner,
    snapshot: Snapshot,
    graph: LayerGraph,
    lane: Collection[str] = (),
) -> Replanner:
    """The plan for ``stream`` when a worker of its plan dies, on ``snapshot``'s rates: what the controller
    asks for. ``lane`` is the devices the stream was planned on (``LanePlanner``)."""
    kept = LanePlanner(planner, lane)

    def replan(available: frozenset[str]) -> Plan:
        view = lane_view(replace(snapshot, available=frozenset(available)), stream)
        return kept.plan(view, graph, LATENCY)

    return replan
