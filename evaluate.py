"""Compare planners side by side, and check the cost model against the runtime.

  python evaluate.py compare --cluster CONFIG --model vgg16_bn --agents optimal,disnet,modnn,... \
      [--bandwidth-cap MBPS] [--backend sim|live] [--requests N] [--traces DIR] [--failures PER_MIN] \
      [--json OUT] [--plots DIR] [--cost profile|flops] [--profile FILE] [--dilation D]
  python evaluate.py calibrate --cluster CONFIG --model NAME --plans N [--profile FILE] [--network kernel] [--json OUT]

``calibrate`` runs random plans on a local emulated cluster and prints predicted vs measured latency and
energy per plan and in summary, for the default cost model (this host's compute profile) and FLOPs alone;
``--network kernel`` carries the bands over real TCP between network namespaces, shaped by the kernel
(runtime/kernel_network.py), instead of the workers' radio timers.

Live runs emulate the cluster with a time dilation D (``--dilation``; default automatic from this host's
free cores and speed, runtime/emulation.py) and report each device's fidelity (achieved over nominal
compute speed; ``fidelity_min`` in the JSON, a warning below 0.95).

Planners plan on this host's per-unit compute profile of the model (env/profiles.py: measured through a
worker once and cached; ``--profile FILE`` to use another), or with ``--cost flops`` on FLOPs alone; live
runs pace the emulated devices by the profile (this host's profile with ``--cost flops``).

Every agent plans on the same snapshots of the same world; ``sim`` scores plans with the cost model in the
trace-driven world, ``live`` runs them on a local emulated cluster and checks every output against the
unsplit model. Add ``clairvoyant`` to ``--agents`` for every agent's regret against the plan made on the
world's true future; the table and JSON also give each agent's fallbacks, failed requests and (for an
optimiser that proves one) its gap to the certified bound.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from agents import PlannerError, make_planner
from env.cost_model import CostModel, Objective
from env.dynamics import DynamicsConfig
from env.network import NetworkState
from env.profiles import ProfileError, host_profile, pacing_gflops, resolve_profile
from env.snapshot import NetworkError
from env.traces import TraceError
from runtime import models
from runtime.cluster import NETWORKS, ClusterError
from runtime.fidelity import print_fidelity
from runtime.graph import LayerGraph
from runtime.plan import PlanError, random_plan
from runtime.spec import SpecError, load_cluster
from serving.calibration import calibration_report, print_calibration
from serving.comparison_report import plot, print_summary, report_json, summarize
from serving.evaluation import SimExecutor, live_session, run_comparison

console = Console(width=None if sys.stdout.isatty() else 140)
FAILURE_DOWNTIME_S = 20.0


def build_world(spec, traces: str | None, seed: int, failures_per_min: float = 0.0) -> NetworkState:
    """A world at the spec's bandwidths, or every link following traces sampled from ``traces``; devices
    other than the source and sink fail ``failures_per_min`` times a minute each (20 s down on average)."""
    if traces is None and not failures_per_min:
        return NetworkState.static(spec)
    dynamics = DynamicsConfig.parse(
        {
            "links": {"default": traces},
            "failures": {"rate_per_min": failures_per_min, "mean_downtime_s": FAILURE_DOWNTIME_S},
            "seed": seed,
        },
        origin="--traces/--failures",
    )
    return NetworkState.sample(spec, dynamics, np.random.default_rng(seed))


def load_problem(args):
    """The cluster, the seeded model, its graph and the world the links follow, from the CLI options."""
    spec = load_cluster(args.cluster, bandwidth_cap=args.bandwidth_cap)
    model = models.build(args.model, seed=args.seed)
    graph = LayerGraph.from_model(model, models.input_shape(args.model), args.model)
    failures = getattr(args, "failures", 0.0)
    return spec, model, graph, build_world(spec, args.traces, args.seed, failures)


def compare(args) -> dict:
    spec, model, graph, world = load_problem(args)
    objective = Objective(args.objective, args.energy_weight)
    live = args.backend == "live"
    profile = resolve_profile(graph, args.cost, args.profile, same_host=live, say=console.print)
    cost = CostModel(graph, spec, profile)
    planners = {
        name: make_planner(name, cost_model=cost, **({"world": world} if name == "clairvoyant" else {}))
        for name in args.agents.split(",")
    }
    emulation = {}
    if not live:

        def snapshot_at(i):
            return world.snapshot(args.warmup_s + i * args.gap_s)

        execute = SimExecutor(cost, world)
        records = run_comparison(
            planners, snapshot_at, args.requests, graph, objective, execute, console=console
        )
    else:
        with live_session(
            spec,
            args.model,
            model,
            world,
            seed=args.seed,
            **cluster_options(args, profile or paced_by(graph)),
        ) as session:
            console.print(f"emulation: time dilation {session.cluster.dilation:g}")
            records = run_comparison(
                planners,
                session.snapshot_at,
                args.requests,
                graph,
                objective,
                session.execute,
                console=console,
            )
            emulation = fidelity_report(session)
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
        cost=args.cost,
        failures_per_min=args.failures,
        **emulation,
    )
    if args.plots:
        for path in plot(summary, records, Path(args.plots)):
            console.print(f"wrote {path}")
    return report


def calibrate(args) -> dict:
    """Run random plans on an emulated local cluster; compare measured latency and energy with predictions.

    Two predictions per plan: the default model (this host's cached compute profile, or ``--profile``;
    the emulation paces by its reference speed) and FLOPs with device GFLOP/s alone, so the report shows
    which term of the model an error comes from.
    """
    spec, model, graph, world = load_problem(args)
    profile = resolve_profile(graph, "profile", args.profile, same_host=True, say=console.print)
    # the last predictor is the report's headline (calibration_report): the default model
    models_by_name = {"flops": CostModel(graph, spec), "profile": CostModel(graph, spec, profile)}
    rng = np.random.default_rng(args.seed)
    devices = list(spec.device_ids)
    plans = [
        random_plan(
            graph,
            devices,
            rng,
            max_devices=args.max_devices,
            max_stages=args.max_stages,
            source=spec.source,
            sink=spec.sink,
        )
        for _ in range(args.plans)
    ]
    with live_session(
        spec, args.model, model, world, seed=args.seed, network=args.network, **cluster_options(args, profile)
    ) as session:
        console.print(f"emulation: time dilation {session.cluster.dilation:g}")
        rows = []
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("plans", total=len(plans))
            for i, plan in enumerate(plans):
                outcome, t = session.run(i, plan)
                row = {
                    "plan": plan.to_dict(),
                    "time_s": t,
                    "measured": {"latency_s": outcome.latency_s, "energy_j": outcome.energy_j},
                    "outputs_match": outcome.outputs_match,
                }
                for name, cost in models_by_name.items():
                    p = cost.predict(plan, world, t)
                    row[name] = {"latency_s": p.latency_s, "energy_j": p.energy_j}
                rows.append(row)
                progress.advance(task)
        emulation = fidelity_report(session)
    report = calibration_report(rows, list(models_by_name))
    print_calibration(
        report, console, f"{args.model} on {spec.name}: predicted vs measured, {len(plans)} plans"
    )
    return report | emulation


def paced_by(graph):
    """This host's profile: emulated devices are paced by it even when planners plan on FLOPs alone, so
    that ``--cost`` changes only the plans."""
    return host_profile(graph, same_host=True, say=console.print)


def cluster_options(args, profile) -> dict:
    """The emulated cluster's pacing: by the profile's reference speed (what it predicts), dilated by
    ``--dilation`` (default: automatic for this host)."""
    return {"host_gflops": pacing_gflops(profile), "dilation": args.dilation}


def fidelity_report(session) -> dict:
    """Print the live run's per-device fidelity; its JSON fields."""
    fidelity, dilation = session.controller.fidelity.per_device(), session.cluster.dilation
    print_fidelity(fidelity, dilation, console)
    return {"dilation": dilation, "fidelity": fidelity, "fidelity_min": min(fidelity.values(), default=None)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="compare planners on identical snapshots")
    c.add_argument("--cluster", required=True, help="cluster YAML or disnet-mesh/1 JSON")
    c.add_argument("--model", default="vgg16_bn", choices=models.MODEL_NAMES)
    c.add_argument(
        "--agents",
        default="optimal,disnet,modnn,modnn-p2p,deepslicing,deepthings,deepthings-equal,neurosurgeon,local",
    )
    c.add_argument("--bandwidth-cap", type=float, default=None, help="cap every link at MBPS")
    c.add_argument("--backend", choices=("sim", "live"), default="sim")
    c.add_argument("--requests", type=int, default=20)
    c.add_argument("--gap-s", type=float, default=2.0, help="seconds between requests in the world")
    c.add_argument("--warmup-s", type=float, default=10.0, help="world time of the first request")
    c.add_argument("--traces", default=None, help="trace file or folder every link samples from")
    c.add_argument(
        "--failures",
        type=float,
        default=0.0,
        help="failures per minute of every device but the source and sink (sim; 20 s down on average)",
    )
    c.add_argument("--objective", choices=("latency", "energy", "weighted"), default="latency")
    c.add_argument("--energy-weight", type=float, default=0.0)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--cost", choices=("profile", "flops"), default="profile", help="cost model planners use")
    c.add_argument("--profile", default=None, help="compute profile JSON (default: this host's, cached)")
    c.add_argument("--dilation", type=float, default=None, help="live: run D x slower (default: auto)")
    c.add_argument("--json", default=None, help="write the result as JSON here")
    c.add_argument("--plots", default=None, help="write latency CDF and bar PNGs into this folder")
    k = sub.add_parser("calibrate", help="predicted vs measured latency and energy of random plans")
    k.add_argument("--cluster", required=True, help="cluster YAML or disnet-mesh/1 JSON")
    k.add_argument("--model", default="vgg16_bn", choices=models.MODEL_NAMES)
    k.add_argument("--plans", type=int, default=20)
    k.add_argument("--max-devices", type=int, default=4, help="devices per stage in the random plans")
    k.add_argument("--max-stages", type=int, default=4)
    k.add_argument("--bandwidth-cap", type=float, default=None)
    k.add_argument("--traces", default=None, help="trace file or folder every link samples from")
    k.add_argument(
        "--network",
        choices=NETWORKS,
        default="emulated",
        help="who shapes the links: each worker's radio timer (emulated), or tc on veths between one network namespace per worker (kernel; root only)",
    )
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--profile", default=None, help="compute profile JSON (default: this host's, cached)")
    k.add_argument("--dilation", type=float, default=None, help="run D x slower (default: auto)")
    k.add_argument("--json", default=None, help="write the summary and per-plan figures as JSON here")
    args = parser.parse_args(argv)
    for name in ("requests", "plans", "max_devices", "max_stages"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if getattr(args, "dilation", None) is not None and not 1 <= args.dilation < float("inf"):
        parser.error("--dilation must be a number >= 1")
    if args.command == "compare" and args.failures and args.backend == "live":
        parser.error("--failures is for the sim backend (a live cluster's workers fail only for real)")
    try:
        report = compare(args) if args.command == "compare" else calibrate(args)
    except (
        SpecError,
        PlanError,
        PlannerError,
        NetworkError,
        TraceError,
        models.ModelError,
        ClusterError,
        ProfileError,
    ) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
