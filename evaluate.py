"""Compare planners side by side, and check the cost model against the runtime.

  python evaluate.py compare --cluster CONFIG --model vgg16_bn --agents optimal,disnet,modnn,... \
      [--bandwidth-cap MBPS] [--backend sim|live] [--requests N] [--traces DIR] [--json OUT] [--plots DIR]
  python evaluate.py calibrate --cluster CONFIG --model NAME --plans N [--json OUT]

Every agent plans on the same snapshots of the same world; ``sim`` scores plans with the cost model in the
trace-driven world, ``live`` runs them on a local emulated cluster and checks every output against the
unsplit model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from rich.console import Console

from agents import PlannerError, make_planner
from agents.evaluation import (
    Outcome,
    live_session,
    plot,
    print_summary,
    report_json,
    run_comparison,
    summarize,
)
from env.cost_model import CostModel, Objective
from env.network import DynamicsConfig, NetworkError, NetworkState
from env.traces import TraceError
from runtime import models
from runtime.graph import LayerGraph
from runtime.plan import PlanError
from runtime.spec import SpecError, load_cluster

console = Console()


def build_world(spec, traces: str | None, seed: int) -> NetworkState:
    """A constant world at the spec's bandwidths, or every link following traces sampled from ``traces``."""
    if traces is None:
        return NetworkState.static(spec)
    dynamics = DynamicsConfig.parse({"links": {"default": traces}, "seed": seed}, origin="--traces")
    return NetworkState.sample(spec, dynamics, np.random.default_rng(seed))


def compare(args) -> dict:
    spec = load_cluster(args.cluster, bandwidth_cap=args.bandwidth_cap)
    model = models.build(args.model, seed=args.seed)
    graph = LayerGraph.from_model(model, models.input_shape(args.model), args.model)
    objective = Objective(args.objective, args.energy_weight)
    world = build_world(spec, args.traces, args.seed)
    planners = {name: make_planner(name, graph=graph, spec=spec) for name in args.agents.split(",")}
    if args.backend == "sim":
        cost = CostModel(graph, spec)

        def snapshot_at(i):
            return world.snapshot(args.warmup_s + i * args.gap_s)

        def execute(agent, index, t, plan):
            p = cost.predict(plan, world, t)
            return Outcome(p.latency_s, p.energy_j)

        records = run_comparison(
            planners, snapshot_at, args.requests, graph, objective, execute, console=console
        )
    else:
        with live_session(spec, args.model, model, world, seed=args.seed) as (snapshot_at, execute):
            records = run_comparison(
                planners, snapshot_at, args.requests, graph, objective, execute, console=console
            )
    summary = summarize(records)
    cap = f", cap {args.bandwidth_cap:g} Mbit/s" if args.bandwidth_cap else ""
    print_summary(
        summary, console, f"{args.model} on {spec.name}{cap}, {args.backend}, {args.requests} requests"
    )
    report = report_json(
        summary,
        records,
        model=args.model,
        cluster=spec.name,
        backend=args.backend,
        bandwidth_cap_mbps=args.bandwidth_cap,
        objective=args.objective,
        traces=args.traces,
    )
    if args.plots:
        for path in plot(summary, records, Path(args.plots)):
            console.print(f"wrote {path}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="compare planners on identical snapshots")
    c.add_argument("--cluster", required=True, help="cluster YAML or disnet-mesh/1 JSON")
    c.add_argument("--model", default="vgg16_bn", choices=models.MODEL_NAMES)
    c.add_argument("--agents", default="optimal,disnet,modnn,deepslicing,deepthings,neurosurgeon,local")
    c.add_argument("--bandwidth-cap", type=float, default=None, help="cap every link at MBPS")
    c.add_argument("--backend", choices=("sim", "live"), default="sim")
    c.add_argument("--requests", type=int, default=20)
    c.add_argument("--gap-s", type=float, default=2.0, help="seconds between requests in the world")
    c.add_argument("--warmup-s", type=float, default=10.0, help="world time of the first request")
    c.add_argument("--traces", default=None, help="trace file or folder every link samples from")
    c.add_argument("--objective", choices=("latency", "energy", "weighted"), default="latency")
    c.add_argument("--energy-weight", type=float, default=0.0)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", default=None, help="write the result as JSON here")
    c.add_argument("--plots", default=None, help="write latency CDF and bar PNGs into this folder")
    args = parser.parse_args(argv)
    if getattr(args, "requests", 1) < 1:
        parser.error("--requests must be >= 1")
    try:
        report = compare(args)
    except (SpecError, PlanError, PlannerError, NetworkError, TraceError, models.ModelError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
