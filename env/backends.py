"""Where a simulator's requests run: ``sim`` predicts each with the cost model in the trace-driven world,
``live`` executes it on a local cluster of worker processes whose links follow the world's traces.

A backend is asked three things by ``Simulator``: ``reset`` when the simulator enters a world, ``run`` a
request's plan at world time ``t`` (an ``Outcome``), and ``advance`` to the next request's arrival (the
world time it is then).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from env.plan_arrays import PlanArrays
from env.profiles import pacing
from env.snapshot import link_key
from runtime import models
from runtime.exactness import reference_pool, run_checked

if TYPE_CHECKING:
    from env.simulator import Simulator


@dataclass(frozen=True)
class Outcome:
    """What one request cost, as a backend measured or predicted it; ``outputs_match`` is None when no
    output was computed (predicted); ``failed`` when a device the plan touched went down during it;
    ``rescues``: how many times it was restarted on a newer plan when conditions collapsed under it."""

    latency_s: float
    energy_j: float
    outputs_match: bool | None = None
    failed: bool = False
    rescues: int = 0


class SimBackend:
    """Requests predicted by the cost model in the trace-driven world."""

    name = "sim"

    def run(self, sim: Simulator, plan: PlanArrays, t: float) -> Outcome:
        return sim.predicted_outcome(plan, t)

    def reset(self, sim: Simulator) -> None:
        """Nothing to prepare: the world is all the simulator needs."""

    def advance(self, sim: Simulator, t: float) -> float:
        """Simulated time jumps to the next request."""
        return t

    def close(self) -> None:
        """Nothing to release."""


class LiveBackend:
    """Requests executed for real on a ``LocalCluster`` through the runtime's controller.

    One cluster of worker processes per cluster spec, started on first use and kept across episodes;
    on every reset its emulation is reconfigured so that the links follow the new world's bandwidth
    traces and the devices its speed schedules, aligned so that world time ``t`` is "now" on the
    controller's clock. Each step deploys the plan (if it changed), infers one seeded input, and
    reports the measured latency and energy; ``outputs_match`` compares the output with the unsplit
    model's (``runtime.exactness``). Time advances with the wall clock (the gap is slept).
    The world's failure schedule is not enacted: it only shapes what the snapshot says; workers fail
    only for real, in which case the controller retries the request (its latency includes that).
    """

    name = "live"

    def __init__(self, host_gflops: float | None = None, seed: int = 0, start_timeout_s: float = 120.0):
        self.host_gflops = host_gflops
        self.seed = seed
        self.start_timeout_s = start_timeout_s
        self._clusters: dict[str, Any] = {}
        self._cluster = None
        self._offset = 0.0
        self._input: torch.Tensor | None = None
        self._expected: torch.Tensor | None = None

    def reset(self, sim: Simulator) -> None:
        from runtime.cluster import LocalCluster
        from runtime.emulation import Emulation

        spec = sim.world.spec
        cluster = self._clusters.get(spec.name)
        if cluster is None:
            if self.host_gflops is not None:  # paced by CPU time at this speed
                pace: dict[str, Any] = {"host_gflops": self.host_gflops}
            else:  # paced as the simulator predicts (by CPU time at the host's speed for the FLOPs model)
                pace = {} if sim.profile is None else pacing(sim.profile)
            cluster = LocalCluster(
                spec, model=sim.config.model, seed=self.seed, start_timeout_s=self.start_timeout_s, **pace
            )
            cluster.start()
            self._clusters[spec.name] = cluster
        self._cluster = cluster
        ctl = cluster.controller
        self._offset = sim.time - ctl.now()
        world = sim.world
        links = {
            link_key(ln.a, ln.b): world.link_schedule(ln.a, ln.b).shifted(self._offset) for ln in spec.links
        }
        speeds = {d: world.speed_schedule(d).shifted(self._offset) for d in spec.devices}
        ctl.configure(Emulation(cluster.host_gflops, links, speeds, unit_seconds=cluster.unit_seconds))
        if self._input is None:
            unsplit = models.build(sim.config.model, seed=self.seed)
            shape = models.input_shape(sim.config.model)
            ((self._input, self._expected),) = reference_pool(unsplit, shape, 1, self.seed)

    def run(self, sim: Simulator, plan: PlanArrays, t: float) -> Outcome:
        done = run_checked(self._cluster.controller, plan.plan, self._input, self._expected)
        return Outcome(done.result.latency_s, done.result.energy_j, done.exact)

    def advance(self, sim: Simulator, t: float) -> float:
        """Sleep until world time ``t`` (the next request's arrival) and return the world time."""
        ctl = self._cluster.controller
        wait = t - (ctl.now() + self._offset)
        if wait > 0:
            time.sleep(wait)
        return ctl.now() + self._offset

    def close(self) -> None:
        for cluster in self._clusters.values():
            cluster.close()
        self._clusters.clear()


def make_backend(name: str, **options: Any) -> SimBackend | LiveBackend:
    if name == "sim":
        if options:
            raise ValueError(f"the sim backend takes no options, got {sorted(options)}")
        return SimBackend()
    if name == "live":
        return LiveBackend(**options)
    raise ValueError(f"backend must be 'sim' or 'live', not {name!r}")
