"""Adaptive serving's rescue replayed in the trace-driven world, so the sim prices a request the way
serving runs it when conditions collapse in the middle of it.

Serving watches a running request (serving/policies.py, ``Rescue``): every ``watch_every_s`` it reads
its view; once the view is ``settled`` and conditions that matter to the plan in force ``moved`` by more
than ``threshold``, it asks the planner for a new plan, and restarts the request on it when
``worth_restarting``, at most ``MAX_RESCUES`` times. Without it, a request that meets an outage in the
world waits the outage out (80 s for one VGG-16 request on a Mahimahi recording, docs/benchmarks.md,
thirty-seventh round), which no deployment of disnet does.

The watcher reads the request as the controller's transfer reports show it, from the cost model's
replay of the attempt in the world (``CostModel.midway``): the share of its radio bytes (every hop)
carried so far, and the hops still on the air. Its view is the world's snapshot of the moment, the one
view every decision gets (time-weighted means over the last seconds), with the bound that serving's live
view draws from a transfer still on the air (env/telemetry.py, ``overdue_bounds``): a hop that has run
``DRIFT`` x the time the snapshot gives it, and at least ``OVERDUE_S``, caps its link at its bytes over
the seconds it has run. So the watcher sees a dark link while the first hop it stalls is still on the
air, not once the 5-s mean has fallen. Serving's view also reads a long transfer's rate from its
quarter-second ticks, and moves the links nothing crossed lately when the crossed ones moved together
(its vote); the world's watcher does neither (a first version read each hop on the air at what it
carried over its last half second, and on the Mahimahi recordings restarted 9-31 of a case's 60 requests
where the snapshot alone restarted 0-7, many of them at a loss: docs/benchmarks.md, forty-second round).

An attempt cut short by a rescue is charged the seconds it ran and its energy in proportion. A device
failure during an attempt follows the failure rule (env/simulator.py: the restart once heartbeats find
the device down) with serving's retry: the agent's planner plans for the devices still up at the restart
(the controller's ``replan``), the reference plan only where it finds no plan or the source or sink is
down; the retry is not watched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from env.backends import Outcome
from env.cost_model import CostModel, Midway
from env.network import NetworkState
from env.simulator import charged_in_world
from env.snapshot import Snapshot
from env.telemetry import DRIFT, OVERDUE_S, overdue_bounds
from runtime.controller import WATCH_EVERY_S
from runtime.plan import Plan
from runtime.results import InFlight
from serving.loop import ServeOptions
from serving.rules import MAX_RESCUES, moved, settled, worth_restarting

# the planner's plan for a view (None: it found no plan, and the plan in force stays)
Replan = Callable[[Snapshot], Plan | None]


@dataclass(frozen=True)
class RescueRule:
    """When the watcher looks, and the thresholds of ``moved`` and ``worth_restarting``."""

    watch_every_s: float
    threshold: float
    margin: float


SERVING_RULE = RescueRule(WATCH_EVERY_S, ServeOptions.threshold, ServeOptions.rescue_margin)


def served_in_world(
    cost_model: CostModel,
    world: NetworkState,
    plan: Plan,
    t: float,
    replan: Replan,
    rule: RescueRule = SERVING_RULE,
    view_at: Callable[[float], Snapshot] | None = None,
) -> Outcome:
    """What ``plan``, decided at ``t`` on the world's snapshot of ``t``, costs when served with rescues
    (module docstring). ``view_at`` gives the world's snapshot of a moment (memoise it across planners
    priced on the same request: their watchers look at the same moments)."""
    watch = _Watch(cost_model, world, replan, rule, view_at or world.snapshot, plan, t)
    start, spent_s, spent_j, rescues, cost = t, 0.0, 0.0, 0, None
    while rescues < MAX_RESCUES:
        cost = cost_model.cost(plan, world, start)
        end = start + cost.latency_s
        down = world.first_down(cost_model.skeleton(plan).devices, start, end)
        at = watch.rescue_moment(plan, start, end if down is None else down, rescues)
        if at is None:
            break
        spent_s += at - start
        spent_j += cost.energy_j * ((at - start) / cost.latency_s if cost.latency_s > 0 else 1.0)
        start, plan, rescues, cost = at, watch.in_force, rescues + 1, None
    rest = charged_in_world(cost_model, world, plan, start, cost, retry=replan)
    return Outcome(
        spent_s + rest.latency_s, spent_j + rest.energy_j, rest.outputs_match, rest.failed, rescues
    )


class _Watch:
    """Serving's watcher over one request: the plan in force and the view it was made on."""

    def __init__(
        self,
        cost_model: CostModel,
        world: NetworkState,
        replan: Replan,
        rule: RescueRule,
        view_at: Callable[[float], Snapshot],
        plan: Plan,
        t: float,
    ):
        self.cost_model, self.world, self.replan, self.rule, self.view_at = (
            cost_model,
            world,
            replan,
            rule,
            view_at,
        )
        self.in_force = plan
        self.made_on = self.seen = view_at(t)

    def rescue_moment(self, running: Plan, start: float, stop: float, rescues: int) -> float | None:
        """The first watch in (start, stop) at which the attempt of ``running`` begun at ``start`` is
        restarted on the plan in force (re-planned first if conditions moved), or None."""
        k = 1
        while (w := start + k * self.rule.watch_every_s) < stop:
            k += 1
            midway = self.cost_model.midway(running, self.world, start, w)
            view = bounded_by_hops_on_the_air(self.view_at(w), midway)
            seen, self.seen = self.seen, view
            if not settled(seen, view):
                continue
            if moved(self.in_force, self.made_on, view, self.rule.threshold):
                fresh = self.replan(view)
                self.made_on = view
                self.in_force = self.in_force if fresh is None else fresh
            if self.in_force == running:
                continue
            attempt = InFlight(0, running, False, w - start, midway.progress, rescues)
            if worth_restarting(self.cost_model, attempt, self.in_force, view, self.rule.margin):
                return w
        return None


def bounded_by_hops_on_the_air(view: Snapshot, midway: Midway) -> Snapshot:
    """``view`` with each link that a hop on the air is overdue on capped at that hop's bound, as serving's
    live view caps it (``overdue_bounds``), its newest second too."""
    bounds = overdue_bounds(midway.on_air, view.time, view.link_mbps, DRIFT, OVERDUE_S)
    if not bounds:
        return view
    return replace(
        view,
        link_mbps=view.link_mbps | bounds,
        link_history=view.link_history
        | {key: _newest(view.link_history[key], mbps) for key, mbps in bounds.items()},
    )


def _newest(history: tuple[float, ...], mbps: float) -> tuple[float, ...]:
    """A link's per-second history (oldest first) with its newest second read as ``mbps``."""
    return (*history[:-1], mbps) if history else history
