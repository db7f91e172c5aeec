"""Let the thread that drives the cluster take the GIL back promptly while a planner computes beside it.

A serving loop plans on a thread of its own (serving/policies.py, ``PlanningThread``) while the
controller's thread waits on the workers' sockets. Each time that thread wakes it needs the GIL, and at
CPython's default switch interval (5 ms) it waited far longer while the robust optimiser ran: a thread
sleeping 5 ms at a time woke 40 ms apart in the median and up to 0.58 s apart beside it, on tiny3 (0.006 s
and 0.058 s at 0.5 ms; the ticker of docs/benchmarks.md, thirty-fourth round). Three lanes of tiny frames
at 5 frames/s then stalled for seconds while their lanes re-planned.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

SWITCH_S = 0.0005  # the GIL's switch interval while serving


@contextmanager
def prompt_switches() -> Iterator[None]:
    """Inside the block, a thread waiting for the GIL gets it within ``SWITCH_S`` of asking."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_S)
    try:
        yield
    finally:
        sys.setswitchinterval(before)
