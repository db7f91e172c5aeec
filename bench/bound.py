"""The optimiser's certified gap: its plan's cost against the lower bound of agents/bound.py.

VGG-16 (bn) at 224 on the four DISNET meshes (../shared/scenarios) at each bandwidth cap, a static
snapshot (every device at speed 1, every link at the cap or below): per mesh and cap, for the latency
objective (and the energy objective with --energy), the optimiser's predicted cost, the bound, the gap
``cost / bound - 1``, what each part of the bound reaches (the capacity relaxation alone, then with its
image-release rows: the bound without the chain bound, and the gap against that), and the decision time
(wall and CPU seconds of ``decide``: search plus bound, one thread, the set-up frozen out of the garbage
collector's full collections as in serving), then the median and p95 gap over all rows. Needs
../shared/scenarios, unless ``--generated`` asks for meshes of the DISNET generator family at evaluation
seeds instead; ``--model`` takes another zoo model.

A gap shrinks from either side: a tighter bound or a better plan. ``--restarts N`` checks the second: per
row, a first-improvement local search (the optimiser's own moves, ``--restart-budget`` plans each) from N
random plans of the full plan space (random cuts, device subsets, orders and shares), and the best cost any
of them reaches; a row where it beats the optimiser is one where the search, not the bound, holds the gap.
``--kicks N`` looks near the optimiser's plan instead: an iterated local search from it (N times, two to
four random moves from the best plan so far, then a descent of at most ``--restart-budget`` plans, the two
move orders in turn). The optimum lies between the bound and the best cost found, so what the kicks gain
is at least the search's share of the gap, and the best cost over the bound at most the bound's own.

Rerun: python -m bench.bound [--caps 10,15,25] [--energy] [--json OUT] [--scenarios DIR]
    [--generated 6,10,15,20] [--model NAME] [--restarts N] [--kicks N] [--restart-budget PLANS]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from agents import OptimalPlanner
from agents.base import usable
from agents.bound import lower_bound
from agents.local_search import SHARES_FIRST, STRUCTURE_FIRST, PlanSearch
from cli import flags
from cli.output import write_json
from env.cost_model import CostModel, Objective
from env.meshes import EVAL_SEED_BASE, mesh_spec
from env.network import NetworkState
from env.snapshot import Snapshot
from runtime import models
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.spec import ClusterSpec, load_cluster
from serving.heap import setup_frozen

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "scenarios"
MESHES = ("disnet-mesh0", "disnet-mesh1", "disnet-mesh2", "disnet-mesh3")
DRAWS = 100  # random plans tried for a feasible start of each restart


def decision(
    graph: LayerGraph,
    spec: ClusterSpec,
    cap: float,
    objective: Objective,
    restarts: int = 0,
    budget: int = 0,
    kicks: int = 0,
) -> dict:
    """One optimiser decision on a static snapshot of ``spec`` (capped at ``cap`` Mbit/s), timed; with
    ``restarts``, also the best cost of local searches from that many random plans; with ``kicks``, the
    best cost of an iterated local search from the optimiser's plan."""
    snapshot = NetworkState.static(spec).snapshot(0.0)
    model = CostModel(graph, spec)
    planner = OptimalPlanner(model)
    wall, cpu = time.perf_counter(), time.process_time()
    decided = planner.decide(snapshot, graph, objective)
    row = {
        "mesh": spec.name,
        "cap_mbps": cap,
        "objective": objective.kind,
        "model": graph.name,
        "cost": decided.score,
        "bound": decided.bound,
        "gap": decided.gap,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
    }
    # what each part of the bound adds, side by side: the capacity relaxation alone, then with the
    # image-release rows (the bound before the chain bound of agents/chain_bound.py)
    row["capacity_bound"] = lower_bound(snapshot, graph, objective, model, release=False, chains=False)
    row["release_bound"] = lower_bound(snapshot, graph, objective, model, chains=False)
    if restarts:
        searches = [PlanSearch(model, snapshot, graph, objective) for _ in range(restarts)]
        row["restarts_cost"] = restart_search(searches, budget, np.random.default_rng(0))
    if kicks:
        search = PlanSearch(model, snapshot, graph, objective)
        row["kicked_cost"] = kicked_search(search, decided.plan, kicks, budget, np.random.default_rng(0))
    return row


def random_plan(graph: LayerGraph, snapshot: Snapshot, rng: np.random.Generator) -> Plan:
    """A plan drawn from the whole plan space: each cut point cut with probability 0.3, each stage on a
    random ordered subset of the usable devices with shares of their speed times a random factor."""
    devices = usable(snapshot)
    cuts = [c for c in graph.cut_points[1:-1] if rng.random() < 0.3]
    stages = []
    for start, end in zip((0, *cuts), (*cuts, len(graph.units)), strict=True):
        k = int(rng.integers(1, min(len(devices), graph.extent(end)) + 1))
        chosen = rng.choice(devices, size=k, replace=False)
        stages.append(
            (start, end, {str(d): snapshot.device_gflops(str(d)) * rng.uniform(0.5, 1.5) for d in chosen})
        )
    return Plan.build(snapshot.source, snapshot.sink, stages)


def restart_search(searches: list[PlanSearch], budget: int, rng: np.random.Generator) -> float:
    """The best cost a local search of ``budget`` new plans reaches, each of ``searches`` from its own
    random plan (the first feasible one of up to ``DRAWS``: a random plan may overflow a memory)."""
    for search in searches:
        for _ in range(DRAWS):
            if np.isfinite(search.consider(random_plan(search.graph, search.snapshot, rng))):
                break
        else:
            raise RuntimeError(f"no feasible plan among {DRAWS} random ones")
        search.local_search(budget, rng, starts=1)
    return float(min(search.best_score for search in searches))


def kicked_search(
    search: PlanSearch, start: Plan, kicks: int, budget: int, rng: np.random.Generator
) -> float:
    """The best cost an iterated local search from ``start`` reaches: ``kicks`` times, two to four random
    moves from the best plan so far, then a descent of at most ``budget`` new plans, the two move orders
    in turn."""
    best, best_cost = start, search.consider(start)
    for k in range(kicks):
        kicked = search.kick(best, int(rng.integers(2, 5)), rng)
        order = (SHARES_FIRST, STRUCTURE_FIRST)[k % 2]
        end = search.descend(kicked, search.evaluations + budget, rng, order)
        if search.scores[end] < best_cost:
            best, best_cost = end, search.scores[end]
    return float(best_cost)


def summary(rows: list[dict]) -> dict:
    gaps = [r["gap"] for r in rows]
    without = [r["cost"] / r["release_bound"] - 1 for r in rows]
    return {
        "gap_median": statistics.median(gaps),
        "gap_p95": float(np.percentile(gaps, 95)),
        "gap_without_chains_median": statistics.median(without),
        "gap_without_chains_p95": float(np.percentile(without, 95)),
        "wall_s_max": max(r["wall_s"] for r in rows),
        "cpu_s_max": max(r["cpu_s"] for r in rows),
    }


def show(console: Console, rows: list[dict], objective: Objective) -> dict:
    """Print the rows as a table and their summary; return the summary."""
    unit = "s" if objective.kind == "latency" else "J"
    restarts, kicked = "restarts_cost" in rows[0], "kicked_cost" in rows[0]
    table = Table(title=f"optimiser vs certified bound, {rows[0]['model']}, {objective.kind}")
    columns = ["mesh", "cap Mbit/s", f"cost {unit}", f"bound {unit}", "gap", f"capacity {unit}"]
    columns += [f"+release {unit}", "gap without chains", "decision s", "CPU s"]
    columns += [f"restarts {unit}"] if restarts else []
    columns += [f"kicked {unit}", "kicked over bound"] if kicked else []
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        cells = [r["mesh"], f"{r['cap_mbps']:g}", f"{r['cost']:.3f}", f"{r['bound']:.3f}", f"{r['gap']:.1%}"]
        cells += [f"{r['capacity_bound']:.3f}", f"{r['release_bound']:.3f}"]
        cells += [f"{r['cost'] / r['release_bound'] - 1:.1%}", f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}"]
        cells += [f"{r['restarts_cost']:.3f}"] if restarts else []
        cells += [f"{r['kicked_cost']:.3f}", f"{r['kicked_cost'] / r['bound'] - 1:.1%}"] if kicked else []
        table.add_row(*cells)
    console.print(table)
    total = summary(rows)
    console.print(
        f"{objective.kind}: gap median {total['gap_median']:.1%}, p95 {total['gap_p95']:.1%} (without the "
        f"chain bound {total['gap_without_chains_median']:.1%}, {total['gap_without_chains_p95']:.1%}); "
        f"decision at most {total['wall_s_max']:.2f} s wall, {total['cpu_s_max']:.2f} s CPU"
    )
    if restarts:
        beaten = sum(r["restarts_cost"] < r["cost"] for r in rows)
        console.print(f"random-restart local search beat the optimiser in {beaten} of {len(rows)} rows")
    if kicked:
        gains = [1 - r["kicked_cost"] / r["cost"] for r in rows]
        slack = [r["kicked_cost"] / r["bound"] - 1 for r in rows]
        console.print(
            f"kicks from the optimiser's plan lowered its cost by {statistics.median(gains):.1%} (median; "
            f"at most {max(gains):.1%}); the bound's own slack is at most the best cost over the bound: "
            f"median {statistics.median(slack):.1%}, p95 {float(np.percentile(slack, 95)):.1%}"
        )
    return total


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caps", default="10,15,25", help="bandwidth caps in Mbit/s, comma separated")
    parser.add_argument("--meshes", help="which DISNET meshes, comma separated (default: all four)")
    parser.add_argument(
        "--generated",
        help="instead, meshes of the DISNET generator family with these device counts (comma separated), "
        "at evaluation seeds (EVAL_SEED_BASE + n): needs no scenario files",
    )
    parser.add_argument("--model", default="vgg16_bn", type=models.model_argument, help=models.MODEL_HELP)
    parser.add_argument("--energy", action="store_true", help="also the energy objective")
    parser.add_argument(
        "--restarts", type=int, default=0, help="also local searches from this many random plans per row"
    )
    parser.add_argument(
        "--kicks", type=int, default=0, help="also an iterated local search of this many kicks per row"
    )
    parser.add_argument(
        "--restart-budget",
        type=flags.at_least_one,
        default=2000,
        help="new plans each restart, or each descent after a kick, may score",
    )
    flags.add_json(parser, help="also write the figures as JSON here")
    parser.add_argument(
        "--scenarios", type=Path, default=SHARED, help="folder of the disnet-mesh*.json files"
    )
    args = parser.parse_args(argv)
    try:
        args.caps = [float(c) for c in args.caps.split(",")]
    except ValueError:
        parser.error(f"--caps must be numbers separated by commas, not {args.caps!r}")
    if not all(c > 0 for c in args.caps):
        parser.error("--caps must be positive")
    if args.restarts < 0 or args.kicks < 0:
        parser.error("--restarts and --kicks must be >= 0")
    if args.meshes is not None and args.generated is not None:
        parser.error("--meshes and --generated: choose one (the DISNET files or generated meshes)")
    args.meshes = MESHES if args.meshes is None else args.meshes.split(",")
    unknown = [m for m in args.meshes if m not in MESHES]
    if unknown:
        parser.error(f"--meshes: unknown {', '.join(unknown)} (known: {', '.join(MESHES)})")
    if args.generated is not None:
        try:
            args.generated = [int(n) for n in args.generated.split(",")]
        except ValueError:
            parser.error(f"--generated must be device counts separated by commas, not {args.generated!r}")
        if not all(2 <= n <= 64 for n in args.generated):
            parser.error("--generated: device counts must be 2 to 64")
    return args


def worlds(args: argparse.Namespace) -> list[Callable[[float], ClusterSpec]] | str:
    """Per mesh, its spec at a bandwidth cap; or why the meshes asked for cannot be had."""
    if args.generated is not None:
        return [partial(mesh_spec, n, EVAL_SEED_BASE + n) for n in args.generated]
    paths = [args.scenarios / f"{mesh}.json" for mesh in args.meshes]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return f"bench.bound needs the DISNET meshes (or --generated): missing {', '.join(missing)}"
    return [partial(load_cluster, path) for path in paths]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meshes = worlds(args)
    if isinstance(meshes, str):
        print(meshes, file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    graph = LayerGraph.from_model(models.skeleton(args.model), models.input_shape(args.model), args.model)
    objectives = [Objective("latency")] + ([Objective("energy")] if args.energy else [])
    console = Console(width=150)
    report = {}
    with setup_frozen():  # as in serving: full collections would walk the set-up inside decisions
        for objective in objectives:
            rows = []
            for mesh in meshes:
                for cap in args.caps:
                    spec = mesh(bandwidth_cap=cap)
                    rows.append(
                        decision(graph, spec, cap, objective, args.restarts, args.restart_budget, args.kicks)
                    )
                    console.log(f"{objective.kind} {spec.name} {cap:g} Mbit/s: gap {rows[-1]['gap']:.1%}")
            report[objective.kind] = {"rows": rows, **show(console, rows, objective)}
    if args.json:
        write_json(args.json, report, console, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
