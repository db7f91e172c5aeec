"""Workers whose clocks disagree with the controller's: latencies and telemetry on the controller's clock.

Each worker runs in its own process with its clock shifted as a separate host's would be (the source 2 s
behind, the sink 2 s ahead, the middle one right); the controller estimates the offsets from its heartbeats
and reports everything on its own clock.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from runtime import models
from runtime.clock import ClockOffset
from runtime.controller import Controller
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.spec import load_cluster

SPEC = load_cluster(Path(__file__).resolve().parents[1] / "configs" / "clusters" / "tiny3.yaml")
OFFSETS = {"d0": -2.0, "d1": 0.0, "d2": 2.0}  # seconds each worker's clock runs ahead
# a worker process whose every time.time() reads its host's (shifted) clock
SKEWED_WORKER = (
    "import sys, time; real = time.time; offset = float(sys.argv.pop(1)); "
    "time.time = lambda: real() + offset; "
    "from runtime.worker import main; main()"
)


def test_an_offset_is_the_shortest_round_trip_sample():
    clock = ClockOffset()
    assert not clock.known and clock.seconds == 0.0
    clock.add(sent=100.0, worker_clock=102.05, received=100.1)  # 0.1 s round trip: +2.0
    clock.add(sent=101.0, worker_clock=103.9, received=101.6)  # a delayed leg: +2.6, 0.6 s round trip
    assert clock.seconds == pytest.approx(2.0) and clock.uncertainty_s == pytest.approx(0.05)
    assert clock.to_controller(110.0) == pytest.approx(108.0)
    clock.reset()
    assert not clock.known


@pytest.fixture(scope="module")
def skewed_workers():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs, endpoints = {}, {}
    try:
        for device, offset in OFFSETS.items():
            cmd = [sys.executable, "-c", SKEWED_WORKER, str(offset), "--bind", "tcp://127.0.0.1:*"]
            cmd += ["--device-id", device, "--parent-pid", str(os.getpid())]
            procs[device] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
        for device, proc in procs.items():
            ready, _, _ = select.select([proc.stdout], [], [], 120.0)
            line = proc.stdout.readline() if ready else b""
            assert line.startswith(b"READY "), f"worker {device} did not start"
            endpoints[device] = line.split()[1].decode()
        yield endpoints
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def test_latencies_and_telemetry_are_on_the_controllers_clock(skewed_workers):
    model = models.build("tiny", seed=0)
    graph = LayerGraph.from_model(model, models.input_shape("tiny"), "tiny")
    n, cut = len(graph.units), graph.cut_points[len(graph.cut_points) // 2]
    # the source d0 and d1 compute the first half, the sink d2 the rest: every clock is in the path
    plan = Plan.build("d0", "d2", [(0, cut, {"d0": 1.0, "d1": 1.0}), (cut, n, {"d2": 1.0})])
    x = torch.randn(1, *models.input_shape("tiny"), generator=torch.Generator().manual_seed(0))
    with Controller(SPEC, skewed_workers, model="tiny") as ctl:
        offsets = {d: s.clock_offset_s for d, s in ctl.status().items()}
        assert offsets == {d: pytest.approx(o, abs=0.05) for d, o in OFFSETS.items()}
        ctl.deploy(plan)
        for _ in range(3):
            before = time.time()
            result = ctl.infer(x)
            after = time.time()
            torch.testing.assert_close(result.output, model(x), rtol=1e-4, atol=1e-5)
            # uncorrected, the sink's +2 s and the source's -2 s would add 4 s to the latency
            assert 0 < result.latency_s <= result.wall_s + 0.05
            stamps = [e.get("t", e.get("start")) for e in result.timeline.events]
            stamps += [e["end"] for e in result.timeline.events if "end" in e]
            assert all(before - 0.05 <= t <= after + 0.05 for t in stamps), (before, after, stamps)
            assert {e["device"] for e in result.timeline.events} == set(OFFSETS)
        # link samples (from transfer progress) on the controller's clock too
        last = list(ctl.link_samples)[-2:]
        assert last and all(before - 0.05 <= end <= after + 0.05 for end, *_ in last)
