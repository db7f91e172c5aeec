"""The serving loop's rules: when conditions moved, when a new plan pays for its swap, when a running
request is worth restarting on a newer plan, and when the view is settled enough to act on mid-request."""

from __future__ import annotations

from env.cost_model import Cost, CostModel, Objective
from env.snapshot import Snapshot, link_key
from runtime.controller import InFlight
from runtime.plan import Plan

MAX_RESCUES = 2  # per request: a third restart would mostly throw away work the second one did
SETTLED = 0.25  # a view is settled when no estimate moved more than this (relative) since the last one


def settled(before: Snapshot | None, now: Snapshot, tolerance: float = SETTLED) -> bool:
    """Whether ``now`` agrees with the view just ``before`` it: the same devices up, every link's and
    device's estimate within ``tolerance`` (relative). Just after a collapse the first views are half
    formed (the first bound on a crawling transfer is loose, the next ones tighten it): a request rescued
    on one of them was moved onto links that had not fallen yet in the view, and rescued again."""
    if before is None or before.available != now.available:
        return False
    pairs = [(before.link_mbps[k], v) for k, v in now.link_mbps.items()]
    pairs += [(before.speed[d], v) for d, v in now.speed.items()]
    return all(abs(v - old) <= tolerance * old for old, v in pairs)


def moved(plan: Plan, made_on: Snapshot, now: Snapshot, threshold: float) -> bool:
    """Whether conditions that matter to ``plan`` changed by more than ``threshold`` (relative)."""
    if made_on.available != now.available:
        return True
    devices = {d for s in plan.stages for d in s.devices} | {plan.source, plan.sink}
    for d in devices:
        if abs(now.speed[d] - made_on.speed[d]) > threshold * made_on.speed[d]:
            return True
    used = set()
    for a in devices:
        for b in devices:
            if a < b:
                route = now.spec.route(a, b)
                used |= {link_key(x, y) for x, y in zip(route[:-1], route[1:], strict=True)}
    return any(abs(now.link_mbps[k] - made_on.link_mbps[k]) > threshold * made_on.link_mbps[k] for k in used)


def worth_swapping(
    cost: CostModel,
    objective: Objective,
    in_force: Plan,
    candidate: Plan,
    snapshot: Snapshot,
    margin: float,
    swap_s: float,
    backlog: int = 0,
) -> bool:
    """Whether ``candidate`` should replace the plan in force: priced on the same ``snapshot``, its gain
    beats ``margin`` x the plan in force's score plus what the swap itself costs (``swap_s`` seconds, in
    the objective's units). A plan in force that needs a device now down is always replaced.

    With ``backlog`` requests already waiting (an open loop that fell behind), the gain is counted as
    ``backlog_weight`` times one request's: each of them also waits for the ones ahead of it.
    """
    if not in_force.devices <= snapshot.available:
        return True
    now = objective.score(cost.cost(in_force, snapshot))
    new = objective.score(cost.cost(candidate, snapshot))
    return (now - new) * backlog_weight(backlog) > margin * now + objective.score(Cost(swap_s, 0.0))


def backlog_weight(backlog: int) -> float:
    """The mean gain, in single requests' gains, over the ``backlog`` requests waiting and the next to
    arrive: the j-th of them is served after j - 1 others, each faster by the gain, so it gains j times."""
    return (backlog + 2) / 2


def waiting_requests(now: float, start: float, arrival_every_s: float | None, started: int) -> int:
    """Requests arrived by ``now`` (request k arrives at ``start + k * arrival_every_s``) and not yet
    started, with ``started`` of them started so far; 0 in a closed loop (``arrival_every_s`` None), where a request
    enters only when the cluster has room."""
    if arrival_every_s is None:
        return 0
    arrived = int((now - start) // arrival_every_s) + 1
    return max(0, arrived - started)


def worth_restarting(
    cost: CostModel, running: InFlight, plan: Plan, snapshot: Snapshot, margin: float
) -> bool:
    """Whether restarting ``running`` on ``plan`` beats letting it finish, under ``snapshot``.

    The rest of the running attempt is estimated from its plan's predicted latency under the new
    conditions in two ways, and the smaller is kept: scaled by the share of its radio bytes not yet
    delivered, and less the seconds it has already run. Radio bytes do not count compute, so a plan that
    computes for seconds before it sends (the collapse plans do) looks untouched for all that time, and
    an estimate that wobbles can then make throwing those seconds away look worth it. The seconds it ran
    count at least as much as the new conditions would have let it do when conditions fell after it
    started, which is when a rescue pays. A restart pays ``plan``'s whole predicted latency, times
    ``margin``.
    """
    full = cost.latency(running.plan, snapshot)
    unsent = full * (1.0 - running.progress) if running.progress < 1.0 else 0.0  # inf x 0 is not 0
    rest = min(unsent, max(0.0, full - running.elapsed_s))
    return rest > margin * cost.latency(plan, snapshot)
