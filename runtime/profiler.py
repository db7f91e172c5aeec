"""Per-unit compute time of a model, measured through a real worker.

The cost model can predict compute time from FLOPs, but small layers run far below a device's peak
FLOP/s (Python and memory overheads), so it also accepts a profile: seconds per unit on a reference
device of ``reference_gflops``, scaled by ``reference_gflops / gflops`` for other devices. That is
exactly how emulated workers pace their compute (CPU time times ``host_gflops / gflops``), so a profile
of the host with ``reference_gflops = host_gflops`` makes predicted and emulated compute agree.

The profiler deploys a plan that cuts the model at every allowed cut point with every stage on the
profiled device, runs a few requests unpaced, and takes the median thread CPU time of each stage.
A stage spans one group of units (no plan can cut inside a group); its time is split over the group's
units in proportion to their FLOPs (evenly if the group has none).

Profiles are cached one file per model and host (``MODEL@HOST.json``) in ``profile_dir()``:
``$DISNET_PROFILES``, else ``$XDG_CACHE_HOME/disnet/profiles`` (``~/.cache/disnet/profiles``). The cost
model's side (validation, choosing the profile) is env/profiles.py.

``python -m runtime.profiler --model tiny`` profiles this host through a local worker into the cache
(``--out FILE`` writes elsewhere); ``--cluster CONFIG`` asks every device's real worker at the address in
the config to profile itself (``--device ID``: one of them), with the device's spec GFLOP/s as the
reference, and caches each under the host of its address. The JSON is small::

    {"format": "disnet-profile/1", "model": "tiny", "device": "local", "host": "box",
     "input_shape": [3, 32, 32], "reference_gflops": 84.5, "units": [...], "unit_seconds": [...],
     "probe_cpu_s": 0.0022}
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
from pathlib import Path

import torch

from runtime import models
from runtime.cluster import LocalCluster
from runtime.controller import Controller
from runtime.emulation import conv_cpu_seconds, measure_host_gflops
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.spec import ClusterSpec, Device, PowerProfile, SpecError, load_cluster

FORMAT = "disnet-profile/1"


def this_host() -> str:
    return socket.gethostname()


def profile_dir() -> Path:
    """The folder of cached profiles (module docstring)."""
    if os.environ.get("DISNET_PROFILES"):
        return Path(os.environ["DISNET_PROFILES"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "disnet" / "profiles"


def profile_path(model: str, host: str | None = None) -> Path:
    """Where the profile of ``model`` on ``host`` (default: this machine) is cached."""

    def safe(name: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

    return profile_dir() / f"{safe(model)}@{safe(host or this_host())}.json"


def write_profile(record: dict, path: Path) -> None:
    """Write atomically, so that processes starting together never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def every_cut_plan(graph: LayerGraph, device: str) -> Plan:
    """One stage per group of units, all on ``device``, which is also source and sink."""
    return Plan.build(device, device, [(s, e, {device: 1.0}) for s, e in graph.groups])


def profile_units(ctl: Controller, device: str, repeats: int = 5, seed: int = 0) -> list[float]:
    """Median CPU seconds per unit on ``device`` (one warm-up request first)."""
    graph = ctl.graph
    ctl.deploy(every_cut_plan(graph, device))
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(1, *graph.input_shape, generator=gen) for _ in range(repeats + 1)]
    per_stage: list[list[float]] = [[] for _ in graph.groups]
    for i, x in enumerate(xs):
        result = ctl.infer(x)
        if i == 0:
            continue
        for event in result.timeline.of("compute", device):
            per_stage[event["stage"]].append(event["cpu"])
    seconds = []
    for (start, end), samples in zip(graph.groups, per_stage, strict=True):
        total = statistics.median(samples)
        flops = [u.flops for u in graph.units[start:end]]
        weights = flops if sum(flops) > 0 else [1] * (end - start)
        seconds += [round(total * w / sum(weights), 9) for w in weights]
    return seconds


def profile_record(
    ctl: Controller, device: str, reference_gflops: float, repeats: int = 5, host: str | None = None
) -> dict:
    """The profile as the JSON-ready dict ``env.profiles.read_profile`` validates; ``host`` names the
    machine the device's worker runs on (default: this one)."""
    return {
        "format": FORMAT,
        "model": ctl.model,
        "device": device,
        "host": host or this_host(),
        "input_shape": list(ctl.input_shape),
        "reference_gflops": reference_gflops,
        "units": [u.name for u in ctl.graph.units],
        "unit_seconds": profile_units(ctl, device, repeats),
    }


def measure_local(model: str, seed: int = 0, repeats: int = 5) -> dict:
    """This host's profile of ``model``, measured through one unpaced local worker, with the host's
    single-thread GFLOP/s (what emulated workers pace by) as the reference, and ``probe_cpu_s``: the
    median CPU seconds of the probe convolution while it was measured (env/profiles.py's drift check)."""
    with LocalCluster(_local_spec(), model=model, seed=seed, emulate=False) as cluster:
        before = conv_cpu_seconds(0.5)
        record = profile_record(cluster.controller, "local", measure_host_gflops(), repeats)
        record["probe_cpu_s"] = statistics.median(before + conv_cpu_seconds(0.5))
        return record


def device_host(spec: ClusterSpec, device: str) -> str:
    """The host a real device's worker runs on: its address without the port."""
    address = spec.devices[device].address
    if address is None:
        raise SpecError(f"device {device} has no address: it has no real worker to profile")
    return address.rpartition(":")[0]


def profile_devices(ctl: Controller, devices: list[str], repeats: int = 5) -> dict[str, dict]:
    """Every device's worker profiles itself in turn (one unpaced plan on that device alone); the
    controller collects the records, each with the device's spec GFLOP/s as the reference."""
    spec = ctl.spec
    return {
        d: profile_record(ctl, d, spec.devices[d].gflops, repeats, host=device_host(spec, d)) for d in devices
    }


def _local_spec() -> ClusterSpec:
    device = Device("local", None, 1.0, PowerProfile(1.0, 0.0, 0.0, 0.0), None)
    return ClusterSpec("local", {"local": device}, (), "local", "local")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.profiler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", type=models.model_argument, help=models.MODEL_HELP)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--cluster", type=Path, help="cluster file with worker addresses (default: a local worker)"
    )
    parser.add_argument("--device", help="the one device to profile (with --cluster; default: all)")
    parser.add_argument(
        "--curve-keys", type=Path, help="key directory holding controller.key_secret (with --cluster)"
    )
    parser.add_argument(
        "--out", type=Path, help="JSON file to write (one device only; default: the profile cache)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.cluster is None:
        records = {"local": measure_local(args.model, args.seed, args.repeats)}
    else:
        try:
            spec = load_cluster(args.cluster)
            if args.device is not None and args.device not in spec.devices:
                raise SpecError(f"--device must be one of {', '.join(spec.devices)}")
            devices = [args.device] if args.device else list(spec.device_ids)
            for d in devices:
                device_host(spec, d)
        except SpecError as exc:
            parser.exit(2, f"profiler: error: {exc}\n")
        if args.out is not None and len(devices) > 1:
            parser.error("--out writes one profile: name the --device")
        with Controller(spec, model=args.model, seed=args.seed, curve_keys=args.curve_keys) as ctl:
            records = profile_devices(ctl, devices, args.repeats)
    for record in records.values():
        out = args.out or profile_path(args.model, record["host"])
        write_profile(record, out)
        total = sum(record["unit_seconds"])
        print(f"{args.model} on {record['device']}: {total * 1e3:.2f} ms per inference, written to {out}")


if __name__ == "__main__":
    main()
