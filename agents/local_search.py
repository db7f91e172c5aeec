"""Scoring plans on the cost model and improving them by local search, for any planner that verifies.

``PlanSearch`` remembers every plan it has scored (so a plan reached twice costs once) and keeps the best
feasible one: it uses only available devices, validates, and fits every device's memory. Its
``local_search`` is a first-improvement descent over small changes of a plan, beyond the shapes of W: scale
one device's share, swap two neighbouring bands, move a cut, merge or split stages, add, remove or replace
a device. A search can be confined to a set of devices: no plan that computes on or relays through another
one counts. The optimiser runs it after its shape search over every available device; a policy's polish
(agents/polish.py) runs it from the policy's plan confined to the devices that plan touches.

The descent tries one kind of move after another, in an order (``SHARES_FIRST`` or ``STRUCTURE_FIRST``),
and returns to the first kind after each improvement, so with a small budget the first kinds are nearly
all it tries. The optimiser's plans come out of its shape search with their stages already chosen, and
tuning shares pays first; a policy's plans sometimes have too few stages, and then splitting them pays
first (a polish, agents/polish.py, runs a descent in each order).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection

import numpy as np

from agents.base import PlannerError, fits_memory, usable
from env.cost_model import CostModel, Objective
from env.snapshot import Snapshot
from runtime.graph import LayerGraph
from runtime.plan import Plan, PlanError

SHARES_FIRST = ("share", "swap", "cut", "merge", "split", "add", "remove", "replace")
STRUCTURE_FIRST = ("split", "cut", "merge", "share", "swap", "add", "remove", "replace")
BLOCKED = "every feasible plan relays through a device that is down (routes are fixed): the best of them"


class PlanSearch:
    """Scores candidate plans on the cost model, remembers them, keeps the best feasible one."""

    def __init__(
        self,
        model: CostModel,
        snapshot: Snapshot,
        graph: LayerGraph,
        objective: Objective,
        confine_to: Collection[str] | None = None,
    ):
        self.model, self.snapshot, self.graph, self.objective = model, snapshot, graph, objective
        self.confine_to = None if confine_to is None else frozenset(confine_to)
        self.scores: dict[Plan, float] = {}
        self.evaluations = 0  # plans actually scored on the cost model
        self.best: Plan | None = None
        self.best_score = math.inf
        self.improvements: list[Plan] = []  # each plan that lowered the best score, in the order found
        # the best plan that would be feasible but for a relay that is down: all that is left when the fixed
        # routes (``spec.route``) cut the source or the sink off from every device that could compute
        self.blocked: Plan | None = None
        self.blocked_score = math.inf

    def fork(self) -> PlanSearch:
        """A search that knows every plan scored so far and goes on independently: two descents from the
        same seeds score those seeds once."""
        twin = copy.copy(self)
        twin.scores, twin.improvements = dict(self.scores), list(self.improvements)
        return twin

    def consider(self, plan: Plan) -> float:
        """The plan's objective (infinite if it is invalid, infeasible, or touches a device, relays
        included, that is down or outside ``confine_to``); updates the best."""
        score = self.scores.get(plan)
        if score is not None:
            return score
        score = math.inf
        if self._feasible(plan):
            self.evaluations += 1
            score = self.price(plan)
            if not self._relays_up(plan):
                if score < self.blocked_score:
                    self.blocked, self.blocked_score = plan, score
                score = math.inf
        self.scores[plan] = score
        if score < self.best_score:
            self.best, self.best_score = plan, score
            self.improvements.append(plan)
        return score

    def outcome(self) -> tuple[Plan, float, bool]:
        """The best plan, its score, and whether every feasible plan relays through a device that is down
        (then the best of those, which the caller reports as a fallback); ``PlannerError`` when no plan
        was feasible at all."""
        if self.best is not None:
            return self.best, self.best_score, False
        if self.blocked is not None:
            return self.blocked, self.blocked_score, True
        raise PlannerError(f"no plan of {self.graph.name} fits the memory of the available devices")

    def ranked(self) -> list[Plan]:
        """Every feasible plan scored so far, best first (ties in the order they were found)."""
        ranked = sorted((s, i, p) for i, (p, s) in enumerate(self.scores.items()) if math.isfinite(s))
        return [plan for _, _, plan in ranked]

    def price(self, plan: Plan) -> float:
        """The objective of a feasible plan under the snapshot (a search that prices risk overrides it)."""
        return self.objective.score(self.model.predict(plan, self.snapshot, t0=self.snapshot.time))

    def _feasible(self, plan: Plan) -> bool:
        up = self.snapshot.available
        if any(d not in up for st in plan.stages for d in st.devices):
            return False
        try:
            plan.validate(self.graph)
        except PlanError:
            return False
        if self.confine_to is not None and not self.confine_to.issuperset(self.model.skeleton(plan).devices):
            return False
        return fits_memory(plan, self.graph, self.snapshot.spec)

    def _relays_up(self, plan: Plan) -> bool:
        """Whether every device the plan's routes pass through is up (a route through one that is down
        carries nothing; the source and sink are the caller's to choose)."""
        touched = set(self.model.skeleton(plan).devices) - {plan.source, plan.sink}
        return self.snapshot.available.issuperset(touched)

    def local_search(
        self, budget: int, rng: np.random.Generator, starts: int = 3, order: tuple[str, ...] = SHARES_FIRST
    ) -> None:
        """First-improvement descent from the best few distinct plans, ``budget`` new plans in all.

        Moves are tried kind by kind in ``order`` (module docstring), in a seeded random order within a
        kind.
        """
        limit = self.evaluations + budget
        for plan in self.ranked()[:starts]:
            self.descend(plan, limit, rng, order)
            if self.evaluations >= limit:
                return

    def descend(
        self, plan: Plan, limit: int, rng: np.random.Generator, order: tuple[str, ...] = SHARES_FIRST
    ) -> Plan:
        """First-improvement descent from ``plan`` until no move improves it or the search has scored
        ``limit`` plans in all; the plan it ends on."""
        pool = self._pool()
        current, current_score = plan, self.consider(plan)
        improved = True
        while improved and self.evaluations < limit:
            improved = False
            moves = self._moves(current, pool)
            for kind in (moves[name] for name in order):
                for i in rng.permutation(len(kind)):
                    if self.evaluations >= limit:
                        return current
                    candidate = Plan.build(current.source, current.sink, kind[i])
                    score = self.consider(candidate)
                    if score < current_score - 1e-12:
                        current, current_score, improved = candidate, score, True
                        break
                if improved:
                    break
        return current

    def kick(self, plan: Plan, moves: int, rng: np.random.Generator) -> Plan:
        """``plan`` after ``moves`` random local changes, each kept only if the result is feasible: the
        perturbation of an iterated local search, to leave a descent's local optimum."""
        pool = self._pool()
        for _ in range(moves):
            options = [stages for kind in self._moves(plan, pool).values() for stages in kind]
            candidate = Plan.build(plan.source, plan.sink, options[rng.integers(len(options))])
            if math.isfinite(self.consider(candidate)):
                plan = candidate
        return plan

    def _pool(self) -> list[str]:
        """The devices moves may add or swap in."""
        return [d for d in usable(self.snapshot) if self.confine_to is None or d in self.confine_to]

    def _moves(self, plan: Plan, pool: list[str]) -> dict[str, list[list[tuple[int, int, dict[str, float]]]]]:
        """Stage lists one local change away from ``plan``, by kind: share scaling, band order swaps,
        cut moves, merges, splits, device additions, removals, replacements (from ``pool``)."""
        snap, cuts = self.snapshot, self.graph.cut_points
        stages = [(st.start, st.end, {a.device: a.share for a in st.assignments}) for st in plan.stages]
        moves: dict[str, list] = {kind: [] for kind in SHARES_FIRST}
        share, swap, cut, merge, split, add, remove, replace = moves.values()
        for i in range(len(stages) - 1):
            (s0, e0, a0), (_, e1, a1) = stages[i], stages[i + 1]
            at = cuts.index(e0)
            for c in (cuts[at - 1], cuts[at + 1]):
                if s0 < c < e1:
                    cut.append([*stages[:i], (s0, c, a0), (c, e1, a1), *stages[i + 2 :]])
            for keep in (a0, a1):
                merge.append([*stages[:i], (s0, e1, keep), *stages[i + 2 :]])
        for i, (s, e, shares) in enumerate(stages):
            head, tail = stages[:i], stages[i + 1 :]
            split.extend([*head, (s, c, shares), (c, e, shares), *tail] for c in cuts if s < c < e)
            devices = list(shares)
            spare = [d for d in pool if d not in shares]
            new = []  # (kind, shares of stage i)
            for j, d in enumerate(devices):
                new.extend((share, {**shares, d: shares[d] * f}) for f in (1.25, 0.8))
                if j + 1 < len(devices):
                    swapped = devices[:j] + [devices[j + 1], devices[j]] + devices[j + 2 :]
                    new.append((swap, {x: shares[x] for x in swapped}))
                if len(devices) > 1:
                    new.append((remove, {x: w for x, w in shares.items() if x != d}))
                for other in spare:
                    speed = snap.device_gflops(other)
                    new.append(
                        (
                            replace,
                            {(other if x == d else x): (speed if x == d else w) for x, w in shares.items()},
                        )
                    )
            new.extend((add, {**shares, other: snap.device_gflops(other)}) for other in spare)
            for kind, changed in new:
                kind.append([*head, (s, e, changed), *tail])
        return moves
