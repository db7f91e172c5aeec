"""What the controller asks for a plan when a device its plan needs goes down: a ``Replanner``, and the
default one, ``fallback_plan``."""

from __future__ import annotations

from collections.abc import Callable

from runtime.plan import Assignment, Plan, Stage
from runtime.results import ControllerError
from runtime.spec import ClusterSpec

Replanner = Callable[[frozenset[str]], Plan]  # the devices up -> a plan over them


def fallback_plan(plan: Plan, available: frozenset[str], spec: ClusterSpec) -> Plan:
    """The default replanner: ``plan`` without the devices that are down.

    A stage left without devices goes to the fastest available device, and so do a source or sink that
    is down (unless the spec's own source or sink is up). Good enough to keep serving until a real
    planner chooses better.
    """
    if not available:
        raise ControllerError("no device is available")
    fastest = max(sorted(available), key=lambda d: spec.devices[d].gflops)
    stages = tuple(
        Stage(
            s.start,
            s.end,
            tuple(a for a in s.assignments if a.device in available) or (Assignment(fastest, 1.0),),
        )
        for s in plan.stages
    )

    def keep(dev: str, default: str) -> str:
        return dev if dev in available else default if default in available else fastest

    return Plan(keep(plan.source, spec.source), keep(plan.sink, spec.sink), stages)
