"""A worker's clock offset from the controller's, estimated NTP-style from the heartbeat exchange.

Workers on different hosts do not share a clock, yet they stamp every event they report (inputs, compute,
transfers, results) with their own. The controller holds the one clock of record: every ping it sends
carries a sequence number it remembers the send time ``t0`` of; the worker's PONG carries its clock ``tw``
when it answered, and the PONG arrives at ``t3``. If the two legs took equally long, the worker's clock was
``offset = tw - (t0 + t3) / 2`` ahead, give or take half the round trip. As NTP's clock filter does, the
estimate is the sample with the shortest round trip among the latest few (a delayed leg inflates the round
trip and skews the sample), so it refreshes with every heartbeat and follows a drifting clock.
"""

from __future__ import annotations

from collections import deque


class ClockOffset:
    """Seconds one worker's clock runs ahead of the controller's (see the module docstring)."""

    def __init__(self, samples: int = 16):
        self._samples: deque[tuple[float, float]] = deque(maxlen=samples)  # (round trip, offset)

    def add(self, sent: float, worker_clock: float, received: float) -> None:
        """One exchange: ping sent at ``sent``, answered at ``worker_clock``, answer in at ``received``."""
        if received >= sent:
            self._samples.append((received - sent, worker_clock - (sent + received) / 2))

    def reset(self) -> None:
        """Forget every sample (the worker restarted: a new process, maybe a new host)."""
        self._samples.clear()

    @property
    def known(self) -> bool:
        return bool(self._samples)

    @property
    def seconds(self) -> float:
        """The estimate: worker clock minus controller clock (0 until a sample arrives)."""
        return min(self._samples)[1] if self._samples else 0.0

    @property
    def uncertainty_s(self) -> float:
        """Half the round trip of the sample the estimate rests on (inf until a sample arrives)."""
        return min(self._samples)[0] / 2 if self._samples else float("inf")

    def to_controller(self, worker_time: float) -> float:
        """A time stamped by the worker, on the controller's clock."""
        return worker_time - self.seconds
