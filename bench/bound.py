"""The optimiser's certified gap: its plan's cost against the lower bound of agents/bound.py.

VGG-16 (bn) at 224 on the four DISNET meshes (../shared/scenarios) at each bandwidth cap, a static
snapshot (every device at speed 1, every link at the cap or below): per mesh and cap, for the latency
objective (and the energy objective with --energy), the optimiser's predicted cost, the bound, the gap
``cost / bound - 1``, and the decision time (wall and CPU seconds of ``decide``: search plus bound, one
thread), then the median and p95 gap over all rows. Needs ../shared/scenarios.

Rerun: python -m bench.bound [--caps 10,15,25] [--energy] [--json OUT] [--scenarios DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from agents import OptimalPlanner
from cli import flags
from cli.output import write_json
from env.cost_model import CostModel, Objective
from env.network import NetworkState
from runtime import models
from runtime.graph import LayerGraph
from runtime.spec import load_cluster

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "scenarios"
MESHES = ("disnet-mesh0", "disnet-mesh1", "disnet-mesh2", "disnet-mesh3")


def decision(graph: LayerGraph, path: Path, cap: float, objective: Objective) -> dict:
    """One optimiser decision on a static snapshot of the mesh at ``path`` capped at ``cap`` Mbit/s, timed."""
    spec = load_cluster(path, bandwidth_cap=cap)
    snapshot = NetworkState.static(spec).snapshot(0.0)
    planner = OptimalPlanner(CostModel(graph, spec))
    wall, cpu = time.perf_counter(), time.process_time()
    decided = planner.decide(snapshot, graph, objective)
    return {
        "mesh": path.stem,
        "cap_mbps": cap,
        "objective": objective.kind,
        "cost": decided.score,
        "bound": decided.bound,
        "gap": decided.gap,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
    }


def summary(rows: list[dict]) -> dict:
    gaps = [r["gap"] for r in rows]
    return {
        "gap_median": statistics.median(gaps),
        "gap_p95": float(np.percentile(gaps, 95)),
        "wall_s_max": max(r["wall_s"] for r in rows),
        "cpu_s_max": max(r["cpu_s"] for r in rows),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caps", default="10,15,25", help="bandwidth caps in Mbit/s, comma separated")
    parser.add_argument("--energy", action="store_true", help="also the energy objective")
    flags.add_json(parser, help="also write the figures as JSON here")
    parser.add_argument(
        "--scenarios", type=Path, default=SHARED, help="folder of the disnet-mesh*.json files"
    )
    args = parser.parse_args()
    try:
        caps = [float(c) for c in args.caps.split(",")]
    except ValueError:
        parser.error(f"--caps must be numbers separated by commas, not {args.caps!r}")
    if not all(c > 0 for c in caps):
        parser.error("--caps must be positive")
    paths = [args.scenarios / f"{mesh}.json" for mesh in MESHES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"bench.bound needs the DISNET meshes: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    graph = LayerGraph.from_model(models.skeleton("vgg16_bn"), models.input_shape("vgg16_bn"), "vgg16_bn")
    objectives = [Objective("latency")] + ([Objective("energy")] if args.energy else [])
    console = Console(width=120)
    report = {}
    for objective in objectives:
        rows = []
        for path in paths:
            for cap in caps:
                rows.append(decision(graph, path, cap, objective))
                console.log(f"{objective.kind} {path.stem} {cap:g} Mbit/s: gap {rows[-1]['gap']:.1%}")
        unit = "s" if objective.kind == "latency" else "J"
        table = Table(title=f"optimiser vs certified bound, VGG-16, {objective.kind}")
        for col in ("mesh", "cap Mbit/s", f"cost {unit}", f"bound {unit}", "gap", "decision s", "CPU s"):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(
                r["mesh"],
                f"{r['cap_mbps']:g}",
                f"{r['cost']:.3f}",
                f"{r['bound']:.3f}",
                f"{r['gap']:.1%}",
                f"{r['wall_s']:.2f}",
                f"{r['cpu_s']:.2f}",
            )
        console.print(table)
        total = summary(rows)
        console.print(
            f"{objective.kind}: gap median {total['gap_median']:.1%}, p95 {total['gap_p95']:.1%}; "
            f"decision at most {total['wall_s_max']:.2f} s wall, {total['cpu_s_max']:.2f} s CPU"
        )
        report[objective.kind] = {"rows": rows, **total}
    if args.json:
        write_json(args.json, report, console, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
