"""Compute profiles: the default cost model's per-unit seconds, measured once per (model, host) and cached.

Predicting compute from FLOPs alone is optimistic, most for small bands (Python and memory overheads keep
small layers far below a device's peak FLOP/s), so every planner, the env, training, ``evaluate.py`` and
``deploy.py`` plan on a profile by default (``--cost flops``: the FLOPs-only model). A profile is the
per-unit seconds of one model measured through a real worker (runtime/profiler.py) on a reference device
of ``reference_gflops``; the cost model scales it by ``reference_gflops / gflops`` for every other device.

Where profiles live: ``$DISNET_PROFILES`` if set, else ``$XDG_CACHE_HOME/disnet/profiles`` (by default
``~/.cache/disnet/profiles``), one file ``MODEL@HOST.json`` per model and host (``HOST``: this machine's
name for emulated clusters, a real worker's address host for a device of a real cluster). ``--profile
FILE`` overrides the lookup. A missing profile of this host is measured (a few seconds for VGG-16) and
written there atomically; a file is validated against the model before use (format, model, input shape,
unit names and count, finite non-negative seconds, positive reference speed) and, where its seconds pace
emulated workers, against this host's name. Anything wrong is a ``ProfileError`` naming the file.

Emulated live runs pace their devices by the same profile (``pacing``): each band takes the seconds the
profile gives it (``--pacing cpu``: the CPU time its real computation took, scaled to the device).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from env.cost_model import Profile
from runtime.emulation import conv_cpu_seconds
from runtime.graph import LayerGraph
from runtime.profiler import FORMAT, measure_local, profile_path, this_host, write_profile

COST_MODELS = ("profile", "flops")


class ProfileError(ValueError):
    """A profile file is missing, malformed, or does not describe this model (or host)."""


def profile_from_record(record: Any, graph: LayerGraph, origin: str = "<profile>") -> Profile:
    """The validated ``Profile`` of a profile record (a JSON object as ``runtime.profiler`` writes it)."""

    def fail(what: str) -> ProfileError:
        return ProfileError(f"{origin}: {what}")

    if not isinstance(record, dict):
        raise fail("not a JSON object")
    if record.get("format") != FORMAT:
        raise fail(f"format must be {FORMAT!r}, got {record.get('format')!r} (re-measure the profile)")
    if record.get("model") != graph.name:
        raise fail(f"profile of model {record.get('model')!r}, expected {graph.name!r}")
    if list(record.get("input_shape") or ()) != list(graph.input_shape):
        raise fail(
            f"input_shape {record.get('input_shape')} does not match the model's {list(graph.input_shape)}"
        )
    names = [u.name for u in graph.units]
    if record.get("units") != names:
        raise fail(
            f"its units do not match {graph.name}'s {len(names)} units (the model changed: re-measure it)"
        )
    ref = record.get("reference_gflops")
    if type(ref) not in (int, float) or not (math.isfinite(ref) and ref > 0):
        raise fail(f"reference_gflops must be a positive number, got {ref!r}")
    seconds = record.get("unit_seconds")
    if not isinstance(seconds, list) or len(seconds) != len(names):
        raise fail(f"unit_seconds must list {len(names)} numbers, one per unit")
    if not all(type(s) in (int, float) and math.isfinite(s) and s >= 0 for s in seconds) or not any(seconds):
        raise fail("unit_seconds must be finite seconds >= 0, not all zero")
    if not isinstance(record.get("host"), str) or not record["host"]:
        raise fail("host must name the machine the profile was measured on")
    probe = record.get("probe_cpu_s")
    if probe is not None and (type(probe) not in (int, float) or not (math.isfinite(probe) and probe > 0)):
        raise fail(f"probe_cpu_s must be a positive number of seconds, got {probe!r}")
    return Profile(
        graph.name,
        float(ref),
        tuple(float(s) for s in seconds),
        record["host"],
        None if probe is None else float(probe),
    )


def read_profile(path: str | Path, graph: LayerGraph) -> Profile:
    """The validated profile in ``path`` (ProfileError if it is missing, unreadable or for another model)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{path}: not a readable JSON profile ({exc})") from None
    return profile_from_record(record, graph, str(path))


def require_host(profile: Profile, origin: str, host: str | None = None) -> Profile:
    """``profile`` if it was measured on ``host`` (default: this machine), else a ProfileError: emulated
    workers pace by this host's CPU, so only this host's profile predicts them."""
    host = host or this_host()
    if profile.host != host:
        raise ProfileError(
            f"{origin}: measured on host {profile.host!r}, but this is {host!r}; emulated devices pace by "
            f"this host's CPU, so measure here (python -m runtime.profiler --model {profile.model})"
        )
    return profile


def host_profile(
    graph: LayerGraph,
    path: str | Path | None = None,
    *,
    same_host: bool = False,
    say: Callable[[str], None] = print,
    measure: Callable[[str], dict] = measure_local,
) -> Profile:
    """This host's profile of ``graph``'s model: from ``path`` if given, else from the cache, measured by
    ``measure(model)`` (through a local worker) and cached when missing. ``same_host``: the profile paces
    emulated workers here, so a file measured elsewhere is an error."""
    if path is not None:
        profile = read_profile(path, graph)
        return require_host(profile, str(path)) if same_host else profile
    cached = profile_path(graph.name)
    if not cached.exists():
        say(f"profiling {graph.name} on this host through a worker (once; cached in {cached}) ...")
        write_profile(measure(graph.name), cached)
    return require_host(read_profile(cached, graph), str(cached))


def resolve_profile(
    graph: LayerGraph,
    cost: str = "profile",
    profile: str | Path | None = None,
    *,
    same_host: bool = False,
    say: Callable[[str], None] = print,
) -> Profile | None:
    """The profile every tool plans on (``CostModel(graph, spec, profile)``): for ``cost="profile"``
    (the default) the file ``profile`` or else this host's cached one (``host_profile``); None for
    ``cost="flops"``, the FLOPs-only model."""
    if cost not in COST_MODELS:
        raise ProfileError(f"cost model must be one of {', '.join(COST_MODELS)}, not {cost!r}")
    if cost == "flops":
        if profile is not None:
            raise ProfileError("a profile was given with the FLOPs-only cost model (--cost flops)")
        return None
    return host_profile(graph, profile, same_host=same_host, say=say)


PACINGS = ("profile", "cpu")


def pacing(profile: Profile, mode: str = "profile") -> dict:
    """``LocalCluster`` options that pace emulated devices as ``profile`` predicts.

    ``profile`` (the default): each band takes the profile's seconds for it (runtime/emulation.py says why).
    ``cpu``: each band takes the CPU time its real computation took, scaled by the profile's reference
    speed, itself scaled by how much slower the probe convolution runs now than when the profile was
    measured (medians of its CPU time), since a CPU second of this host does less work when other
    processes load its cores and caches. Under ``cpu`` every live figure also carries the host's
    co-location cost.
    """
    if mode not in PACINGS:
        raise ProfileError(f"pacing must be one of {', '.join(PACINGS)}, not {mode!r}")
    if mode == "profile":
        return {"host_gflops": profile.reference_gflops, "unit_seconds": profile.unit_seconds}
    if profile.probe_cpu_s is None:
        return {"host_gflops": profile.reference_gflops}
    now = statistics.median(conv_cpu_seconds(1.0))
    return {"host_gflops": profile.reference_gflops * profile.probe_cpu_s / now}
