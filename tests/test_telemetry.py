"""LiveView: a Snapshot from runtime telemetry, with sensible guesses for what was not measured."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from env.snapshot import link_key
from env.telemetry import LiveView, current_rate, drift_factor, overdue_bounds
from runtime.spec import load_cluster
from runtime.timeline import checked_event, undilated

SPEC = load_cluster(Path(__file__).resolve().parents[1] / "configs" / "clusters" / "mesh0.yaml")


class Telemetry:
    """The part of a Controller that LiveView reads, filled by hand (times relative to now)."""

    def __init__(self, compute=()):
        self.link_samples: list[tuple[float, str, str, int, float]] = []
        self.in_transit: list[tuple[str, str, int, float]] = []
        self.compute_samples = list(compute)
        self.available = frozenset(SPEC.devices)
        self.failures: list[tuple[float, str]] = []  # (wall time, device) found down by heartbeats
        self.clock = 12.5
        self.dilation = 1.0  # wall seconds per emulated second

    def transfer(self, a: str, b: str, mbps: float, seconds: float = 0.5, ago: float = 0.0) -> None:
        self.link_samples.append((time.time() - ago, a, b, int(mbps * 1e6 / 8 * seconds), seconds))

    def started(self, a: str, b: str, nbytes: int, ago: float) -> None:
        """A transfer of ``nbytes`` that started ``ago`` seconds ago and has not ended."""
        self.in_transit.append((a, b, nbytes, time.time() - ago))

    def transfers_in_progress(self):
        return list(self.in_transit)

    def now(self):
        return self.clock


def test_before_any_measurement_the_spec_is_the_guess():
    snap = LiveView(SPEC, Telemetry()).snapshot()
    assert snap.link_mbps == {link_key(link.a, link.b): link.mbps for link in SPEC.links}
    assert set(snap.speed.values()) == {1.0} and snap.time == 12.5


def test_a_view_started_from_a_snapshot_believes_it_until_the_cluster_measures_otherwise():
    """A live comparison's watcher starts from the snapshot its agent planned on: its rates, histories
    and speeds, not the spec's; a transfer then moves the link it crossed as from any other estimate."""
    start = LiveView(SPEC, Telemetry()).snapshot()
    half = {key: mbps / 2 for key, mbps in start.link_mbps.items()}
    start = replace(
        start,
        link_mbps=half,
        link_history={key: (mbps * 2,) * 4 + (mbps,) * 4 for key, mbps in half.items()},
        speed=dict.fromkeys(SPEC.devices, 0.5),
    )
    tel = Telemetry()
    view = LiveView(SPEC, tel, start=start)
    snap = view.snapshot()
    assert snap.link_mbps == half and set(snap.speed.values()) == {0.5}
    # the start's eight seconds, the oldest dropped for the second the view was read in
    assert snap.link_history[link_key("0", "9")] == (26.0,) * 3 + (13.0,) * 5
    tel.transfer("8", "4", 30.0)  # spec 30, believed 15: measured back
    assert view.snapshot().link_mbps[link_key("8", "4")] == pytest.approx(30.0)


def test_under_a_time_dilation_the_view_measures_the_emulated_cluster():
    """A cluster emulated 4x slower carries a quarter of each link's rate in wall time: 8-4 at 20 Mbit/s
    sends 0.5 emulated s of bytes in 2 wall s. The view reads 20, not 5. A transfer on 6-8 (spec 17) on
    the air for 1.2 wall s, 0.3 emulated s, with bytes for 0.025 emulated s is overdue, and bounds 6-8 at
    its bytes over 0.3 s, not over 1.2 s, and moves no other link."""
    tel = Telemetry()
    tel.dilation = 4.0
    view = LiveView(SPEC, tel)
    tel.link_samples.append((time.time(), "8", "4", int(20e6 / 8 * 0.5), 2.0))
    nbytes = int(17e6 / 8 * 0.3 / 12)
    tel.started("6", "8", nbytes, ago=1.2)
    snap = view.snapshot()
    assert snap.link_mbps[link_key("8", "4")] == pytest.approx(20.0)
    assert snap.link_mbps[link_key("6", "8")] == pytest.approx(nbytes * 8 / 1e6 / 0.3, rel=0.01)
    assert snap.link_mbps[link_key("0", "9")] == 26


def test_silent_links_keep_their_estimate_while_the_measured_ones_hold():
    tel = Telemetry()
    view = LiveView(SPEC, tel)
    tel.transfer("8", "4", 20.0)  # spec 30: within the drift band of its old estimate
    tel.transfer("6", "8", 17.0)  # spec 17
    snap = view.snapshot()
    assert snap.link_mbps[link_key("8", "4")] == pytest.approx(20.0)
    assert snap.link_mbps[link_key("0", "9")] == 26  # spec, untouched
    tel.link_samples.clear()
    tel.clock += 30  # long after: nothing new crossed any link
    assert view.snapshot().link_mbps[link_key("8", "4")] == pytest.approx(20.0)  # no fixed window forgets it


def test_after_a_common_drop_silent_links_fall_as_much_as_the_median_measured_one():
    tel = Telemetry()
    view = LiveView(SPEC, tel, stand_s=0.0)  # the vote alone: no link's own reading stands
    tel.transfer("8", "4", 1.0)  # spec 30: a thirtieth (one sender's timer overshot, say)
    tel.transfer("6", "8", 3.4)  # spec 17: a fifth
    tel.transfer("4", "9", 8.6)  # spec 43: a fifth
    snap = view.snapshot()
    assert snap.link_mbps[link_key("8", "4")] == pytest.approx(1.0)
    assert snap.link_mbps[link_key("0", "9")] == pytest.approx(26 / 5)
    assert snap.link_history[link_key("8", "4")][-1] == pytest.approx(1.0)
    tel.link_samples.clear()
    tel.transfer("8", "4", 30.0)  # recovery, seen on two links back at the levels they fell from
    tel.transfer("4", "9", 43.0)
    tel.clock += 5
    snap = view.snapshot()
    # the silent ones go back to theirs (not up by the median ratio 17.5 of 30 and 5: 0-9 would read 91)
    assert snap.link_mbps[link_key("0", "9")] == pytest.approx(26)
    assert snap.link_mbps[link_key("6", "8")] == pytest.approx(17)


def test_a_partial_recovery_takes_the_silent_links_to_the_same_share_of_their_level():
    tel = Telemetry()
    view = LiveView(SPEC, tel)
    for a, b, mbps in [("8", "4", 3.0), ("4", "9", 4.3)]:  # a tenth of their spec
        tel.transfer(a, b, mbps)
    assert view.snapshot().link_mbps[link_key("0", "9")] == pytest.approx(2.6)
    tel.link_samples.clear()
    for a, b, mbps in [("8", "4", 15.0), ("4", "9", 21.5)]:  # half
        tel.transfer(a, b, mbps)
    assert view.snapshot().link_mbps[link_key("0", "9")] == pytest.approx(13.0)


def test_a_vote_does_not_move_again_a_link_measured_since_it_fell():
    """Seen in a kernel-mode collapse run: 6-8 was measured at the collapsed rate; a quarter second later
    links still believed at their rates from before the collapse were measured at a tenth. The vote took
    every silent link down by their ratio, 6-8 too (in the run to about a third of what it had just been
    measured at; here to a tenth). It falls to the share of its level the voters fell to, and it is there."""
    tel = Telemetry()
    view = LiveView(SPEC, tel)
    tel.transfer("6", "8", 1.7, ago=0.3)  # spec 17: a tenth, one link alone moves only itself
    assert view.snapshot().link_mbps[link_key("0", "9")] == 26
    tel.link_samples.clear()
    tel.transfer("8", "4", 3.0)  # spec 30 Mbit/s: a tenth
    tel.transfer("4", "9", 4.3)  # spec 43 Mbit/s: a tenth
    snap = view.snapshot()
    assert snap.link_mbps[link_key("0", "9")] == pytest.approx(2.6)
    assert snap.link_mbps[link_key("6", "8")] == pytest.approx(1.7)


def test_a_plan_that_crosses_one_link_sees_the_silent_ones_come_back():
    """After a fall seen on every link, the plan made for it crosses one link only. A reading at twice the
    fallen rate moves nothing else (a link the vote took too far down reads that when next crossed); the
    link measured back near the level it fell from ends the fall, and the others go back to theirs: a view
    that waited for two links would keep the plan made for the fall for ever (every link was measured at
    its fall here; none of those readings stands, as a crossing long before would not)."""
    tel = Telemetry()
    view = LiveView(SPEC, tel, stand_s=0.0)
    spec_mbps = {link_key(link.a, link.b): link.mbps for link in SPEC.links}
    for key, mbps in spec_mbps.items():
        tel.transfer(*key, mbps / 10)
    fallen = {key: mbps / 10 for key, mbps in spec_mbps.items()}
    assert view.snapshot().link_mbps == pytest.approx(fallen)
    tel.link_samples.clear()
    tel.transfer("8", "4", 6.0, ago=0.1)  # spec 30, fell to 3
    assert view.snapshot().link_mbps == pytest.approx(fallen | {link_key("8", "4"): 6.0})
    tel.link_samples.clear()
    tel.transfer("8", "4", 24.0, ago=0.1)
    assert view.snapshot().link_mbps == pytest.approx(spec_mbps | {link_key("8", "4"): 24.0})


def fall_then_vote_up(stand_s: float, share: float) -> tuple[LiveView, Telemetry, dict]:
    """Three links measured at a tenth of their spec (every other link voted down with them), then two of
    them measured back at ``share`` of their levels (a vote up, 6-8 silent): the view, its telemetry and
    the links after the vote."""
    tel = Telemetry()
    view = LiveView(SPEC, tel, stand_s=stand_s)
    for a, b, mbps in [("8", "4", 3.0), ("4", "9", 4.3), ("6", "8", 1.7)]:
        tel.transfer(a, b, mbps)
    assert view.snapshot().link_mbps[link_key("0", "9")] == pytest.approx(2.6)
    tel.link_samples.clear()
    for a, b, mbps in [("8", "4", 30.0 * share), ("4", "9", 43.0 * share)]:
        tel.transfer(a, b, mbps)
    return view, tel, view.snapshot().link_mbps


def test_a_link_measured_dark_stands_against_other_links_evidence_until_its_reading_ages():
    """On #15's unseen live mesh a crawling transfer measured 8-9 at 0.28 Mbit/s; with nothing on it, the
    view put it back at its level when another link was measured back near its own (a fall's end) or
    faster (a vote up), and the last rescue crossed it while still dark. A link's own reading now outranks
    other links' evidence for ``stand_s``; once it is older, the link returns to its level (a plan made
    around it would never measure it again)."""

    _, _, links = fall_then_vote_up(stand_s=0.0, share=0.5)
    assert links[link_key("6", "8")] == pytest.approx(8.5)  # without the rule, up with the others
    view, tel, links = fall_then_vote_up(stand_s=1.0, share=0.5)  # a second: the folds take milliseconds
    assert links[link_key("0", "9")] == pytest.approx(13.0)
    assert links[link_key("6", "8")] == pytest.approx(1.7)  # its own reading stands
    tel.link_samples.clear()
    tel.transfer("8", "4", 30.0)  # back at its level: the fall is over, but not for 6-8 yet
    links = view.snapshot().link_mbps
    assert links[link_key("0", "9")] == pytest.approx(26.0)
    assert links[link_key("6", "8")] == pytest.approx(1.7)
    time.sleep(1.1)
    tel.link_samples.clear()
    assert view.snapshot().link_mbps[link_key("6", "8")] == pytest.approx(17.0)


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_a_link_a_vote_up_passed_by_moves_as_the_others_did_once_its_reading_ages(share):
    """When a collapse ends, the links measured back at their levels vote every other link up to its own,
    and no fall's end follows: nothing is still down but the link whose own dark reading stood during the
    vote. Without a wait for that reading to age it stayed dark for good, and every later plan avoided it
    (a collapse-bench run on that rule kept a plan twice as slow as its first to its end; not traced).
    It returns to the share of its level the vote took the others to, not above."""
    view, tel, links = fall_then_vote_up(stand_s=1.0, share=share)  # a second: the folds take milliseconds
    assert links[link_key("0", "9")] == pytest.approx(26.0 * share)
    assert links[link_key("6", "8")] == pytest.approx(1.7)  # its own reading stands
    time.sleep(1.1)
    tel.link_samples.clear()
    assert view.snapshot().link_mbps[link_key("6", "8")] == pytest.approx(17.0 * share)


def test_brief_transfers_move_no_link_mid_fall_but_can_end_it():
    """Mid-collapse, the few-kB outputs that end a request cross two links at 2.6x their estimate (a
    shaper's burst over a kernel-shaped link). In the kernel-mode collapse runs such readings moved every
    silent link up; set on their own link, they drew the next plan onto it, whose first long transfer
    crawled and took every link down. The same rates held for half a second are a recovery and move the
    silent links; a brief reading back near the level its link fell from ends the fall (none of the readings
    at the fall stands here)."""
    spec_mbps = {link_key(link.a, link.b): link.mbps for link in SPEC.links}
    fallen = {key: mbps / 10 for key, mbps in spec_mbps.items()}
    outputs = [link_key("8", "4"), link_key("4", "9")]
    for seconds in (0.01, 0.5):
        tel = Telemetry()
        view = LiveView(SPEC, tel, stand_s=0.0)
        for key, mbps in fallen.items():
            tel.transfer(*key, mbps)
        assert view.snapshot().link_mbps == pytest.approx(fallen)
        tel.link_samples.clear()
        for key in outputs:
            tel.transfer(*key, 2.6 * fallen[key], seconds=seconds, ago=0.1)
        snap = view.snapshot()
        if seconds < 0.05:
            assert snap.link_mbps == pytest.approx(fallen)
        else:
            assert snap.link_mbps == pytest.approx({key: 2.6 * mbps for key, mbps in fallen.items()})
    tel = Telemetry()
    view = LiveView(SPEC, tel, stand_s=0.0)
    for key, mbps in fallen.items():
        tel.transfer(*key, mbps)
    view.snapshot()
    tel.link_samples.clear()
    tel.transfer(*outputs[0], 0.8 * spec_mbps[outputs[0]], seconds=0.002, ago=0.1)
    assert view.snapshot().link_mbps == pytest.approx(spec_mbps)


def test_links_measured_before_a_drop_do_not_outvote_those_measured_after_it():
    """A request ran across a drop: three links carried its early transfers at their spec rate, two its
    late ones at a tenth. The late ones speak for the present; the early ones fall with the silent links."""
    tel = Telemetry()
    view = LiveView(SPEC, tel)
    spec_mbps = {link_key(link.a, link.b): link.mbps for link in SPEC.links}
    early, late, silent = list(spec_mbps)[:3], list(spec_mbps)[3:5], list(spec_mbps)[5]
    for key in early:
        tel.transfer(*key, spec_mbps[key], ago=2.0)
    for key in late:
        tel.transfer(*key, spec_mbps[key] / 10, ago=0.1)
    snap = view.snapshot()
    for key in [*early, *late, silent]:
        assert snap.link_mbps[key] == pytest.approx(spec_mbps[key] / 10, rel=0.01), key


def test_one_link_alone_moves_only_itself():
    tel = Telemetry()
    view = LiveView(SPEC, tel)
    tel.transfer("8", "4", 3.0)  # spec 30: its own fade
    snap = view.snapshot()
    assert snap.link_mbps[link_key("8", "4")] == pytest.approx(3.0)
    assert snap.link_mbps[link_key("0", "9")] == 26


def test_an_overdue_transfer_bounds_its_link_before_it_ends():
    tel = Telemetry()
    view = LiveView(SPEC, tel)
    key = link_key("8", "4")  # spec 30 Mbit/s
    tel.started("8", "4", 250_000, ago=0.1)  # 2 Mbit/s at most, but only for 0.1 s: may just be unreported
    assert view.snapshot().link_mbps[key] == 30
    tel.in_transit[0] = ("8", "4", 250_000, time.time() - 1.0)  # the same transfer, a second on the air
    snap = view.snapshot()
    assert snap.link_mbps[key] == pytest.approx(2.0, rel=0.01)
    assert snap.link_mbps[link_key("0", "9")] == 26  # a stuck transfer moves no other link
    tel.transfer("8", "4", 30.0, ago=0.5)  # ended before the bound: the link before the change
    tel.in_transit.clear()  # the crawling transfer was cut short (its request restarted elsewhere)
    assert view.snapshot().link_mbps[key] == pytest.approx(2.0, rel=0.01)  # the bound stands
    tel.transfer("8", "4", 1.5)  # ended after it: the link's new regime
    assert view.snapshot().link_mbps[key] == pytest.approx(1.5)
    # a transfer within drift x of what its link's estimate allows says nothing new
    tel = Telemetry()
    tel.started("4", "9", 3_000_000, ago=0.6)  # spec 43: 40 Mbit/s so far
    assert LiveView(SPEC, tel).snapshot().link_mbps[link_key("4", "9")] == 43


def test_a_bound_stands_when_the_links_it_took_down_are_measured_back_up():
    """A stuck transfer takes its link down; it is then cut short (its request was rescued elsewhere) and
    never reports an end. Links measured at their old speed afterwards do not bring the bounded link back
    above its bound: nothing has measured it since (it used to bounce back to ~spec, and the next request
    was planned across the collapsed link again)."""
    tel = Telemetry()
    view = LiveView(SPEC, tel)
    stuck = link_key("8", "4")  # spec 30 Mbit/s
    tel.started("8", "4", 250_000, ago=1.0)  # 2 Mbit/s at most
    assert view.snapshot().link_mbps[stuck] == pytest.approx(2.0, rel=0.01)
    tel.in_transit.clear()  # cut short by the rescue
    for a, b in [("0", "9"), ("4", "9"), ("6", "7")]:
        tel.transfer(a, b, SPEC.link(a, b).mbps)  # the rescued request's links, at their spec speed
    snap = view.snapshot()
    assert snap.link_mbps[link_key("0", "9")] == pytest.approx(SPEC.link("0", "9").mbps)
    assert snap.link_mbps[stuck] <= 2.0 * 1.01  # the bound stands
    tel.transfer("8", "4", 25.0)  # measured again: the link's own new regime
    assert view.snapshot().link_mbps[stuck] == pytest.approx(25.0)


def test_crawling_transfers_measured_by_their_ticks_move_only_their_links():
    """The pieces two crawling transfers reported measure their links exactly, and the silent links stay:
    a link still carrying a transfer does not vote (two ticking links were a vote of two, and took every
    silent link down as the stuck vote had: the module docstring)."""
    tel = Telemetry()
    view = LiveView(SPEC, tel)
    # 2 MB, 0.53 s and 0.94 s at the specs' 30 and 17 Mbit/s: on the air for half a second, not overdue
    tel.started("8", "4", 2_000_000, ago=0.5)
    tel.started("6", "8", 2_000_000, ago=0.5)
    tel.transfer("8", "4", 1.5, seconds=0.25)  # their latest quarter seconds
    tel.transfer("6", "8", 0.85, seconds=0.25)
    snap = view.snapshot()
    assert snap.link_mbps[link_key("8", "4")] == pytest.approx(1.5)
    assert snap.link_mbps[link_key("6", "8")] == pytest.approx(0.85, rel=1e-3)
    assert snap.link_mbps[link_key("0", "9")] == 26


def test_two_stuck_transfers_bound_their_links_and_move_no_other():
    """Two transfers stall on 8-4 and 6-8 (spec 30 and 17), as on two links dark in their recordings at
    once: each link is bounded, lower as the transfers run on, and the silent links keep their estimates
    (the stuck vote took every one down to a few percent and a rescue moved the request onto three
    devices, needlessly: the module docstring)."""
    tel = Telemetry()
    view = LiveView(SPEC, tel)
    for ago, bound in ((1.0, 2.0), (1.2, 2.0), (1.6, 1.25)):  # 1.2 s: within drift x of the last bound
        start = time.time() - ago
        tel.in_transit = [("8", "4", 250_000, start), ("6", "8", 141_667, start)]
        snap = view.snapshot()
        assert snap.link_mbps[link_key("8", "4")] == pytest.approx(bound, rel=0.02)
        assert snap.link_mbps[link_key("6", "8")] == pytest.approx(bound * 17 / 30, rel=0.02)
        assert snap.link_mbps[link_key("0", "9")] == 26


def test_overdue_bounds_keep_the_lowest_per_link():
    wall = 100.0
    transfers = [("a", "b", 1_000_000, wall - 1.0), ("b", "a", 1_000_000, wall - 4.0), ("a", "c", 10, 99.9)]
    bounds = overdue_bounds(transfers, wall, {("a", "b"): 20.0, ("a", "c"): 20.0}, 1.5, 0.25)
    assert bounds == {("a", "b"): pytest.approx(2.0)}  # 8 and 2 Mbit/s at most: 2; a-c too young


def test_a_link_estimate_is_its_current_regime_not_a_blend():
    before = [(float(t), 250_000, 0.1) for t in range(5)]  # 20 Mbit/s
    after = [(5.0 + t, 250_000, 1.0) for t in range(3)]  # 2 Mbit/s
    assert current_rate(before + after, drift=1.5, window_s=10) == pytest.approx(2.0)
    assert current_rate(before, drift=1.5, window_s=10) == pytest.approx(20.0)
    # a tiny transfer (mostly timer overshoot) does not count as a change point
    blip = [(5.0, 1_000, 0.002)]
    assert current_rate(before + blip, drift=1.5, window_s=10) == pytest.approx(
        (5 * 250_000 + 1_000) * 8 / 1e6 / 0.502
    )
    # transfers that ended more than window_s before the newest are too old to count
    assert current_rate(before, drift=1.5, window_s=1.5) == pytest.approx(20.0)
    assert current_rate([(0.0, 250_000, 1.0), (9.0, 250_000, 0.1)], 100.0, 5.0) == pytest.approx(20.0)


def test_drift_needs_the_measured_links_to_agree():
    assert drift_factor([], 1.5) == 1.0
    assert drift_factor([0.1], 1.5) == 1.0  # one finished transfer: maybe a timer overshooting
    assert drift_factor([0.9, 1.2, 1.1], 1.5) == 1.0  # noise, not a move
    assert drift_factor([0.1, 0.3, 0.2, 1.0], 1.5) == pytest.approx(0.25)  # a drop: the median
    assert drift_factor([10.0, 8.0, 12.0], 1.5) == pytest.approx(10.0)  # a rise: the median


def test_history_steps_once_per_second():
    tel = Telemetry()
    view = LiveView(SPEC, tel, history=4)
    key = link_key("8", "4")
    view.snapshot()
    tel.transfer("8", "4", 3.0)
    tel.clock += 2.0  # two seconds later
    assert view.snapshot().link_history[key] == (30, 30, 3.0, 3.0)
    tel.link_samples.clear()
    tel.transfer("8", "4", 2.0)
    tel.clock += 0.2  # same second: its value is the newest estimate
    assert view.snapshot().link_history[key] == (30, 30, 3.0, 2.0)


def test_speed_is_relative_to_what_the_others_achieve():
    now = time.time()
    compute = [
        (now - 8, "8", 6e9, 2.0, None),  # 6 GFLOP/s nominal: achieves half (early in a long request)
        (now, "9", 9e9, 2.0, None),  # 9 GFLOP/s nominal: achieves half
        (now, "3", 8e9, 5.0, None),  # 8 GFLOP/s nominal: achieves a fifth, clearly loaded
    ]
    tel = Telemetry(compute=[(now - 60, "7", 7e9, 100.0, None)])
    view = LiveView(SPEC, tel)
    view.snapshot()  # folds the old task in
    tel.compute_samples += compute  # a request ended: its tasks arrive, stamped with their own end times
    snap = view.snapshot()
    assert snap.speed["8"] == pytest.approx(0.5) and snap.speed["9"] == pytest.approx(0.5)
    assert snap.speed["3"] == pytest.approx(0.2)
    assert snap.speed["7"] == pytest.approx(0.5)  # not measured recently: the typical factor
    assert view.snapshot().speed == snap.speed  # nothing new arrived: nothing changes


def test_an_emulated_devices_speed_is_its_nominal_seconds_over_the_seconds_taken():
    """Emulated workers report what each task takes at nominal speed: the factor is exact, whatever share
    of a device's peak FLOP/s the task's layers reach, and most devices may be slow at once."""
    now = time.time()
    tel = Telemetry()
    view = LiveView(SPEC, tel)
    tel.compute_samples += [
        (now, "8", 1e9, 2.0, 1.0),  # half speed, on layers far below the device's peak FLOP/s
        (now, "8", 50e9, 2.0, 1.0),
        (now, "9", 9e9, 4.0, 1.0),  # a quarter
        (now, "3", 8e9, 5.0, 1.0),  # a fifth
        (now, "6", 1e9, 1.0, 1.0),  # full speed, however few FLOPs
    ]
    snap = view.snapshot()
    assert snap.speed["8"] == pytest.approx(0.5) and snap.speed["9"] == pytest.approx(0.25)
    assert snap.speed["3"] == pytest.approx(0.2) and snap.speed["6"] == pytest.approx(1.0)
    assert snap.speed["7"] == 1.0  # not measured: as it was


def test_links_measured_at_their_speed_hold_when_one_crawls():
    """Three links carried a request's transfers at their spec rate half a second ago; the next transfer
    crawls at a tenth. The crawling link, still on the air, does not vote and the three say the mesh held:
    it moves, the others stay (the stuck vote took them all down to a tenth)."""
    tel = Telemetry()
    view = LiveView(SPEC, tel)
    spec_mbps = {link_key(link.a, link.b): link.mbps for link in SPEC.links}
    early = [key for key in spec_mbps if "8" not in key and "4" not in key][:3]
    for key in early:
        tel.transfer(*key, spec_mbps[key], seconds=0.1, ago=0.6)
    tel.started("8", "4", 250_000, ago=0.5)  # spec 30 Mbit/s: 0.07 s expected
    tel.transfer("8", "4", 3.0, seconds=0.25)  # its latest quarter second: a tenth
    snap = view.snapshot()
    assert snap.link_mbps[link_key("8", "4")] == pytest.approx(3.0)
    for key in [*early, link_key("0", "9")]:
        assert snap.link_mbps[key] == pytest.approx(spec_mbps[key], rel=0.01), key


def test_failures_found_by_heartbeats_become_the_snapshots_failure_evidence():
    tel = Telemetry()
    view = LiveView(SPEC, tel, failure_window_s=300.0)
    view._started -= 100.0  # the view has watched the cluster for 100 s
    assert view.snapshot().failures == dict.fromkeys(SPEC.devices, 0)
    tel.failures.append((time.time() - 30.0, "4"))  # found down 30 s ago, still down
    tel.available = frozenset(SPEC.devices) - {"4"}
    snap = view.snapshot()
    assert snap.failures["4"] == 1 and sum(snap.failures.values()) == 1
    assert snap.uptime_s["4"] == pytest.approx(70.0, abs=0.5)
    assert snap.uptime_s["0"] == pytest.approx(100.0, abs=0.5) == snap.failure_window_s
    assert snap.failure_rate("4") > 0 == snap.failure_rate("0")
    tel.available = frozenset(SPEC.devices)  # back: its outage ends at this snapshot
    back = view.snapshot()
    assert back.failures["4"] == 1 and back.uptime_s["4"] == pytest.approx(70.0, abs=0.5)


@pytest.mark.parametrize("nominal", [-1.0, float("nan"), float("inf"), "1.0"])
def test_a_compute_events_nominal_seconds_must_be_a_finite_number(nominal):
    event = {"ev": "compute", "stage": 0, "ready": 1.0, "start": 1.0, "end": 2.0, "cpu": 0.1, "target": 1.0}
    event |= {"flops": 10}
    assert checked_event(event, "8", {})["device"] == "8"  # a real device reports none
    assert checked_event(event | {"nominal": 0.5}, "8", {})["nominal"] == 0.5
    with pytest.raises(ValueError, match="telemetry field nominal"):
        checked_event(event | {"nominal": nominal}, "8", {})


def test_nominal_seconds_are_a_duration_on_the_emulated_clock():
    event = {"ev": "compute", "start": 12.0, "end": 16.0, "target": 4.0, "nominal": 2.0}
    assert undilated(event, epoch=10.0, dilation=2.0) == {
        "ev": "compute",
        "start": 11.0,
        "end": 13.0,
        "target": 2.0,
        "nominal": 1.0,
    }
