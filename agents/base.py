"""What every planner shares: the Planner interface and the plan-building helpers several planners use.

A planner turns what may be known at decision time (a `Snapshot`: the cluster, the available devices,
measured speeds and bandwidths, source and sink) into a `Plan` for one graph under an `Objective`.
Planners that search score candidates on the `CostModel`; one model is built lazily per (graph,
cluster) and kept, because its per-plan skeleton cache is what makes re-scoring a plan cheap.

The helpers here are what several planners have in common:

- shares proportional to effective speed (`speed_shares`), plans from ``(start, end, devices)``
  stage drafts (`build_plan`);
- weight memory per device (`memory_use`, `fits_memory`): a device holds the weights of every stage
  it computes in, and must not exceed its `memory_mb`;
- route airtime over the measured links (`route_seconds_per_byte`).

Completing a plan *shape* (cut points and a split factor per stage) into devices and shares is
env/completion.py's job, shared by the PPO environment and the optimiser.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import ClassVar

from env.cost_model import CostModel, Objective
from env.snapshot import Snapshot
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.spec import ClusterSpec

StageDraft = tuple[int, int, tuple[str, ...]]  # (start unit, end unit, devices in band order)


class PlannerError(ValueError):
    """A planner cannot be built or cannot produce a plan (unknown name, bad option, nothing fits)."""


class CutOff(PlannerError):
    """The snapshot's links carry nothing from the source, or to the sink, through any device that can
    compute: no plan serves it while those rates hold. Unlike the other errors this one can pass (an
    outage ends, and a request sent now waits it out)."""


@dataclass(frozen=True)
class Decision:
    """A planner's answer and what its caller must know about it.

    ``fallback`` names why the planner did not plan as designed (e.g. a policy that cannot read this
    cluster answered with the single best device); None when it planned. ``bound`` is a certified lower
    bound on the objective over the whole plan space (only planners that prove one set it) and ``score``
    the objective the planner predicted for ``plan``; their ratio is the optimality gap.
    """

    plan: Plan
    fallback: str | None = None
    score: float | None = None
    bound: float | None = None

    @property
    def gap(self) -> float | None:
        """``score / bound - 1``: how far the plan can be from the best plan at most (None without both)."""
        if self.score is None or self.bound is None or self.bound <= 0:
            return None
        return self.score / self.bound - 1.0


class Planner(abc.ABC):
    """Decides a plan for one request from a snapshot. Subclasses set ``name`` and implement ``plan``.

    ``cost_model`` may be given when the caller already holds one for the graph and cluster the
    planner will see; otherwise one is built on first use and cached (a few at most), on the given
    model's compute profile when it has one for that graph's model (a planner that meets another
    cluster keeps planning on what the hardware does).
    """

    name: ClassVar[str]
    _MODELS_KEPT: ClassVar[int] = 4

    def __init__(self, cost_model: CostModel | None = None) -> None:
        self._models: dict[tuple[int, int], CostModel] = {}
        self._profile = None if cost_model is None else cost_model.profile
        if cost_model is not None:
            self._models[(id(cost_model.graph), id(cost_model.spec))] = cost_model

    @abc.abstractmethod
    def plan(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Plan:
        """A valid plan that assigns work only to devices in ``snapshot.available``."""

    def decide(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Decision:
        """The plan with what the caller must know about it. Planners that can fall back or that prove
        a bound override this; ``plan`` stays the plain answer."""
        return Decision(self.plan(snapshot, graph, objective))

    def cost_model(self, graph: LayerGraph, spec: ClusterSpec) -> CostModel:
        """The cost model for this graph on this cluster (the cached one holds both alive, so the ids
        in the key cannot be reused while it is cached)."""
        key = (id(graph), id(spec))
        model = self._models.get(key)
        if model is None:
            if len(self._models) >= self._MODELS_KEPT:
                self._models.pop(next(iter(self._models)))
            profile = (
                self._profile if self._profile is not None and self._profile.model == graph.name else None
            )
            model = self._models[key] = CostModel(graph, spec, profile)
        return model

    def score(self, plan: Plan, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> float:
        """The objective of ``plan`` as the cost model predicts it under ``snapshot``."""
        model = self.cost_model(graph, snapshot.spec)
        return objective.score(model.predict(plan, snapshot, t0=snapshot.time))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ---- plans from drafts -------------------------------------------------------------------------


def speed_shares(snapshot: Snapshot, devices: Iterable[str]) -> dict[str, float]:
    """Shares proportional to each device's effective speed (nominal GFLOP/s x measured factor)."""
    return {d: snapshot.device_gflops(d) for d in devices}


def build_plan(snapshot: Snapshot, stages: Sequence[StageDraft]) -> Plan:
    """A plan from stage drafts, every stage split in proportion to its devices' speeds."""
    return Plan.build(
        snapshot.source, snapshot.sink, [(s, e, speed_shares(snapshot, devs)) for s, e, devs in stages]
    )


def drafts(plan: Plan) -> list[StageDraft]:
    """The stage drafts of a plan (its shares dropped)."""
    return [(st.start, st.end, st.devices) for st in plan.stages]


def spatial_groups(graph: LayerGraph) -> list[tuple[int, int]]:
    """The groups whose output is split by rows (VGG-16: the 13 conv and 5 pool groups)."""
    return [(s, e) for s, e in graph.groups if graph.stage_kind(e) == "spatial"]


def usable(snapshot: Snapshot) -> list[str]:
    """Available devices in the cluster's declaration order (a fixed order keeps planners seeded); a
    PlannerError when none is, since no planner can place anything then."""
    devices = [d for d in snapshot.spec.device_ids if d in snapshot.available]
    if not devices:
        raise PlannerError(f"no device of {snapshot.spec.name} is available to plan on")
    return devices


# ---- memory --------------------------------------------------------------------------------------


def memory_use(stages: Iterable[StageDraft], graph: LayerGraph) -> dict[str, int]:
    """Weight bytes each device must hold: the sum over the stages it computes in."""
    used: dict[str, int] = {}
    for start, end, devices in stages:
        nbytes = graph.stage_param_bytes(start, end)
        for d in devices:
            used[d] = used.get(d, 0) + nbytes
    return used


def memory_left(spec: ClusterSpec, device: str, used: Mapping[str, int]) -> float:
    """Bytes of weights ``device`` can still take (infinite when its memory is not limited)."""
    mb = spec.devices[device].memory_mb
    return math.inf if mb is None else mb * 1e6 - used.get(device, 0)


def within_memory(plan: Plan, graph: LayerGraph, spec: ClusterSpec, scheme: str) -> Plan:
    """``plan``, or a PlannerError naming the device whose memory ``scheme``'s rule overfills: the scheme
    cannot serve this cluster (its plan would be impossible, and a table would compare against it)."""
    for device, need in memory_use(drafts(plan), graph).items():
        if memory_left(spec, device, {}) < need:
            raise PlannerError(
                f"{scheme} cannot serve this cluster: its rule puts {need / 1e6:.1f} MB of "
                f"{graph.name}'s weights on {device}, which has {spec.devices[device].memory_mb:g} MB"
            )
    return plan


def fits_memory(plan: Plan | Sequence[StageDraft], graph: LayerGraph, spec: ClusterSpec) -> bool:
    """Whether every device can hold the weights of all the stages it computes in."""
    if not spec.memory_limited:
        return True
    stages = drafts(plan) if isinstance(plan, Plan) else plan
    return all(memory_left(spec, d, {}) >= b for d, b in memory_use(stages, graph).items())


# ---- network -----------------------------------------------------------------------------------


def route_seconds_per_byte(snapshot: Snapshot, a: str, b: str) -> float:
    """Store-and-forward seconds per byte from a to b over the measured links of ``spec.route``."""
    if a == b:
        return 0.0
    path = snapshot.spec.route(a, b)
    return sum(snapshot.transfer_time(x, y, 1.0, snapshot.time) for x, y in pairwise(path))
