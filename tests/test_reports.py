"""What a controller does with a worker's transfer reports when they arrive late: a sender's report that
its transfer ended can reach the controller after the receiver's result did, when the request is over and
its plan retired. The transfer must still be heard ending, or it reads as on the air for ever (and a
crawling link) to every planner after it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime.attempts import Attempts
from runtime.clock import ClockOffset
from runtime.reports import WorkerReports
from runtime.spec import load_cluster
from runtime.telemetry import Telemetry
from runtime.transport import Header, Kind, Message

SPEC = load_cluster(Path(__file__).resolve().parents[1] / "configs" / "clusters" / "tiny3.yaml")
PLAN_ID, WIRE = 7, 41  # a plan with d1 and d2 in it; an attempt the controller no longer awaits


@pytest.fixture
def reports():
    """WorkerReports over plan 7 (d1 sends to d2) and no awaited request."""
    workers = SimpleNamespace(peers={d: SimpleNamespace(clock=ClockOffset()) for d in SPEC.devices})
    deployed = SimpleNamespace(by_id={PLAN_ID: SimpleNamespace(parts={"d1": None, "d2": None})})
    return WorkerReports(
        None, workers, deployed, Attempts(SPEC), Telemetry(SPEC), reconfigure=lambda device: None
    )


def _progress(ev: str, device: str = "d1", **extra) -> Message:
    meta = {"plan": PLAN_ID, "id": 3, "from": device, "to": "d2", "src": "d0", "bytes": 8192, "start": 100.0}
    return Message(Header(Kind.PROGRESS, WIRE, meta | {"ev": ev} | extra), [], [])


def test_a_transfer_ending_after_its_plan_was_retired_is_heard_ending(reports):
    reports.handle("d1", _progress("start"))
    assert reports.telemetry.transfers_in_progress() == [("d1", "d2", 8192, 100.0)]
    reports.deployed.by_id.clear()  # the result came from the sink first: the request is over
    reports.handle("d1", _progress("end", end=100.01))
    assert reports.telemetry.transfers_in_progress() == []
    assert list(reports.telemetry.link_samples) == [(100.01, "d1", "d2", 8192, pytest.approx(0.01))]


def test_a_device_in_no_plan_is_not_heard_about_a_transfer_it_never_reported_starting(reports):
    reports.handle("d1", _progress("start"))
    reports.deployed.by_id.clear()
    reports.handle("d0", _progress("end", device="d0", end=100.01))  # another device's transfer id 3
    assert reports.telemetry.transfers_in_progress() == [("d1", "d2", 8192, 100.0)]
    assert not reports.telemetry.link_samples
