"""runtime/schedule.py's trace integration, compiled for env's numba kernels, and the snapshot's window means.

The runtime stays numba-free, so the one integration routine (``locate``, ``segment_at``,
``carry_seconds``) is stated in runtime/schedule.py and compiled here for the kernels that call it: the
cost model's replay (env/cost_kernels.py) and ``window_means``, which a snapshot reads once per request.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from runtime import schedule
from runtime.schedule import BYTES_PER_MBIT, TraceStack

# compiled into the kernels that call them
locate = njit(schedule.locate)
segment_at = njit(schedule.segment_at)
carry_seconds = njit(schedule.carry_seconds)


@njit(cache=True)
def _window_means(times, mbps, rate, cum, lo, hi, duration, period, t, window_s, history, n_windows):
    """``Trace.mean_mbps`` (same routine, same float operations) of every stacked trace over the
    snapshot's windows at ``t``: [t - window_s, t], then the one-second windows ending at
    t - history + 1, ..., t (all clipped at 0); the first ``n_windows`` of them."""
    out = np.empty((lo.size, n_windows))
    for w in range(n_windows):
        if w == 0:
            t0, t1 = max(0.0, t - window_s), t
        else:
            t0, t1 = max(0.0, (t - history) + (w - 1)), max(0.0, (t - history) + w)
        for i in range(lo.size):
            if t1 == t0:
                out[i, w] = mbps[segment_at(times, lo[i], hi[i], duration[i], t0)]
            else:
                k0, _, c0 = locate(times, rate, cum, lo[i], hi[i], duration[i], t0)
                k1, _, c1 = locate(times, rate, cum, lo[i], hi[i], duration[i], t1)
                out[i, w] = ((k1 - k0) * period[i] + c1 - c0) / (t1 - t0) / BYTES_PER_MBIT
    return out


def window_means(stack: TraceStack, t: float, window_s: float, history: int, n_windows: int) -> np.ndarray:
    """(traces, windows) means of ``_window_means``'s windows."""
    return _window_means(
        stack.times, stack.mbps, stack.rate, stack.cum, stack.lo, stack.hi, stack.duration, stack.period,
        float(t), float(window_s), history, n_windows,
    )  # fmt: skip
