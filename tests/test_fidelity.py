"""Emulation fidelity and the automatic time dilation (pure arithmetic; the live side is in
test_runtime.py and test_evaluate.py)."""

from __future__ import annotations

import pytest
from rich.console import Console

from runtime.emulation import auto_dilation
from runtime.fidelity import FidelityMeter, print_fidelity
from runtime.spec import parse_cluster


def compute(device: str, start: float, end: float, target: float) -> dict:
    return {"ev": "compute", "device": device, "start": start, "end": end, "target": target}


def test_fidelity_is_target_over_wall_compute_time_per_device():
    meter = FidelityMeter()
    assert meter.minimum() is None
    meter.add([compute("a", 0.0, 1.0, 1.0), compute("b", 0.0, 2.0, 1.0), {"ev": "tx", "device": "a"}])
    meter.add([compute("b", 5.0, 6.0, 1.0), compute("a", 2.0, 2.5, 0.5)])
    assert meter.per_device() == {"a": 1.0, "b": pytest.approx(2 / 3)}
    assert meter.minimum() == pytest.approx(2 / 3)
    console = Console(record=True, width=200)
    print_fidelity(meter.per_device(), 1.0, "profile", console)
    text = console.export_text()
    assert "0.667" in text and "device(s) b computed below 95%" in text
    meter.clear()
    assert meter.per_device() == {}


def test_auto_dilation_keeps_the_devices_within_half_the_free_cores():
    spec = parse_cluster(
        {
            "format": "disnet-cluster/1",
            "name": "two",
            "source": "a",
            "sink": "b",
            "devices": [
                {"id": d, "gflops": 30, "power": {"compute": 1, "transmit": 1, "receive": 1, "idle": 0}}
                for d in "ab"
            ],
            "links": [{"a": "a", "b": "b", "mbps": 10}],
        },
        origin="two",
    )
    # 60 GFLOP/s of devices on a 100 GFLOP/s host: 0.6 cores at D = 1
    assert auto_dilation(spec, 100.0, cores=2, cpu_share=1.0) == 1.0
    assert auto_dilation(spec, 100.0, cores=1, cpu_share=1.0) == pytest.approx(1.2)
    assert auto_dilation(spec, 100.0, cores=2, cpu_share=0.2) == pytest.approx(3.0)
