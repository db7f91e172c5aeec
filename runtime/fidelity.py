"""Fidelity of an emulated run: did every device compute as fast as the cluster it emulates says?

An emulated device paces each computation to a target wall time (the profile's seconds for the band,
or its thread's CPU time, times slowdown / speed: runtime/emulation.py). When the host cannot give the
device's thread the CPU it needs (more devices computing at once than free cores, other processes), the
real computation alone outlasts the target and the device runs below its nominal speed; wide plans
suffer most, so a live comparison of planners would be skewed. A device's fidelity is its achieved
speed over its nominal one: the targets of its computations over the wall time they took (1 when every
computation met its target). Below ``FIDELITY_WARN`` the run is not faithful: raise the time dilation
(``--dilation``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

FIDELITY_WARN = 0.95


class FidelityMeter:
    """Per device, the target and wall seconds of every computation it reported."""

    def __init__(self) -> None:
        self._target: dict[str, float] = {}
        self._wall: dict[str, float] = {}

    def add(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Count a request's telemetry events (its "compute" events; others are ignored)."""
        for e in events:
            if e["ev"] == "compute" and e["end"] > e["start"]:
                d = e["device"]
                self._target[d] = self._target.get(d, 0.0) + e["target"]
                self._wall[d] = self._wall.get(d, 0.0) + e["end"] - e["start"]

    def clear(self) -> None:
        self._target.clear()
        self._wall.clear()

    def absorb(self, other: FidelityMeter) -> None:
        """Count ``other``'s computations too (a run whose clock restarts clears the controller's meter)."""
        for d, seconds in other._target.items():
            self._target[d] = self._target.get(d, 0.0) + seconds
            self._wall[d] = self._wall.get(d, 0.0) + other._wall[d]

    def per_device(self) -> dict[str, float]:
        """Achieved over nominal compute speed per device that computed (at most 1)."""
        return {d: min(1.0, self._target[d] / self._wall[d]) for d in sorted(self._wall)}

    def minimum(self) -> float | None:
        """The least faithful device's fidelity (None if nothing was computed)."""
        return min(self.per_device().values(), default=None)


def fidelity_fields(fidelity: Mapping[str, float], dilation: float, pacing: str) -> dict[str, Any]:
    """A live run's emulation as its JSON records it: what compute followed (``pacing``: profile or cpu),
    the dilation, each device's fidelity, the least."""
    return {
        "pacing": pacing,
        "dilation": dilation,
        "fidelity": dict(fidelity),
        "fidelity_min": min(fidelity.values(), default=None),
    }


def print_fidelity(
    fidelity: Mapping[str, float],
    dilation: float,
    pacing: str,
    console: Console,
    title: str = "",
    remedy: str | None = None,
) -> None:
    """Per-device fidelity as a table, and a warning naming the devices below ``FIDELITY_WARN`` with
    ``remedy`` (default: a larger ``--dilation``, where the script has one)."""
    table = Table(
        title=f"emulation fidelity{title} (achieved / nominal compute speed, dilation {dilation:g}, "
        f"paced by {pacing})"
    )
    for d in fidelity:
        table.add_column(d, justify="right")
    table.add_row(*(f"{f:.3f}" for f in fidelity.values()))
    console.print(table)
    slow = [d for d, f in fidelity.items() if f < FIDELITY_WARN]
    if slow:
        console.print(
            f"[yellow]warning:[/] device(s) {', '.join(slow)} computed below {FIDELITY_WARN:.0%} of their "
            f"nominal speed (min {min(fidelity.values()):.3f}): the host is oversubscribed; "
            + (remedy or f"rerun with a larger --dilation than {dilation:g}")
        )
