"""Keep what a process has set up out of the garbage collector's full collections while it serves or
measures.

Once torch is loaded a process holds some 400,000 objects that live as long as it does (modules, models,
reference outputs, planners' caches). Every full collection walks all of them, holding the GIL for 0.15 s
to 1.7 s at a time, and a planner's allocations set one off inside a decision or while requests are in
flight: the same search took 0.16-0.57 s from call to call, 0.13-0.26 s with its set-up frozen. Frozen
objects are still freed when their last reference goes; only cycles among them wait for the block's end.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0  # blocks open now: only the outermost freezes and unfreezes


@contextmanager
def setup_frozen() -> Iterator[None]:
    """Inside the block, what exists when it opens stays out of full collections."""
    global _depth
    if _depth == 0:
        gc.collect()
        gc.freeze()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            gc.unfreeze()
