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

``python -m runtime.profiler --model tiny --out tiny.json`` profiles this host through a local worker;
``--cluster CONFIG --device ID`` profiles the real worker of a device at the address in the config,
with the device's spec GFLOP/s as the reference. The JSON is small::

    {"model": "tiny", "device": "local", "host": "box", "input_shape": [3, 32, 32],
     "reference_gflops": 84.5, "unit_seconds": [...]}
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
from pathlib import Path

import torch

from runtime import models
from runtime.cluster import LocalCluster
from runtime.controller import Controller
from runtime.emulation import measure_host_gflops
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.spec import ClusterSpec, Device, PowerProfile, SpecError, load_cluster


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


def profile_record(ctl: Controller, device: str, reference_gflops: float, repeats: int = 5) -> dict:
    """The profile as the JSON-ready dict ``env.cost_model.Profile.load`` reads."""
    return {
        "model": ctl.model,
        "device": device,
        "host": socket.gethostname(),
        "input_shape": list(ctl.input_shape),
        "reference_gflops": reference_gflops,
        "unit_seconds": profile_units(ctl, device, repeats),
    }


def _local_spec() -> ClusterSpec:
    device = Device("local", None, 1.0, PowerProfile(1.0, 0.0, 0.0, 0.0), None)
    return ClusterSpec("local", {"local": device}, (), "local", "local")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.profiler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", choices=models.MODEL_NAMES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--cluster", type=Path, help="cluster file with worker addresses (default: a local worker)"
    )
    parser.add_argument("--device", help="device to profile (with --cluster)")
    parser.add_argument(
        "--curve-keys", type=Path, help="key directory holding controller.key_secret (with --cluster)"
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    if args.cluster is None:
        with LocalCluster(_local_spec(), model=args.model, seed=args.seed, emulate=False) as cluster:
            record = profile_record(cluster.controller, "local", measure_host_gflops(), args.repeats)
    else:
        try:
            spec = load_cluster(args.cluster)
        except SpecError as exc:
            parser.exit(2, f"profiler: error: {exc}\n")
        if args.device not in spec.devices:
            parser.exit(2, f"profiler: error: --device must be one of {', '.join(spec.devices)}\n")
        with Controller(spec, model=args.model, seed=args.seed, curve_keys=args.curve_keys) as ctl:
            record = profile_record(ctl, args.device, spec.devices[args.device].gflops, args.repeats)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    total = sum(record["unit_seconds"])
    print(f"{args.model} on {record['device']}: {total * 1e3:.2f} ms per inference, written to {args.out}")


if __name__ == "__main__":
    main()
