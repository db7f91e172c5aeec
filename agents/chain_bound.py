"""A lower bound on latency from the chains of bands every request runs through, one after another.

The capacity relaxation of ``agents/bound.py`` counts how much each device and radio must do, but not
when: it lets every device start at once, on rows that reach it in no time. This bound counts what lies
*in sequence*. Follow one row of the model's output back through a plan: a band of the last stage
computes it from input rows that include one a band of the stage before computed, and so on back to the
source that holds the image. Each band on that chain starts only once the rows it reads have arrived (a
band waits for its whole input) and then computes its whole band; each transfer between two devices
waits behind the sender's earlier transfers (one radio). So the latency is at least the length of every
such chain, hence at least their average under any distribution over chains.

**The chains.** Read every boundary tensor's rows as fractions of its height, and let a chain pass
through the band whose rows hold fraction ``u`` at every boundary, for ``u`` uniform in ``[0, 1)``. This
is a chain of real dependencies when every output row ``o`` of a group needs input rows whose fractions
cover ``[o / H_out, (o + 1) / H_out)`` (true of convolutions and poolings with their padding and of
residual blocks; ``rows_keep_their_place`` checks it, and the bound is 0 on a graph where it fails).
With ``s[g, d]`` the fraction of group ``g``'s output rows that device ``d``'s band computes (one share
per stage and device), the chains' average length is at least the sum of

- **compute**: a chain passes through ``d``'s band with probability ``s[g, d]``, and that band computes
  at least ``ceil(s H_g)`` rows of group ``g`` (they cover a fraction ``s``), each at the group's
  cheapest work per row: ``work[g] / rate[d] * E_H(s)``, with ``E_H`` the convex function through the
  points ``(k / H, (k / H)^2)``, which ``s ceil(s H) / H`` never falls below;
- **moving rows**: at a boundary, the fraction of ``d``'s rows that the next stage computes elsewhere is
  at least ``m = (s[g - 1, d] - s[g, d])+``. ``d``'s radio sends them after its band ends, a transfer
  of fraction ``m_k`` taking at least ``m_k`` of the tensor's bytes at ``d``'s fastest outgoing link, one
  after another, so chains through them wait on average ``tau sum_k m_k sum_{l <= k} m_l >= tau m^2 /
  2`` (``tau``: the whole tensor's seconds on that link), plus a link latency for each;
- **the image**, rows the source holds and sends the same way to every device of the first stage but
  itself (``tau ((1 - s[0, source])^2 + sum_d s[0, d]^2) / 2``, the sum over those devices: this time
  each transfer's fraction is known), then on along the route's other hops, each a whole transfer of the
  band again (relays store and forward: ``s^2`` times the image's seconds over the least of those hops'
  seconds per byte, plus their latency), and **the output**, which each band of the last stage sends to
  the sink in one transfer along a route (``s^2`` times the output's seconds over the route of least
  seconds per byte, plus the least latency).

The minimum of this sum over all share vectors (entries at least 0, summing to at least 1, 0 on a device
that cannot hold the group's weights or cannot send what it would have to) is <= the latency of every
plan. Each square is replaced by lines below it (tangents, and the chords of ``E_H``), added round by
round where the last solution sat, so the problem is a linear program: each round's certified minimum
is a valid bound, and the rounds stop when one no longer lifts it.

Left out: the halo (work and rows a band needs beyond its share: a chain through the neighbour that
computes them would count them), devices and radios shared between chains, memory beyond each group's
weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.sparse import coo_matrix

from agents.certified_lp import certified_minimum
from agents.group_facts import GroupFacts
from runtime.graph import LayerGraph

ROUNDS = 12  # cutting-plane rounds at most
SETTLED = 1e-3  # relative: a round that lifts the bound by less ends the rounds
START_POINTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)  # where each square's first lines touch


@lru_cache(maxsize=8)
def rows_keep_their_place(graph: LayerGraph) -> bool:
    """Whether every group's output row ``o`` needs input rows covering fractions ``[o / H_out, (o + 1) /
    H_out)`` of its input's height: what lets a chain follow one fraction of the rows through a plan."""
    for start, end in graph.groups:
        if graph.stage_kind(end) == "flat":
            continue  # a flat band reads its whole input
        h_in, h_out = graph.extent(start), graph.extent(end)
        for o in range(h_out):
            lo, hi = graph.input_rows(start, end, (o, o + 1))
            if lo * h_out > o * h_in or hi * h_out < (o + 1) * h_in:
                return False
    return True


@dataclass(frozen=True)
class ChainFacts:
    """What the chain bound needs of a snapshot, per device: its work rate (0 where it cannot compute),
    the least seconds per byte and the least latency of its outgoing links (infinite seconds if it has
    none), whether it can hold each group's weights, and the least seconds per byte and latency of a
    route's other hops (each a whole transfer again: relays store and forward) from the source's
    neighbours on to it and from it to the sink (infinite where there is no route); the source and the
    sink."""

    work_rate: np.ndarray
    send_spb: np.ndarray
    send_latency: np.ndarray
    fits: np.ndarray  # (devices, groups)
    relay_spb: np.ndarray
    relay_latency: np.ndarray
    to_sink_spb: np.ndarray
    to_sink_latency: np.ndarray
    source: int
    sink: int


@dataclass(frozen=True)
class _Square:
    """An objective term ``weight * f(column x)``, ``f`` convex and at least ``x^2`` on [0, 1]: ``x^2``
    itself (``grid`` None) or ``E_H`` (``grid`` H), held by an epigraph column ``epi`` kept above lines
    below ``f``."""

    x: int
    epi: int
    grid: int | None

    def value(self, v: float) -> float:
        if self.grid is None:
            return v * v
        lo, hi = self._cell(v)
        return lo * lo + (v - lo) * (lo + hi)

    def line(self, v: float) -> tuple[float, float]:
        """(slope, intercept) of a line below ``f`` that touches it at ``v``."""
        if self.grid is None:
            return 2.0 * v, -v * v
        lo, hi = self._cell(v)
        return lo + hi, -lo * hi

    def _cell(self, v: float) -> tuple[float, float]:
        k = min(int(v * self.grid), self.grid - 1)
        return k / self.grid, (k + 1) / self.grid


def chain_latency_bound(graph: LayerGraph, facts: GroupFacts, chain: ChainFacts) -> float:
    """The module docstring's bound in seconds (0.0 on a graph whose rows do not keep their place)."""
    if not rows_keep_their_place(graph):
        return 0.0
    return _ChainProgram(graph, facts, chain).solve()


class _ChainProgram:
    """The linear program: a share column per group and computing device, a moved-fraction column per
    boundary and sender, an epigraph column per square, rows ``terms <= rhs``."""

    def __init__(self, graph: LayerGraph, facts: GroupFacts, chain: ChainFacts):
        self.upper: list[float] = []
        self.cost: list[float] = []
        self.rows: list[tuple[list[tuple[int, float]], float]] = []
        self.squares: list[_Square] = []
        self.constant = 0.0
        self.facts, self.chain = facts, chain
        self.workers = np.flatnonzero(chain.work_rate > 0)
        shares = self._shares()
        self._price_bands(shares, [graph.extent(end) for _, end in graph.groups])
        self._price_moves(shares)

    def _shares(self) -> dict[tuple[int, int], int]:
        """A column per group and computing device (held at 0 where the device cannot hold the group's
        weights, get the image or reach the sink); each group's shares sum to at least 1."""
        chain, last = self.chain, len(self.facts.work) - 1
        shares = {}
        for g in range(last + 1):
            for d in self.workers:
                can = (
                    chain.fits[d, g]
                    and (g > 0 or d == chain.source or np.isfinite(chain.relay_spb[d]))
                    and (g < last or np.isfinite(chain.to_sink_spb[d]))
                )
                shares[g, d] = self._column(1.0 if can else 0.0)
            self.rows.append(([(shares[g, d], -1.0) for d in self.workers], -1.0))
        return shares

    def _price_bands(self, shares: dict[tuple[int, int], int], heights: list[int]) -> None:
        """Each share's square: its band's compute, and for the first group the image's transfer from the
        source and on along its route, for the last the output's route to the sink."""
        facts, chain, last = self.facts, self.chain, len(self.facts.work) - 1
        for (g, d), col in shares.items():
            weight = facts.work[g] / chain.work_rate[d]
            if g == 0 and d != chain.source and self.upper[col] > 0:
                weight += self._seconds(0, chain.source) / 2.0 + facts.nbytes[0] * chain.relay_spb[d]
                self.cost[col] += chain.relay_latency[d]
            if g == last and d != chain.sink and self.upper[col] > 0:
                weight += facts.nbytes[-1] * chain.to_sink_spb[d]
                self.cost[col] += chain.to_sink_latency[d]
            speed_share = chain.work_rate[d] / chain.work_rate.sum()  # where a share's solution is likely
            self._square(col, weight, heights[g], (0.8 * speed_share, speed_share, 1.25 * speed_share))

    def _price_moves(self, shares: dict[tuple[int, int], int]) -> None:
        """The rows a sender sends on: the image leaving the source (all of it, or all but the source's
        own first band), then at each boundary what a device computed and the next group computes
        elsewhere."""
        chain, src = self.chain, self.chain.source
        if src in self.workers:
            self._moved([(shares[0, src], -1.0)], -1.0, self._seconds(0, src), chain.send_latency[src])
        else:
            self.constant += self._seconds(0, src) / 2.0 + chain.send_latency[src]
        for g in range(1, len(self.facts.work)):
            for d in self.workers:
                terms = [(shares[g - 1, d], 1.0), (shares[g, d], -1.0)]
                self._moved(terms, 0.0, self._seconds(g, d), chain.send_latency[d])

    def _seconds(self, boundary: int, sender: int) -> float | None:
        """Seconds to send a whole boundary tensor on the sender's fastest link (None: it has no link)."""
        spb = self.chain.send_spb[sender]
        return float(self.facts.nbytes[boundary] * spb) if np.isfinite(spb) else None

    def _column(self, upper: float, cost: float = 0.0) -> int:
        self.upper.append(upper)
        self.cost.append(cost)
        return len(self.upper) - 1

    def _moved(self, terms, rhs: float, tau: float | None, latency: float) -> None:
        """A column ``m >= terms - rhs`` (the fraction of its rows a sender sends on), priced ``tau m^2 / 2
        + latency m``; held at 0 when the sender has no link (``tau`` None)."""
        m = self._column(0.0 if tau is None else 1.0, latency if tau is not None else 0.0)
        self.rows.append(([*terms, (m, -1.0)], rhs))
        if tau is not None:
            self._square(m, tau / 2.0, None)

    def _square(self, x: int, weight: float, grid: int | None, likely: tuple[float, ...] = ()) -> None:
        if weight <= 0 or self.upper[x] == 0:
            return
        square = _Square(x, self._column(1.0, weight), grid)
        self.squares.append(square)
        for v in (*START_POINTS, *likely):
            self._cut(square, v)

    def _cut(self, square: _Square, v: float) -> None:
        slope, intercept = square.line(v)
        self.rows.append(([(square.x, slope), (square.epi, -1.0)], -intercept))

    def _arrays(self) -> tuple:
        r, c, v = [], [], []
        for i, (terms, _) in enumerate(self.rows):
            for col, val in terms:
                r.append(i)
                c.append(col)
                v.append(val)
        a_ub = coo_matrix((v, (r, c)), shape=(len(self.rows), len(self.upper))).tocsr()
        bounds = np.column_stack([np.zeros(len(self.upper)), self.upper])
        return a_ub, np.array([rhs for _, rhs in self.rows]), np.array(self.cost), bounds

    def solve(self) -> float:
        """Rounds of: solve, certify, add the lines where the solution sits below a square."""
        best = 0.0
        unit = max(max(self.cost), 1e-12)  # costs scaled to at most 1: solvers' tolerances are absolute
        for _ in range(ROUNDS):
            a_ub, b_ub, cost, bounds = self._arrays()
            minimum, x = certified_minimum(a_ub, b_ub, cost / unit, bounds, "chain")
            value = self.constant + unit * minimum
            lifted = value > best * (1.0 + SETTLED)
            best = max(best, value)
            cuts = [sq for sq in self.squares if sq.value(x[sq.x]) > x[sq.epi] + 1e-9]
            if not lifted or not cuts:
                break
            for square in cuts:
                self._cut(square, float(x[square.x]))
        return best
