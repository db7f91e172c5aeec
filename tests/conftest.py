"""Shared test fixtures."""

from __future__ import annotations

import os

import psutil
import pytest


def worker_processes() -> list[psutil.Process]:
    """Worker processes started by this test process that are still alive."""
    procs = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "runtime.worker" in " ".join(p.cmdline()):
                procs.append(p)
        except psutil.NoSuchProcess:
            pass
    return procs


@pytest.fixture(scope="module", autouse=True)
def no_orphan_workers():
    """After every test module's clusters are closed, no worker process it started may be left."""
    yield
    left = worker_processes()
    assert not left, f"worker processes left behind: {[p.pid for p in left]}"


def synthetic_profile(model: str, reference_gflops: float) -> dict:
    """A profile record of ``model`` on this host, built from FLOPs (plus a fixed cost per unit, so that
    it is not the FLOPs model in disguise) where profiling is not what a test checks."""
    from env.config import model_graph
    from runtime.profiler import FORMAT, this_host

    graph = model_graph(model)
    return {
        "format": FORMAT,
        "model": model,
        "device": "local",
        "host": this_host(),
        "input_shape": list(graph.input_shape),
        "reference_gflops": reference_gflops,
        "units": [u.name for u in graph.units],
        "unit_seconds": [u.flops / (reference_gflops * 1e9) + 2e-5 for u in graph.units],
    }


@pytest.fixture(scope="session", autouse=True)
def profile_cache(tmp_path_factory):
    """Every tool plans on this host's cached compute profile by default: tests get a private cache with
    synthetic profiles of the models they use (measuring VGG-16 through a worker takes seconds)."""
    from runtime.emulation import measure_host_gflops
    from runtime.profiler import profile_path, write_profile

    folder = tmp_path_factory.mktemp("profiles")
    before = os.environ.get("DISNET_PROFILES")
    os.environ["DISNET_PROFILES"] = str(folder)
    host_gflops = measure_host_gflops(0.1)
    for model in ("tiny", "vgg16_bn"):
        write_profile(synthetic_profile(model, host_gflops), profile_path(model))
    yield folder
    if before is None:
        del os.environ["DISNET_PROFILES"]
    else:
        os.environ["DISNET_PROFILES"] = before
