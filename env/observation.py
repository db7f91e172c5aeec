"""What a MicroSplit policy sees: a Snapshot (and its NetView) as a fixed-size observation vector.

Per device slot (cluster declaration order, padded to ``max_devices``): presence, availability, log nominal
speed, measured speed factor, source/sink one-hot, log route bandwidth from the source and to the sink; per
device pair a link flag, its windowed bandwidth and its per-second history (log-scaled); global model size
features. Bandwidths map through ``log2(1 + Mbit/s) / 6``, so 0 -> 0 and 63 Mbit/s -> 1. The env and the
policy planner (agents/ppo.py) encode with the same ``Observer``, so a policy sees the same vector in both.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
from numba import njit

from env.net_view import NetView
from env.snapshot import Snapshot, link_key
from runtime.graph import LayerGraph
from runtime.spec import ClusterSpec

OBS_HIGH = 4.0


def bw_feature(mbps: float) -> float:
    """Bandwidth feature: log2(1 + Mbit/s) / 6 (0 -> 0, 63 Mbit/s -> 1)."""
    return math.log2(1.0 + max(mbps, 0.0)) / 6.0


def route_mbps(sec_per_byte: float) -> float:
    """A route's effective Mbit/s; the device itself (0 s/B) counts as 10 Gbit/s."""
    return 8e-6 / sec_per_byte if sec_per_byte > 0 else 1e4


class _Slots:
    """Per cluster topology: where each device and link goes in the observation vector."""

    def __init__(self, spec: ClusterSpec, max_devices: int, history: int):
        ids = spec.device_ids
        if len(ids) > max_devices:
            raise ValueError(
                f"cluster {spec.name!r} has {len(ids)} devices; the policy handles {max_devices}"
            )
        self.devices = ids
        self.index = {d: i for i, d in enumerate(ids)}
        pair_base = max_devices * Observer.DEVICE_FEATURES
        per_pair = 2 + history
        self.links = [link_key(ln.a, ln.b) for ln in spec.links]
        offsets = []
        for ln in spec.links:
            i, j = sorted((self.index[ln.a], self.index[ln.b]))
            pair = i * max_devices - i * (i + 1) // 2 + (j - i - 1)  # upper-triangle index
            offsets.append(pair_base + pair * per_pair)
        self.link_flags = np.array(offsets, dtype=np.int64)
        self.link_values = self.link_flags[:, None] + 1 + np.arange(1 + history)  # mean, then history
        self.nominal = np.array([math.log2(1.0 + spec.devices[d].gflops) / 4.0 for d in ids])


class Observer:
    """Turns a Snapshot (and its NetView) into the policy's observation vector (module docstring)."""

    DEVICE_FEATURES = 8
    GLOBAL_FEATURES = 3

    def __init__(self, graph: LayerGraph, max_devices: int, history: int):
        self.max_devices = max_devices
        self.history = history
        pairs = max_devices * (max_devices - 1) // 2
        self.size = max_devices * self.DEVICE_FEATURES + pairs * (2 + history) + self.GLOBAL_FEATURES
        input_bytes = graph.extent(0) * graph.row_bytes(0)
        self._model = np.array([math.log10(max(graph.total_flops, 1)) / 10, math.log10(input_bytes) / 6])
        self._slots: dict[tuple, _Slots] = {}
        self._last: tuple[ClusterSpec | None, _Slots | None] = (None, None)

    @property
    def space(self) -> gym.spaces.Box:
        return gym.spaces.Box(0.0, OBS_HIGH, (self.size,), np.float32)

    def slots(self, spec: ClusterSpec) -> _Slots:
        if spec is self._last[0]:  # hashing a spec's devices costs more than encoding
            return self._last[1]
        key = (tuple(spec.devices.values()), spec.links)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = _Slots(spec, self.max_devices, self.history)
        self._last = (spec, slots)
        return slots

    def encode(self, snapshot: Snapshot, view: NetView) -> np.ndarray:
        slots = self.slots(snapshot.spec)
        return _encode(
            self.size, self.DEVICE_FEATURES, self.history, view.usable_mask, slots.nominal,
            snapshot.rates.speed, slots.index[snapshot.source], slots.index[snapshot.sink], view.sec_per_byte,
            snapshot.link_windows, slots.link_flags, slots.link_values, self._model, self.max_devices,
        )  # fmt: skip


_bw_feature = njit(bw_feature)  # compiled into _encode
_route_mbps = njit(route_mbps)


@njit(cache=True)
def _encode(
    size, f, h, usable, nominal, speed, source, sink, sec_per_byte, windows, link_flags, link_values, model,
    max_devices,
):  # fmt: skip
    """The observation vector (module docstring), in one pass: per device (spec order) its ``f`` features,
    per link (spec order) a flag, its mean and its last ``h`` one-second means (a shorter history padded
    with the mean), then the model's two features and the usable share; clipped to [0, OBS_HIGH]."""
    obs = np.zeros(size)
    n = nominal.size
    for i in range(n):
        row = obs[i * f : (i + 1) * f]
        row[0], row[1], row[2], row[3] = 1.0, usable[i], nominal[i], speed[i]
        row[6] = _bw_feature(_route_mbps(sec_per_byte[source, i]))
        row[7] = _bw_feature(_route_mbps(sec_per_byte[i, sink]))
    obs[source * f + 4] = 1.0
    obs[sink * f + 5] = 1.0
    width = windows.shape[1]
    for k in range(windows.shape[0]):
        obs[link_flags[k]] = 1.0
        obs[link_values[k, 0]] = _bw_feature(windows[k, 0])
        for j in range(1, h + 1):
            column = width - h + j - 1  # history right-aligned; before its start, the mean
            obs[link_values[k, j]] = _bw_feature(windows[k, column] if column >= 1 else windows[k, 0])
    obs[size - 3], obs[size - 2] = model[0], model[1]
    obs[size - 1] = usable.sum() / max_devices
    return np.clip(obs, 0.0, OBS_HIGH).astype(np.float32)
