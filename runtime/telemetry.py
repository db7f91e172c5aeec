"""What the controller measures of the cluster as requests run: the raw material of live planning.

- link samples ``(end, sender, receiver, bytes, radio seconds)``: every piece of every transfer, as
  the workers report it (PROGRESS: start, every quarter second of a long transfer, end), whichever
  attempt it served, so a crawling transfer measures its link while it crawls;
- the transfers still on the air ``(sender, receiver, bytes, start)``: one running for a long time
  bounds its link's rate before it ends;
- compute samples ``(end, device, FLOPs, seconds)`` of every finished request's tasks, and each
  device's fidelity (achieved over nominal speed under emulation).

Times are wall time on the controller's clock. ``env/telemetry.py`` turns these into a planner's
``Snapshot``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from runtime.fidelity import FidelityMeter
from runtime.spec import ClusterSpec


@dataclass(slots=True)
class _OnAir:
    """A transfer reported started and not yet ended, and how much of it has been measured."""

    a: str
    b: str
    nbytes: int
    start: float
    since: float  # when it was last measured: its start, then its latest tick
    carried: int = 0  # bytes it had carried then


@dataclass(frozen=True)
class TransferReport:
    """What one PROGRESS report of a transfer from ``a`` to ``b`` adds."""

    a: str
    b: str
    carried: int  # bytes carried since the transfer's previous report (0: nothing new)
    radio_s: float | None = None  # its radio time, once it ended or was cut short


class Telemetry:
    """Link and compute samples, fidelity and transfers on the air (see the module docstring)."""

    def __init__(self, spec: ClusterSpec, history: int = 4096):
        self.spec = spec
        self.link_samples: deque[tuple[float, str, str, int, float]] = deque(maxlen=history)
        # (end, device, FLOPs, seconds, seconds at nominal speed or None): env/telemetry.py's speed factors
        self.compute_samples: deque[tuple[float, str, int, float, float | None]] = deque(maxlen=history)
        self.fidelity = FidelityMeter()  # achieved over nominal compute speed per device (emulation)
        self._history = history
        self._in_transit: dict[tuple[str, int], _OnAir] = {}  # (device, its transfer id) -> transfer

    def transfers_in_progress(self) -> list[tuple[str, str, int, float]]:
        """(sender, receiver, bytes, start wall time) of every transfer reported started and not ended,
        nor through (every byte carried, its end awaits only the receiver's acknowledgement)."""
        return [(t.a, t.b, t.nbytes, t.start) for t in self._in_transit.values() if t.carried < t.nbytes]

    def on_air(self, device: str, transfer: Any) -> bool:
        """Whether ``device`` reported transfer ``transfer`` started and not yet ended."""
        return (device, transfer) in self._in_transit

    def clear(self) -> None:
        """Forget everything measured (its times refer to a clock that was restarted)."""
        self.link_samples.clear()
        self.compute_samples.clear()
        self.fidelity.clear()
        self._in_transit.clear()

    def forget_transfers_of(self, device: str) -> None:
        """A device went down: its transfers on the air will never be reported ended."""
        self._in_transit = {k: v for k, v in self._in_transit.items() if k[0] != device}

    def add_request(self, events: Iterable[dict[str, Any]]) -> None:
        """A finished request's telemetry events: its compute samples and fidelity (its transfers were
        sampled as they were reported)."""
        events = list(events)
        for e in events:
            if e["ev"] == "compute":
                sample = (e["end"], e["device"], e["flops"], e["end"] - e["start"], e.get("nominal"))
                self.compute_samples.append(sample)
        self.fidelity.add(events)

    def progress(self, dev: str, meta: dict[str, Any]) -> TransferReport | None:
        """A transfer started, reported the bytes it carried so far (tick), ended or was cut short on
        ``dev``'s radio (raises ValueError on malformed fields); None when it adds nothing to measure.

        Every piece of a transfer (start to tick, tick to tick, the last tick to its end) is a link
        sample.
        """
        a, b, src = meta["from"], meta["to"], meta["src"]
        nbytes, start, ev = meta["bytes"], meta["start"], meta["ev"]
        if a != dev or b not in self.spec.devices or src not in self.spec.devices:
            raise ValueError(f"a transfer {a!r} -> {b!r} reported by {dev}")
        if (
            type(nbytes) is not int
            or nbytes < 0
            or type(start) is not float
            or ev not in ("start", "tick", "end", "cut")
        ):
            raise ValueError("transfer progress fields")
        key = (dev, meta["id"])
        if ev == "start":
            self._in_transit[key] = _OnAir(a, b, nbytes, start, start)
            if len(self._in_transit) > self._history:
                del self._in_transit[next(iter(self._in_transit))]
            return None
        if ev == "tick":
            air, sent, at = self._in_transit.get(key), meta["sent"], meta["at"]
            if air is not None and type(sent) is int and type(at) is float and sent <= nbytes:
                return TransferReport(a, b, self._carried(air, sent, at))
            return None
        # (a start forgotten under a flood of transfers: the whole transfer is one piece)
        air = self._in_transit.pop(key, None) or _OnAir(a, b, nbytes, start, start)
        end = meta["end"]
        if type(end) is not float or not start <= end:
            return None
        carried = self._carried(air, nbytes, end) if ev == "end" else 0
        return TransferReport(a, b, carried, end - start)

    def _carried(self, air: _OnAir, upto: int, at: float) -> int:
        """``air`` has carried ``upto`` bytes by ``at``: what it carried since its last report is a link
        sample; returns its bytes."""
        nbytes, seconds = upto - air.carried, at - air.since
        if nbytes <= 0 or seconds < 0:
            return 0
        self.link_samples.append((at, air.a, air.b, nbytes, seconds))
        air.carried, air.since = upto, at
        return nbytes
