"""What a serving run keeps: one record per request, a compact tally of them, and the run's report."""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass

import numpy as np


@dataclass
class RequestLog:
    index: int
    rid: int
    time_s: float
    latency_s: float
    energy_j: float
    outputs_match: bool
    plan: str
    replanned: bool
    waited_s: float = 0.0  # open loop: from the request's arrival until the cluster took it
    rescues: int = 0  # times it was restarted on a newer plan while it ran

    @property
    def response_s(self) -> float:
        """Latency as the client sees it: waiting for the cluster, then being served."""
        return self.waited_s + self.latency_s


class Tally:
    """What a run's summary needs, in 16 bytes and one bit per request.

    A serving process runs for hours: it keeps latencies and energies as packed doubles and the request ids
    it has seen as a bitmap (to count duplicates; ids are dense), never the records themselves
    (``on_result`` streams those to CSV and TensorBoard).
    """

    def __init__(self) -> None:
        self.latency_s = array("d")
        self.energy_j = array("d")
        self.duplicated = 0
        self.mismatched = 0
        self.rescued = 0
        self._seen = bytearray()  # bit k: request id self._base + k was seen
        self._base: int | None = None

    def add(self, record: RequestLog) -> None:
        self.latency_s.append(record.response_s)
        self.energy_j.append(record.energy_j)
        self.mismatched += not record.outputs_match
        self.rescued += record.rescues > 0
        if self._base is None:
            self._base = record.rid - record.rid % 8
        if record.rid < self._base:  # ids start anywhere (the controller's are random-based)
            grow = (self._base - record.rid) // 8 + 4096
            self._seen[:0] = bytes(grow)
            self._base -= 8 * grow
        byte, bit = divmod(record.rid - self._base, 8)
        if byte >= len(self._seen):
            self._seen.extend(bytes(byte + 1 - len(self._seen) + 4096))
        if self._seen[byte] >> bit & 1:
            self.duplicated += 1
        self._seen[byte] |= 1 << bit

    @property
    def completed(self) -> int:
        return len(self.latency_s) - self.duplicated


@dataclass
class ServeReport:
    agent: str
    tally: Tally
    requests: int
    replans: int
    worker_kills: int
    fallbacks: int
    rss_mb: list[tuple[int, float]]  # (request index, controller RSS in MB), every 100 requests

    def summary(self) -> dict:
        t = self.tally
        lat = np.asarray(t.latency_s) if t.latency_s else np.array([math.nan])
        return {
            "agent": self.agent,
            "requests": self.requests,
            "completed": t.completed,
            "lost": self.requests - t.completed,
            "duplicated": t.duplicated,
            "outputs_match": t.mismatched == 0,
            "replans": self.replans,
            "latency_mean_s": float(lat.mean()),
            "latency_p50_s": float(np.percentile(lat, 50)),
            "latency_p95_s": float(np.percentile(lat, 95)),
            "energy_mean_j": float(np.mean(t.energy_j)) if t.energy_j else math.nan,
            "worker_kills": self.worker_kills,
            "planner_fallbacks": self.fallbacks,
            "rescued": t.rescued,
        }
