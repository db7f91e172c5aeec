"""Shared test fixtures."""

from __future__ import annotations

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
