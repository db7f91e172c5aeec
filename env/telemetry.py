"""A live Snapshot built from what a running cluster measures, for planning while serving.

Planners only ever see a ``Snapshot``. In the simulator it comes from the world's traces; on a live
cluster it comes from the runtime's telemetry (``Controller.link_samples``, ``compute_samples``,
``available``). Each ``snapshot`` folds in what was measured since the previous one: with one request
in flight that is the whole of the last request, however long it took (a fixed window of the last few
seconds would see only the tail of a slow request and forget the links its early stages used).

- link bandwidth: per direct link, the throughput (bytes over radio seconds) of its newest transfers
  (pieces of transfers: the workers report a long one every quarter second as it goes) *of the current
  regime*: walking back from the newest transfer, older ones are left out from the
  first whose rate differs from the newer ones by more than ``drift`` x, or that ended more than
  ``window_s`` before the newest (a change point: after a drop, a link's estimate is what it carries
  now, not a blend with what it carried before). A link keeps its last estimate while nothing crosses
  it, with one exception: when the links measured last (within ``vote_s`` of the newest transfer) moved
  together by more than ``drift`` x (their median ratio new/old estimate), the silent ones, and those
  measured only earlier (before the change, say), are assumed to have moved as much (links of one site
  tend to fade together; a planner that believes a silent link kept its old speed moves traffic onto it
  and learns it is slow one request at a time): each to the share of its level that the voters now carry
  of theirs (a link's level: the one it fell from, below, else its estimate), and only in the vote's
  direction (a link measured at the collapsed rate a moment before a transfer crawled on a link still
  believed at its old rate was taken down again by the crawl's whole ratio, to a third of its rate).
  That takes two or more links measured by transfers that ended: one transfer's rate may be a starved
  sender's timer overshooting, and the median, not the worst, keeps one such measurement among several from
  moving every silent link. A link still carrying a transfer does not vote: a transfer stuck on it bounds it
  (below) and its ticks measure it, its link only. A stuck transfer used to be evidence enough on its own,
  on the bet that a site's links fade together; on recorded traces, where each link fades on its own, the
  transfers stalled on two links dark in their recordings took every silent link of a 10-device mesh down to
  0.01-0.07 Mbit/s and the request was restarted on three devices, needlessly (serving's rescue made the
  polished policy 1.10x slower than no rescue there). Without it, on development worlds of independent
  outages, serving was as fast or faster in every pairing of runs but one; where every link collapses at
  once (the vote's own case) the collapse is seen one finished request later, and that bench's p95 ratio
  went from 0.30 to 0.36-0.38 (target 0.6): docs/benchmarks.md, forty-fourth round. The world's watcher
  (serving/world_rescue.py, the sim's ``--rescue``) never had the stuck vote.
  A fall is remembered: a link whose estimate fell ``drift`` x in one snapshot keeps the level it fell
  from. When one link is measured back within ``drift`` of its level, the fall is over: the silent links
  that fell go back to their levels, a bound still capping them (a plan made for a collapse may cross
  one link only, and the two links the rule above needs might never be measured again). One reading
  measured faster does not count otherwise: a link the vote took below what it carries reads twice its
  estimate when next crossed.
  A link's own reading outranks other links' evidence upward for ``stand_s`` (5 s, the window of the
  simulator's means): neither a vote up nor a fall's end lifts a link whose estimate is what its own
  transfers read (or bound) in the last ``stand_s``. On #15's unseen live mesh a link a crawling transfer
  read at 0.28 Mbit/s was put back at its level when another link was read back near its own, with
  nothing on it, and a request's last rescue crossed it, still dark (the live target missed in one run of
  two on the rule before, met in every run since: docs/benchmarks.md, forty-fifth round). Such a link
  keeps the level it fell from and returns to it once its reading is older, whether a fall's end or a
  vote up passed it by: a plan made around it never measures it again (in a loaded run of the collapse
  bench, a first version that waited for another fall's end kept the plan made in the collapse's last
  seconds for the rest of the run; and after a vote up that takes every other link back to its level no
  fall's end ever comes, so the rule as first adopted, which queued only the links a fall's end passed
  by, left such a link dark for good: docs/benchmarks.md, forty-sixth round). A vote down still moves it
  (the links of a collapse).
  A brief link, one whose fresh transfers hold less than ``settle_s`` of radio time in all, neither sets
  its own estimate nor votes: such a rate is mostly the sender's timer overshoot (it reads low), or a
  shaper's burst (over a kernel-shaped link the few-kB outputs that end every request read up to 2.6x
  the link's rate; the link set to that drew the next plan onto it, whose first long transfer then
  crawled and took every silent link down). It can only end a fall, read back within ``drift`` of its
  link's level (a plan made for a collapse may cross no link with more than an output).
  Until a link is measured its estimate starts from the spec.
  Transfers still on the air count too (censored evidence, ``overdue_bounds``): B bytes sent for e
  seconds and not done yet say the link carries at most B*8/e. Such a bound replaces the estimate once
  the transfer has run ``drift`` x longer than the estimate allows (and at least ``overdue_s``, so a
  transfer whose end is merely still being reported does not count), and it stands until a transfer that
  ends after it says otherwise (earlier ones describe the link before the change): a dark link is seen
  while the first transfer it slows down is still crawling, not only when the request that crosses it is
  done, and a request rescued then is not moved back onto it;
- speed factor: for an emulated device, the seconds its compute tasks *received* since the previous
  snapshot take at its nominal speed (which the worker knows: its pacing) over the seconds they took, so
  exactly its speed factor times its fidelity. A device that does not know its nominal times (a real one)
  gets its achieved FLOP/s over its nominal GFLOP/s, capped at the median over such devices that computed
  (small bands run below a device's peak for reasons that have nothing to do with the device; only a
  device clearly slower than the rest is slow); a device that computed nothing gets that median; no new
  tasks, no change. Compute
  samples arrive with their request's end, stamped with their own (earlier) end times, so a snapshot
  taken while requests run (serving re-plans mid-request) must not pick them by end time: it would see
  only a finished request's last tasks;
- availability: the controller's liveness view (heartbeats, timeouts);
- failure evidence: the failures heartbeats detected (``Controller.failures``) over the last
  ``failure_window_s`` seconds, and each device's seconds up in them: an outage lasts from the failure
  until a snapshot finds the device up again (so a recovery between two snapshots counts from the
  later one), the same evidence the simulator's snapshots carry.

``link_history`` holds the estimates second by second (oldest first), as the simulator's per-second
means do, so a policy trained on those sees a drop as a step in its history.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from env.snapshot import Snapshot, link_key
from runtime.spec import ClusterSpec

LinkSample = tuple[float, int, float]  # (end wall time, bytes, radio seconds) of one transfer
DRIFT = 1.5  # a rate this many times off a link's estimate is a change, not noise
OVERDUE_S = 0.25  # a transfer on the air for less than this says nothing yet about its link
STAND_S = 5.0  # a link's own reading outranks other links' evidence up this long (the sim's mean window)


def current_rate(
    samples: Sequence[LinkSample], drift: float, window_s: float, settle_s: float = 0.05
) -> float:
    """Mbit/s of the newest regime in ``samples`` (oldest first): see the module docstring.

    The newest transfers are pooled until they hold ``settle_s`` of radio time, so that the reference
    rate is not that of one tiny transfer (whose radio time is mostly timer overshoot).
    """
    newest = samples[-1][0]
    nbytes, radio = 0.0, 0.0
    for end, n, seconds in reversed(samples):
        if end < newest - window_s:
            break
        if radio >= settle_s and seconds >= settle_s:
            rate, pooled = n / seconds, nbytes / radio
            if not pooled / drift <= rate <= pooled * drift:
                break
        nbytes += n
        radio += seconds
    return nbytes * 8 / 1e6 / radio


def overdue_bounds(
    transfers: Iterable[tuple[str, str, int, float]],
    wall: float,
    estimates: dict[tuple[str, str], float],
    drift: float,
    overdue_s: float,
) -> dict[tuple[str, str], float]:
    """Upper bounds (Mbit/s) on the links that carry an overdue transfer, from ``(a, b, bytes, start)``.

    A transfer is overdue once it has run ``overdue_s`` and ``drift`` x the time ``estimates`` give it;
    its link then carries at most ``bytes*8/elapsed`` (the lowest such bound per link is kept).
    """
    bounds: dict[tuple[str, str], float] = {}
    for a, b, nbytes, start in transfers:
        elapsed, key = wall - start, link_key(a, b)
        if elapsed < overdue_s or key not in estimates:
            continue
        bound = nbytes * 8 / 1e6 / elapsed
        if bound * drift < estimates[key]:
            bounds[key] = min(bound, bounds.get(key, bound))
    return bounds


def drift_factor(measured: Iterable[float], drift: float) -> float:
    """How much the silent links are assumed to have moved, from the ratios new/old estimate of the links
    ``measured``: their median, if it is beyond ``drift`` x either way and rests on two or more links (one
    transfer's rate may be a starved sender's timer overshooting)."""
    measured = list(measured)
    if len(measured) < 2:
        return 1.0
    median = float(np.median(measured))
    return median if not 1 / drift <= median <= drift else 1.0


@dataclass
class Outage:
    """A device found down at wall time ``down``, seen up again at ``back`` (None: not yet)."""

    device: str
    down: float
    back: float | None = None


class LiveView:
    """Turns a controller's telemetry into Snapshots (see the module docstring)."""

    def __init__(
        self,
        spec: ClusterSpec,
        controller,
        *,
        window_s: float = 2.0,
        drift: float = DRIFT,
        history: int = 8,
        overdue_s: float = OVERDUE_S,
        vote_s: float = 1.0,
        stand_s: float = STAND_S,
        settle_s: float = 0.05,
        failure_window_s: float = 300.0,
        start: Snapshot | None = None,
    ):
        """``start``: what the view believes until the cluster measures otherwise (its links' rates and
        histories and its devices' speeds; default the spec's rates at full speed): a live comparison's
        watcher starts from the snapshot its agent planned on."""
        self.spec = spec
        self.controller = controller
        self.window_s = window_s
        self.drift = drift
        self.overdue_s = overdue_s
        self.vote_s = vote_s
        self.stand_s = stand_s
        self.settle_s = settle_s
        self.link_mbps = {link_key(link.a, link.b): link.mbps for link in spec.links}
        self.speed = dict.fromkeys(spec.devices, 1.0)
        self.history = {key: deque([mbps] * history, maxlen=history) for key, mbps in self.link_mbps.items()}
        self._history_len = history
        self._folded = -np.inf  # wall time up to which link telemetry has been folded in
        if start is not None:
            self.link_mbps = {key: start.link_mbps[key] for key in self.link_mbps}
            self.speed = {d: start.speed.get(d, 1.0) for d in spec.devices}
            for key, past in self.history.items():
                past.extend(start.link_history.get(key, ()))
        self._last_compute: tuple | None = None  # the newest compute sample folded in
        self._bounded: dict[tuple[str, str], float] = {}  # per link: wall time of its last overdue bound
        self._caps: dict[
            tuple[str, str], float
        ] = {}  # per link: its last bound, until a transfer measures it
        self._fallen: dict[tuple[str, str], float] = {}  # per link that fell: the level it fell from
        self._own_at: dict[tuple[str, str], float] = {}  # per link: wall time its own transfers last spoke
        # per link a fall's end or a vote up left at its own reading: the rate it returns to once that ages
        self._waiting: dict[tuple[str, str], float] = {}
        self._second: int | None = None  # last whole second (controller clock) written to the history
        self.failure_window_s = failure_window_s
        self._started = self._clock()
        self._outages: list[Outage] = []  # those that ended within the failure window, or not yet
        self._failures_folded = 0  # entries of controller.failures already in _outages

    def _clock(self) -> float:
        """Wall time over the emulation's dilation: every time and radio second the telemetry reports is
        wall time, which runs D x the emulated cluster's (runtime/emulation.py), so the view reads them on
        this clock and measures the rates and speeds of the cluster it emulates."""
        return time.time() / self.controller.dilation

    def _update_links(self, since: float, wall: float) -> None:
        fresh: dict[tuple[str, str], list[LinkSample]] = {}
        d = self.controller.dilation
        for end, a, b, nbytes, seconds in self.controller.link_samples:
            end, seconds = end / d, seconds / d
            key = link_key(a, b)
            if end > max(since, self._bounded.get(key, since)) and seconds > 0 and nbytes > 0:
                fresh.setdefault(key, []).append((end, nbytes, seconds))
        rates = {
            key: current_rate(sorted(samples), self.drift, self.window_s, self.settle_s)
            for key, samples in fresh.items()
        }
        held = {key for key, samples in fresh.items() if sum(s for *_, s in samples) >= self.settle_s}
        measured = {key: rates[key] for key in held}
        brief = {key: rates[key] for key in rates.keys() - held}
        fresh = {key: fresh[key] for key in held}
        # overdue against what was believed before this fold
        on_air = [(a, b, n, start / d) for a, b, n, start in self.controller.transfers_in_progress()]
        overdue = overdue_bounds(on_air, wall, self.link_mbps, self.drift, self.overdue_s)
        # only the newest measurements speak for the present: a link last measured more than vote_s
        # before the newest transfer (say, before a drop the newest ones saw) sets its own estimate, then
        # moves with the silent links; a link still carrying a transfer does not vote (module docstring)
        last = {key: max(end for end, _, _ in samples) for key, samples in fresh.items()}
        newest = max(last.values(), default=wall)
        recent = {key: measured[key] for key, end in last.items() if end >= newest - self.vote_s}
        evidence = recent | {key: min(b, recent.get(key, b)) for key, b in overdue.items()}
        carrying = {link_key(a, b) for a, b, *_ in on_air}
        voters = {key: mbps for key, mbps in recent.items() if key not in carrying}
        factor = drift_factor([mbps / self.link_mbps[key] for key, mbps in voters.items()], self.drift)
        before = self.link_mbps
        self.link_mbps = before | measured | evidence
        self._own_at |= last | dict.fromkeys(overdue, wall)
        # the links whose own reading (this fold's, or one of the last stand_s) outranks others' evidence up
        standing = evidence.keys() | {key for key, at in self._own_at.items() if wall - at < self.stand_s}
        if factor != 1.0:
            self._follow_the_vote(before, voters, standing if factor > 1 else evidence.keys(), factor)
        # a bound stands until a transfer that ends after it measures the link: the silent links may move
        # up with the others, the bounded one not above its bound (its stuck transfer, cut short by a
        # rescue, never reports an end)
        self._caps = {key: cap for key, cap in self._caps.items() if key not in measured} | overdue
        if factor < 1.0:  # a new fall: its end returns the links the last one's end left waiting
            self._waiting.clear()
        if factor == 1.0 and not overdue:
            self._end_fall({key: self.link_mbps[key] for key in voters} | brief, standing)
            self._release(standing)
        self.link_mbps |= {key: min(self.link_mbps[key], cap) for key, cap in self._caps.items()}
        self._remember_falls(before)
        # a bound is a change point: transfers that ended before it no longer speak for the link
        self._bounded |= dict.fromkeys(overdue, wall)

    def _follow_the_vote(
        self,
        before: dict[tuple[str, str], float],
        voters: dict[tuple[str, str], float],
        spared: Collection[tuple[str, str]],
        factor: float,
    ) -> None:
        """Move every link but the ``spared`` (measured within ``vote_s`` of the newest transfer, or bounded,
        in this fold; for a vote up, also those whose own reading still stands, which follow once it ages:
        ``_release``) to the share of its level that the ``voters`` now carry of theirs (a link's level: the
        one it fell from, else its estimate; a voter's, from ``before`` its measurement), in the direction of
        the vote (``factor``) only: a link measured at the new rate since it fell is not moved again by a
        voter whose estimate predates the change."""
        share = float(np.median([mbps / self._fallen.get(key, before[key]) for key, mbps in voters.items()]))
        follow = min if factor < 1 else max
        if factor > 1:  # the fallen links it spares return where it takes the others once their readings age
            self._waiting |= {key: self._fallen[key] * share for key in spared if key in self._fallen}
        for key, mbps in self.link_mbps.items():
            if key not in spared:
                self.link_mbps[key] = follow(mbps, self._fallen.get(key, mbps) * share)
                if self.link_mbps[key] != mbps:  # its estimate is the vote's now, not its own measurement
                    self._own_at.pop(key, None)

    def _end_fall(
        self, readings: dict[tuple[str, str], float], standing: Collection[tuple[str, str]]
    ) -> None:
        """If a link read last (``readings``, Mbit/s) is back within ``drift`` of the level it fell from,
        the fall is over: every link that fell goes back to its level (a bound still caps it) but those
        whose own reading still ``standing`` says otherwise, which wait for it to age (``_release``)."""
        if not any(
            k in self._fallen and mbps * self.drift >= self._fallen[k] for k, mbps in readings.items()
        ):
            return
        for key, level in self._fallen.items():
            if key not in standing:
                self.link_mbps[key] = max(self.link_mbps[key], level)
        self._fallen = {key: level for key, level in self._fallen.items() if key in standing}
        self._waiting |= self._fallen

    def _release(self, standing: set[tuple[str, str]]) -> None:
        """The links a fall's end or a vote up left at their own reading go where it took the others (back
        to their levels, or the vote's share of them) once it no longer stands (a plan that avoids them
        never measures them again)."""
        for key in self._waiting.keys() - standing:
            back_to = self._waiting.pop(key)
            if key in self._fallen:  # not measured back since (then its reading says where it is)
                self.link_mbps[key] = max(self.link_mbps[key], back_to)

    def _remember_falls(self, before: dict[tuple[str, str], float]) -> None:
        """Keep the level of every link that fell ``drift`` x since ``before``; forget it once back."""
        for key, mbps in self.link_mbps.items():
            if mbps * self.drift < before[key]:
                self._fallen.setdefault(key, before[key])
            elif key in self._fallen and mbps * self.drift >= self._fallen[key]:
                del self._fallen[key]

    def _update_speed(self) -> None:
        samples = self.controller.compute_samples
        new = []
        for sample in reversed(samples):  # the newest first, back to the last one folded in
            if sample is self._last_compute:
                break
            new.append(sample)
        if samples:
            self._last_compute = samples[-1]
        timed: dict[str, list[float]] = {}  # per device: seconds at nominal speed, seconds taken
        achieved: dict[str, list[float]] = {}  # per device without the former: FLOPs, seconds taken
        for _, device, flops, seconds, nominal in new:
            if seconds <= 0:
                continue
            if nominal is not None:
                acc = timed.setdefault(device, [0.0, 0.0])
                acc[0] += nominal
                acc[1] += seconds
            elif flops > 0:
                acc = achieved.setdefault(device, [0.0, 0.0])
                acc[0] += flops
                acc[1] += seconds
        factors = {d: f / s / (self.spec.devices[d].gflops * 1e9) for d, (f, s) in achieved.items()}
        if factors:
            typical = float(np.median(list(factors.values())))
            self.speed = {d: min(factors.get(d, typical), typical) for d in self.spec.devices}
        if timed:
            self.speed |= {d: nominal / seconds for d, (nominal, seconds) in timed.items()}

    def _record_history(self, now: float) -> None:
        second, last = int(now), self._second
        steps = 1 if last is None or second < last else min(second - last, self._history_len)
        for key, mbps in self.link_mbps.items():
            if steps == 0:
                self.history[key][-1] = mbps  # the same second again: it ends with the newest estimate
            else:
                self.history[key].extend([mbps] * steps)
        self._second = second

    def _failure_evidence(self, wall: float) -> tuple[float, dict[str, int], dict[str, float]]:
        """The window, and per device its failures and seconds up in it (module docstring)."""
        failures = self.controller.failures
        d = self.controller.dilation
        self._outages += [Outage(device, when / d) for when, device in failures[self._failures_folded :]]
        self._failures_folded = len(failures)
        up = self.controller.available
        for outage in self._outages:
            if outage.back is None and outage.device in up:
                outage.back = wall
        window = min(self.failure_window_s, wall - self._started)
        lo = wall - window
        self._outages = [o for o in self._outages if o.back is None or o.back > lo]
        seen, uptime = dict.fromkeys(self.spec.devices, 0), dict.fromkeys(self.spec.devices, window)
        for o in self._outages:
            seen[o.device] += o.down > lo
            uptime[o.device] -= (wall if o.back is None else o.back) - max(o.down, lo)
        return window, seen, uptime

    def snapshot(self) -> Snapshot:
        """What the cluster has measured up to now."""
        wall = self._clock()
        since = min(self._folded, wall - self.window_s)
        self._update_links(since, wall)
        self._update_speed()
        self._folded = wall
        now = self.controller.now()
        self._record_history(now)
        window, failures, uptime = self._failure_evidence(wall)
        return Snapshot(
            time=now,
            spec=self.spec,
            source=self.spec.source,
            sink=self.spec.sink,
            available=frozenset(self.controller.available),
            speed=dict(self.speed),
            link_mbps=dict(self.link_mbps),
            link_history={key: tuple(h) for key, h in self.history.items()},
            failure_window_s=window,
            failures=failures,
            uptime_s=uptime,
        )
