"""What one request did, device by device and link by link: its ``Timeline``, from its workers' events.

Workers report telemetry events stamped on their own clocks; ``on_controller_clock`` moves them onto
the controller's, ``checked_event`` checks each one, ``undilated`` puts it on the emulated cluster's
clock, and ``build_timeline`` sums them into per-device times and energy and per-link traffic
(design.md, rule 6).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from runtime.clock import ClockOffset
from runtime.deployment import Deployment
from runtime.emulation import energy_j
from runtime.spec import ClusterSpec


@dataclass(frozen=True)
class DeviceTimes:
    """Seconds one device spent on one request, and what they cost."""

    compute_s: float
    send_s: float
    recv_s: float
    wait_s: float  # idle inside the request's makespan
    energy_j: float


@dataclass(frozen=True)
class LinkTimes:
    """Traffic over one direct hop (sender, receiver) during one request."""

    bytes: int
    seconds: float  # radio time
    energy_j: float  # the sender's transmit and the receiver's receive energy for that time

    @property
    def mbps(self) -> float:
        return self.bytes * 8 / 1e6 / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class Timeline:
    """Per device and per link figures of one request, and the raw worker events behind them.

    Event times are wall-clock (``time.time()``; under a time dilation D, ``epoch + (wall - epoch) / D``);
    every event dict names its ``device``.
    ``complete`` is False when some worker's telemetry did not arrive in time.
    """

    devices: dict[str, DeviceTimes]
    links: dict[tuple[str, str], LinkTimes]
    events: tuple[dict[str, Any], ...]
    complete: bool = True

    def of(self, kind: str, device: str | None = None) -> list[dict[str, Any]]:
        """Events of one kind ("input", "compute", "tx", "done"), optionally of one device."""
        return [e for e in self.events if e["ev"] == kind and (device is None or e["device"] == device)]


_STAMPS = frozenset(("t", "ready", "start", "end", "queued", "arrive", "at"))  # worker clock times


def on_controller_clock(meta: dict[str, Any], clock: ClockOffset) -> dict[str, Any]:
    """``meta`` with every time its worker stamped (on its own clock) moved onto the controller's."""
    return {k: clock.to_controller(v) if k in _STAMPS and type(v) is float else v for k, v in meta.items()}


_EVENT_FIELDS = {
    "input": ("t",),
    "done": ("t",),
    "compute": ("stage", "ready", "start", "end", "cpu", "target", "flops"),
    "tx": ("stage", "from", "to", "bytes", "queued", "start", "end", "arrive"),
}


_OPTIONAL_FIELDS = {"compute": ("nominal",)}  # emulated devices only: seconds at nominal speed

_EVENT_TIMES = ("t", "ready", "start", "end", "queued", "arrive")  # wall-clock instants
_EVENT_SPANS = ("target", "nominal")  # wall-clock durations


def undilated(e: dict[str, Any], epoch: float, dilation: float) -> dict[str, Any]:
    """An event on the emulated clock: instants ``epoch + (t - epoch) / D``, durations / D."""
    if dilation == 1.0:
        return e
    out = dict(e)
    for key in _EVENT_TIMES:
        if key in out:
            out[key] = epoch + (out[key] - epoch) / dilation
    for key in _EVENT_SPANS:
        if key in out:
            out[key] = out[key] / dilation
    return out


def checked_event(e: Any, device: str, parts: Mapping[str, Deployment]) -> dict[str, Any]:
    """A worker's telemetry event, checked (ValueError otherwise) and tagged with its device."""
    if not isinstance(e, dict) or e.get("ev") not in _EVENT_FIELDS:
        raise ValueError(f"unknown telemetry event {str(e)[:80]}")
    for key in _EVENT_FIELDS[e["ev"]]:
        value = e.get(key)
        if key in ("from", "to"):
            if value not in parts:
                raise ValueError(f"telemetry names device {value!r} outside the plan")
        elif type(value) not in (int, float) or value != value:
            raise ValueError(f"telemetry field {key} is {value!r}")
    for key in _OPTIONAL_FIELDS.get(e["ev"], ()):
        value = e.get(key)
        if value is not None and (type(value) not in (int, float) or not 0 <= value < math.inf):
            raise ValueError(f"telemetry field {key} is {value!r}")
    return e | {"device": device}


def build_timeline(
    spec: ClusterSpec, devices: Iterable[str], events: list[dict[str, Any]], latency: float, complete: bool
) -> Timeline:
    """Per-device and per-link figures of one request from its workers' events (design.md, rule 6)."""
    compute = dict.fromkeys(devices, 0.0)
    sent, got = dict(compute), dict(compute)
    links: dict[tuple[str, str], list] = {}
    for e in events:
        if e["ev"] == "compute":
            compute[e["device"]] += e["end"] - e["start"]
        elif e["ev"] == "tx":
            radio = e["end"] - e["start"]
            sent[e["from"]] += radio
            got[e["to"]] += radio
            acc = links.setdefault((e["from"], e["to"]), [0, 0.0])
            acc[0] += e["bytes"]
            acc[1] += radio
    devices = {}
    for d in compute:
        wait = max(0.0, latency - compute[d] - sent[d] - got[d])
        joules = energy_j(spec.devices[d].power, compute[d], sent[d], got[d], wait)
        devices[d] = DeviceTimes(compute[d], sent[d], got[d], wait, joules)
    return Timeline(
        devices,
        {
            (a, b): LinkTimes(n, s, s * (spec.devices[a].power.transmit_w + spec.devices[b].power.receive_w))
            for (a, b), (n, s) in links.items()
        },
        tuple(sorted(events, key=lambda e: e.get("start", e.get("t", 0.0)))),
        complete,
    )
