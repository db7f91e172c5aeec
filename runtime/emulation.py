"""Emulating slow devices and shaped radio links on one fast host (off for real deployments).

Real outputs are always computed; only timing is shaped, with the semantics env/cost_model.py predicts:

- compute pacing: a worker computes a band for real and sleeps until ``work_s * slowdown / speed(t)``
  wall seconds have passed since it started, where ``slowdown = host_gflops / device_gflops``, ``speed``
  is the device's speed-factor schedule and ``work_s`` the band's work in seconds of the reference host:
  with a profile (``Emulation.unit_seconds``, the default of every tool) the profile's seconds for the
  band (its per-unit seconds times the fraction of each unit's rows the band computes, halo included),
  else the thread CPU time the real computation took;
- one radio per device: a hop of B bytes to neighbour n starting at t holds the sender's radio for
  ``schedule.transfer_time(B, t - epoch)`` seconds (exact integration of the link's trace) and arrives
  ``latency_s`` after the radio is free again;
- energy: compute, transmit and receive seconds times the device's powers, plus idle power while a
  participating device waits inside a request's makespan (``energy_j``).

Time dilation: a host whose cores cannot run every emulated device at its nominal speed at once would
slow wide plans more than narrow ones. With a dilation factor ``D`` (``Emulation.dilation``) the cluster
runs D x slower than the one it emulates: devices compute D x slower, links carry 1/D of their rate,
latencies and every schedule's time axis stretch by D; the controller divides every time it reports by D
(and multiplies measured rates by D), so results are in the emulated cluster's time. ``auto_dilation``
picks D from the host's cores and speed against the cluster's total device speed, with headroom.

Why pace by the profile. Ten emulated devices share this host's cores and caches, so the CPU time of a
band grows with how many others compute beside it (docs/benchmarks.md, tenth round: 7-12% for a whole
stage, 10-50% for a band of a wide stage, 2-3.7x for a band of a few rows); a real device has its core and cache to itself. Pacing by CPU time put that co-location cost
into every live figure, most into wide plans. Pacing by the profile gives each device exactly the compute
speed the cost model assumes, and the real computation only has to fit inside its target: the fidelity
meter (runtime/fidelity.py) reports when it does not. What the profile itself gets wrong about real
devices is measured against real workers (``python -m runtime.profiler --cluster``, ``evaluate.py
calibrate``), not against an emulation of them.

Schedules travel to the workers as ``runtime.schedule.Trace`` arrays. The transport has no float64, so
times and values are shipped bit for bit as int64 views: both ends integrate the identical series.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from runtime.graph import LayerGraph, Rows
from runtime.schedule import Trace, constant
from runtime.spec import ClusterSpec, PowerProfile

T = TypeVar("T")
ScheduleLike = float | Trace  # a constant value or a piecewise-constant series (Mbit/s or speed factor)


def as_schedule(value: ScheduleLike, what: str) -> Trace:
    """A Trace from a number (constant) or from anything with ``times``, ``mbps`` and ``duration``."""
    if isinstance(value, Trace):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{what}: constant value must be positive, got {value}")
        return constant(float(value))
    try:
        return Trace(value.times, value.mbps, value.duration, getattr(value, "name", what))
    except AttributeError:
        raise TypeError(f"{what}: expected a number or a Trace, got {type(value).__name__}") from None


def schedule_to_wire(trace: Trace) -> tuple[float, list[torch.Tensor]]:
    """(duration, [times, values]) with the float64 arrays viewed bit for bit as int64 tensors."""
    return trace.duration, [
        torch.from_numpy(np.array(a, dtype=np.float64).view(np.int64)) for a in (trace.times, trace.mbps)
    ]


def schedule_from_wire(duration: float, times: torch.Tensor, values: torch.Tensor, name: str) -> Trace:
    """Inverse of ``schedule_to_wire``; raises ValueError (TraceError) on a malformed series."""
    if times.dtype != torch.int64 or values.dtype != torch.int64 or times.dim() != 1:
        raise ValueError(f"schedule {name}: expected two 1-d int64 tensors")
    return Trace(times.numpy().view(np.float64), values.numpy().view(np.float64), float(duration), name)


@dataclass(frozen=True)
class LinkShape:
    """One direct link as the sender sees it."""

    schedule: Trace
    latency_s: float


@dataclass(frozen=True)
class DeviceEmulation:
    """Everything one worker needs to pace its compute and shape its radio.

    ``epoch`` is the wall-clock time (``time.time()``) that is t=0 of every schedule, chosen by the
    controller, so all workers and the caller's traces share one clock.
    """

    epoch: float
    slowdown: float
    speed: Trace
    links: Mapping[str, LinkShape]
    unit_seconds: tuple[float, ...] | None = None  # the profile pacing follows (None: pace by CPU time)

    def band_work(self, graph: LayerGraph, start: int, end: int, out: Rows) -> float | None:
        """The profile's reference seconds for output rows ``out`` of stage ``[start, end)`` (None when
        pacing by CPU time)."""
        if self.unit_seconds is None:
            return None
        try:
            return graph.band_seconds(self.unit_seconds, start, end, out)
        except ValueError as exc:
            raise ValueError(
                f"pacing profile: {exc} (the cluster was configured for another model)"
            ) from None

    def pacing_factor(self, wall: float) -> float:
        """Wall seconds per reference second of work starting at ``wall``."""
        factor = float(self.speed.bandwidth_at(wall - self.epoch))
        return math.inf if factor <= 0 else self.slowdown / factor

    def radio_time(self, neighbour: str, nbytes: int, wall: float) -> float:
        """Seconds a hop of ``nbytes`` to ``neighbour`` starting at ``wall`` holds the radio."""
        return self.links[neighbour].schedule.transfer_time(nbytes, wall - self.epoch)

    def radio_bytes(self, neighbour: str, start: float, wall: float) -> float:
        """Bytes a hop to ``neighbour`` that started at ``start`` has carried by ``wall``."""
        return self.links[neighbour].schedule.bytes_between(start - self.epoch, wall - self.epoch)

    def latency(self, neighbour: str) -> float:
        return self.links[neighbour].latency_s


@dataclass(frozen=True)
class Paced:
    """What one paced computation measured."""

    cpu_s: float  # thread CPU time of the real computation
    target_s: float  # the work (profile seconds, else cpu_s) times the pacing factor: emulated compute time
    start: float  # wall clock
    end: float  # wall clock, >= start + target_s
    nominal_s: float | None = None  # the work at the device's nominal speed (speed factor 1); None unpaced


def paced(
    fn: Callable[[], T],
    emulation: DeviceEmulation | None,
    abort: Callable[[], bool] | None = None,
    work_s: float | None = None,
) -> tuple[T, Paced]:
    """Run ``fn`` and, when emulating, sleep until its emulated compute time has passed: ``work_s``
    reference seconds (the profile's, ``DeviceEmulation.band_work``), or its CPU time when None.

    ``abort()`` cuts the emulated sleep short (the work was cancelled: the device is free again at
    once, as a real one would be after dropping the task); the caller checks why and drops the output.
    """
    start, cpu0 = time.time(), time.thread_time()
    out = fn()
    cpu = time.thread_time() - cpu0
    if emulation is None:
        end = time.time()
        return out, Paced(cpu, end - start, start, end)
    work = cpu if work_s is None else work_s
    target = work * emulation.pacing_factor(start)
    if not math.isfinite(target):
        raise RuntimeError("device speed factor is 0: the emulated device never finishes")
    sleep_until(start + target, abort)
    return out, Paced(cpu, target, start, time.time(), work * emulation.slowdown)


ABORT_POLL_S = 0.02  # how often an abortable sleep checks its condition


def sleep_until(wall: float, abort: Callable[[], bool] | None = None) -> bool:
    """Sleep until ``time.time() >= wall`` (no-op if it has passed); False if ``abort()`` cut it short.

    A worker's radio and compute threads sleep out emulated transfer and compute times; without ``abort``
    a cancelled request would keep the device's radio busy for the rest of a transfer it no longer needs
    (seconds on a collapsed link), delaying the request that replaced it.
    """
    while (left := wall - time.time()) > 0:
        if abort is not None and abort():
            return False
        time.sleep(left if abort is None else min(left, ABORT_POLL_S))
    return True


def energy_j(power: PowerProfile, compute_s: float, send_s: float, recv_s: float, idle_s: float) -> float:
    """Joules of one device from the seconds it spent in each state (design.md, rule 6)."""
    return (
        compute_s * power.compute_w
        + send_s * power.transmit_w
        + recv_s * power.receive_w
        + idle_s * power.idle_w
    )


class EnergyMeter:
    """A device's cumulative seconds per state and the joules they cost (idle is not metered here)."""

    def __init__(self, power: PowerProfile | None = None):
        self.power = power or PowerProfile(0.0, 0.0, 0.0, 0.0)
        self.seconds = {"compute": 0.0, "send": 0.0, "recv": 0.0}

    def add(self, state: str, seconds: float) -> None:
        self.seconds[state] += seconds

    @property
    def joules(self) -> float:
        s = self.seconds
        return energy_j(self.power, s["compute"], s["send"], s["recv"], 0.0)


CONV_FLOPS = 2 * 64 * 64 * 9 * 56 * 56  # the probe convolution of conv_cpu_seconds


def conv_cpu_seconds(seconds: float = 0.3) -> list[float]:
    """Thread CPU seconds of each run of a fixed 3x3 convolution (``CONV_FLOPS``, one thread), run
    again and again for ``seconds`` of wall time after a warm-up."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 56, 56, generator=gen)
    w = torch.randn(64, 64, 3, 3, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs: list[float] = []
    try:
        with torch.no_grad():
            F.conv2d(x, w, padding=1)  # warm-up
            deadline = time.time() + seconds
            while time.time() < deadline or not runs:
                cpu0 = time.thread_time()
                F.conv2d(x, w, padding=1)
                runs.append(time.thread_time() - cpu0)
    finally:
        torch.set_num_threads(threads)
    return runs


def measure_host_gflops(seconds: float = 0.3) -> float:
    """GFLOP/s of one thread of this host on a 3x3 convolution, measured in thread CPU time.

    Pacing divides by this figure, so it is measured the way pacing measures work: CPU time, one
    thread, best of several runs (a run slowed down by other processes must not make devices look
    faster than they are).
    """
    return CONV_FLOPS / max(min(conv_cpu_seconds(seconds)), 1e-9) / 1e9


@dataclass(frozen=True)
class Emulation:
    """Emulation settings of a whole cluster, from which each worker's ``DeviceEmulation`` is cut.

    ``link_schedules`` maps a device pair (either order) to its bandwidth (Mbit/s, number or Trace),
    default the spec's constant bandwidth; ``speed_schedules`` maps a device to its speed factor
    (1.0 = the spec's gflops), default 1. ``unit_seconds``: a profile's per-unit seconds on a reference
    host of ``host_gflops``, which devices are paced by (module docstring); None paces by CPU time, with
    ``host_gflops`` this host's speed.
    """

    host_gflops: float
    link_schedules: Mapping[tuple[str, str], ScheduleLike] | None = None
    speed_schedules: Mapping[str, ScheduleLike] | None = None
    dilation: float = 1.0
    unit_seconds: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.dilation) and self.dilation >= 1.0):
            raise ValueError(f"time dilation must be a finite number >= 1, got {self.dilation}")
        if self.unit_seconds is not None:
            check_unit_seconds(self.unit_seconds)

    def for_device(self, spec: ClusterSpec, device: str, epoch: float) -> DeviceEmulation:
        links = {
            frozenset(pair): as_schedule(v, f"link {pair}") for pair, v in (self.link_schedules or {}).items()
        }
        speeds = self.speed_schedules or {}
        unknown = [d for d in speeds if d not in spec.devices] + [
            "-".join(sorted(p)) for p in links if len(p) != 2 or spec.link(*sorted(p)) is None
        ]
        if unknown:
            raise ValueError(f"emulation names unknown devices or links: {', '.join(unknown)}")
        d = self.dilation
        shapes = {}
        for n in spec.neighbours(device):
            link = spec.link(device, n)
            schedule = dilate(links.get(frozenset((device, n)), constant(link.mbps)), d, 1.0 / d)
            shapes[n] = LinkShape(schedule, link.latency_s * d)
        speed = dilate(as_schedule(speeds.get(device, 1.0), f"speed of {device}"), d, 1.0)
        slowdown = d * self.host_gflops / spec.devices[device].gflops
        return DeviceEmulation(epoch, slowdown, speed, shapes, self.unit_seconds)


def check_unit_seconds(unit_seconds: tuple[float, ...]) -> tuple[float, ...]:
    """``unit_seconds`` if every one is a finite number of seconds >= 0 (ValueError otherwise)."""
    if not all(math.isfinite(s) and s >= 0 for s in unit_seconds):
        raise ValueError("pacing profile: unit seconds must be finite and >= 0")
    return unit_seconds


def dilate(trace: Trace, dilation: float, value_scale: float) -> Trace:
    """``trace`` on a time axis stretched by ``dilation``, its values times ``value_scale``."""
    if dilation == 1.0 and value_scale == 1.0:
        return trace
    return Trace(
        np.asarray(trace.times) * dilation,
        np.asarray(trace.mbps) * value_scale,
        trace.duration * dilation,
        trace.name,
    )


# Share of the host's free cores the emulated devices may use at once at most: the rest is for the
# workers' Python overheads (messages, radio threads) and the controller.
CORE_HEADROOM = 0.5


def host_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def measure_cpu_share(seconds: float = 0.3) -> float:
    """The share of wall time a busy thread gets now (1: a core to itself; less while other processes
    compete for the cores)."""
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    x = 1.0
    while time.perf_counter() - wall0 < seconds:
        for _ in range(10_000):
            x = x * 1.0000001 % 7.0
    return min(1.0, (time.thread_time() - cpu0) / (time.perf_counter() - wall0))


def auto_dilation(
    spec: ClusterSpec, host_gflops: float, cores: int | None = None, cpu_share: float | None = None
) -> float:
    """The smallest D >= 1 (in tenths) at which every device computing at once needs at most
    ``CORE_HEADROOM`` of the host's free cores: a device of g GFLOP/s keeps ``g / (D x host_gflops)`` of a
    core busy while it computes, and the free cores are the cores times the share of a core a busy thread
    gets now (``measure_cpu_share``: other processes' load counts)."""
    cores = cores or host_cores()
    share = measure_cpu_share() if cpu_share is None else cpu_share
    demand = sum(d.gflops for d in spec.devices.values()) / host_gflops  # cores needed at D = 1
    return max(1.0, math.ceil(10 * demand / (CORE_HEADROOM * cores * share)) / 10)


def emulation_to_wire(emu: DeviceEmulation) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """CONFIG meta and tensors describing one device's emulation."""
    tensors: list[torch.Tensor] = []

    def put(trace: Trace) -> dict[str, Any]:
        duration, arrays = schedule_to_wire(trace)
        tensors.extend(arrays)
        return {"duration": duration, "index": len(tensors) - 2}

    meta = {
        "epoch": emu.epoch,
        "slowdown": emu.slowdown,
        "speed": put(emu.speed),
        "links": {n: {"latency": s.latency_s, "schedule": put(s.schedule)} for n, s in emu.links.items()},
        "unit_seconds": None,
    }
    if emu.unit_seconds is not None:
        meta["unit_seconds"] = len(tensors)
        tensors.append(torch.from_numpy(np.array(emu.unit_seconds, dtype=np.float64).view(np.int64)))
    return meta, tensors


def emulation_from_wire(meta: Any, tensors: list[torch.Tensor]) -> DeviceEmulation:
    """Inverse of ``emulation_to_wire``; raises ValueError/KeyError/TypeError on malformed input."""

    def get(entry: Any, name: str) -> Trace:
        i = entry["index"]
        if type(i) is not int or not 0 <= i < len(tensors) - 1:
            raise ValueError(f"schedule {name}: tensor index {i!r} out of range")
        return schedule_from_wire(entry["duration"], tensors[i], tensors[i + 1], name)

    epoch, slowdown = float(meta["epoch"]), float(meta["slowdown"])
    if not (math.isfinite(epoch) and math.isfinite(slowdown) and slowdown > 0):
        raise ValueError("emulation epoch and slowdown must be finite, slowdown > 0")
    links = {}
    for n, entry in meta["links"].items():
        latency = float(entry["latency"])
        if not (math.isfinite(latency) and latency >= 0):
            raise ValueError(f"link to {n}: latency must be >= 0")
        links[str(n)] = LinkShape(get(entry["schedule"], f"link to {n}"), latency)
    unit_seconds = None
    if (i := meta["unit_seconds"]) is not None:
        if type(i) is not int or not 0 <= i < len(tensors) or tensors[i].dtype != torch.int64:
            raise ValueError(f"pacing profile: tensor index {i!r} out of range or not int64")
        unit_seconds = check_unit_seconds(tuple(tensors[i].numpy().view(np.float64).tolist()))
    return DeviceEmulation(epoch, slowdown, get(meta["speed"], "speed"), links, unit_seconds)
