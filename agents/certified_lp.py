"""Solve a bounding LP and read from it a value the solver's tolerances cannot have pushed above its
true minimum: what makes the lower bounds of agents/bound.py and agents/chain_bound.py certified."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog

from agents.base import PlannerError

ROUNDING = 1e-9  # relative: what float rounding in evaluating the certified minimum may add to it
# HiGHS's feasibility tolerances, 100x below its defaults: the certificate is only as good as the duals,
# and with a crawling link (1e-4 of the median) the defaults' duals certified an energy bound of 0
TOLERANCES = {"primal_feasibility_tolerance": 1e-9, "dual_feasibility_tolerance": 1e-9}


def certified_minimum(
    a_ub, b_ub: np.ndarray, c: np.ndarray, bounds: np.ndarray, what: str
) -> tuple[float, np.ndarray]:
    """A value <= the minimum of ``c.x`` subject to ``a_ub x <= b_ub`` and ``bounds`` (0 <= x <= u), and
    the solver's solution.

    Solved with HiGHS, then certified (Neumaier and Shcherbina, 2004): for any ``y <= 0``, ``c.x = y.(A x)
    + r.x >= y.b + sum_j min(0, r_j) u_j`` with ``r = c - A'y``. The solver's duals give a ``y`` close to
    optimal, so this is its minimum less what its tolerances hide. A variable without an upper bound gets
    twice its optimum: solutions above that are above the bound anyway. ``what`` names the LP in the
    ``PlannerError`` raised if it does not solve.
    """
    result = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs", options=TOLERANCES)
    if result.status != 0:
        raise PlannerError(f"the {what} bound's LP did not solve: {result.message}")
    y = np.minimum(result.ineqlin.marginals, 0.0)
    reduced = c - a_ub.T @ y
    upper = bounds[:, 1].copy()
    free = np.isinf(upper)
    upper[free] = 2.0 * np.maximum(result.x[free], 0.0)
    return float(b_ub @ y + np.minimum(reduced, 0.0) @ upper) * (1.0 - ROUNDING), result.x
