"""LiveView: a Snapshot from runtime telemetry, with sensible guesses for what was not measured."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from env.network import link_key
from env.telemetry import LiveView
from runtime.spec import load_cluster

SPEC = load_cluster(Path(__file__).resolve().parents[1] / "configs" / "clusters" / "mesh0.yaml")


class Telemetry:
    """The part of a Controller that LiveView reads, filled by hand."""

    def __init__(self, links=None, compute=()):
        self.links = links or {}
        self.compute_samples = list(compute)
        self.available = frozenset(SPEC.devices)

    def link_mbps(self, window_s):
        return dict(self.links)

    def now(self):
        return 12.5


def test_before_any_measurement_the_spec_is_the_guess():
    snap = LiveView(SPEC, Telemetry()).snapshot()
    assert snap.link_mbps == {link_key(link.a, link.b): link.mbps for link in SPEC.links}
    assert set(snap.speed.values()) == {1.0} and snap.time == 12.5


def test_unobserved_links_follow_the_observed_fade():
    observed = {link_key("8", "4"): 3.0, link_key("6", "8"): 1.7}  # spec: 30 and 17 Mbit/s, both at 1/10
    snap = LiveView(SPEC, Telemetry(links=observed)).snapshot()
    assert snap.link_mbps[link_key("8", "4")] == 3.0
    assert snap.link_mbps[link_key("0", "9")] == pytest.approx(26 / 10)  # spec 26 Mbit/s
    assert snap.link_history[link_key("8", "4")][-1] == 3.0


def test_speed_is_relative_to_what_the_others_achieve():
    now = time.time()
    compute = [
        (now, "8", 6e9, 2.0),  # 6 GFLOP/s nominal: achieves half
        (now, "9", 9e9, 2.0),  # 9 GFLOP/s nominal: achieves half
        (now, "3", 8e9, 5.0),  # 8 GFLOP/s nominal: achieves a fifth, clearly loaded
        (now - 60, "7", 7e9, 100.0),  # too old to count
    ]
    snap = LiveView(SPEC, Telemetry(compute=compute)).snapshot()
    assert snap.speed["8"] == pytest.approx(0.5) and snap.speed["9"] == pytest.approx(0.5)
    assert snap.speed["3"] == pytest.approx(0.2)
    assert snap.speed["7"] == pytest.approx(0.5)  # not measured recently: the typical factor
