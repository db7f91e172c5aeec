"""The world a script's links follow, from its options: constant, sampled or replayed traces, a
scenario's dynamics, and device failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from env.dynamics import DynamicsConfig
from env.network import NetworkState
from runtime.spec import ClusterSpec

# --traces synthetic: every link wanders around its spec bandwidth
SYNTHETIC_LINKS = {"kind": "random_walk", "mean": 1.0, "sigma": 0.25, "lo": 0.2, "hi": 1.5, "duration": 600.0}
FAILURE_DOWNTIME_S = 20.0  # --failures: mean time a failed device stays down


def trace_dynamics(
    traces: str | None, mode: str = "sample", trace_cap_mbps: float | None = None
) -> dict[str, Any]:
    """The ``DynamicsConfig`` mapping of ``--traces``: nothing (links at their spec bandwidth),
    ``synthetic``, a file or folder sampled per link and rescaled to its spec bandwidth, or (``replay``)
    one recorded file on every link from t=0 as recorded, its rate capped at ``trace_cap_mbps``."""
    if traces is None:
        return {}
    if traces == "synthetic":
        return {"links": {"default": SYNTHETIC_LINKS}}
    if mode == "replay":
        recorded = {"kind": "file", "path": traces, "random_offset": False}
        return {"links": {"default": recorded}, "scale_to_spec": False, "trace_cap_mbps": trace_cap_mbps}
    return {"links": {"default": traces}}


def build_world(
    spec: ClusterSpec,
    dynamics: dict[str, Any],
    *,
    seed: int,
    failures_per_min: float = 0.0,
    origin: str = "--traces",
    base_dir: Path | None = None,
) -> NetworkState:
    """The world of ``dynamics`` (constant if empty; relative trace paths from ``base_dir``, default the
    working directory) with devices other than the source and sink failing ``failures_per_min`` times a
    minute each, drawn from ``seed``."""
    if not dynamics and not failures_per_min:
        return NetworkState.static(spec)
    data = dynamics | {"seed": seed}
    if failures_per_min:
        data["failures"] = {"rate_per_min": failures_per_min, "mean_downtime_s": FAILURE_DOWNTIME_S}
    config = DynamicsConfig.parse(data, origin=origin, base_dir=base_dir)
    return NetworkState.sample(spec, config, np.random.default_rng(seed))
