"""Compare planners side by side, and check the cost model against the runtime.

  python evaluate.py compare --cluster CONFIG --model vgg16_bn --agents optimal,disnet,modnn,... \
      [--bandwidth-cap MBPS] [--backend sim|live] [--requests N] [--traces DIR] [--failures PER_MIN] \
      [--rescue] [--json OUT] [--plots DIR] [--cost profile|flops] [--profile FILE] [--dilation D] [--pacing cpu]
  python evaluate.py calibrate --cluster CONFIG --model NAME --plans N [--profile FILE] [--network kernel] [--json OUT]

Both take ``--scenario NAME|FILE`` (configs/scenarios, cli/scenarios.py): a YAML file that may set every
option of the subcommand, named as the flag's destination (``gap_s: 1``, ``spec_cap_mbps: 10``); flags
still override it. ``--bandwidth-cap`` caps the cluster file's links (the spec).

``calibrate`` runs random plans on a local emulated cluster and prints predicted vs measured latency and
energy per plan and in summary, for the default cost model (this host's compute profile) and FLOPs alone;
``--network kernel`` carries the bands over real TCP between network namespaces, shaped by the kernel
(runtime/kernel_network.py), instead of the workers' radio timers.

Live runs emulate the cluster with a time dilation D (``--dilation``; default automatic from this host's
free cores and speed, runtime/emulation.py) and report each device's fidelity (achieved over nominal
compute speed; ``fidelity_min`` in the JSON, a warning below 0.95).

Planners plan on this host's per-unit compute profile of the model (env/profiles.py: measured through a
worker once and cached; ``--profile FILE`` to use another), or with ``--cost flops`` on FLOPs alone; live
runs pace the emulated devices by the profile (this host's profile with ``--cost flops``): each band
takes the profile's seconds for it, so live and sim differ only by what the runtime does; ``--pacing cpu``
paces each band by the CPU time its real computation took instead (runtime/emulation.py says why that
is not the default).

Every agent plans on the same snapshots of the same world, taken at the same request times
(``--warmup-s`` + i x ``--gap-s``); ``sim`` scores plans with the cost model in the trace-driven world,
``live`` runs them on a local emulated cluster and checks every output against the unsplit model, each
agent's request from its snapshot's time on the traces' clock (the clock restarted there), so that every
agent's request meets the same seconds of the traces. Add ``clairvoyant`` to ``--agents`` for every
agent's regret against the plan made on the world's true future, and ``hindsight`` for the same planner
on the world's true past (an online planner with a perfect record and a long search, to tell what the
regret is made of); the table and JSON also give each agent's fallbacks, failed requests, rescues and
(for an optimiser that proves one) its gap to the certified bound. ``--rescue`` serves each request as adaptive serving does: a request that
conditions collapse under is restarted on its own planner's newer plan (in the sim as
serving/world_rescue.py replays the rule, a failed request retried on its planner's plan for the
devices still up; live by serving's own watcher on the cluster's telemetry); without it, a request runs
to its end on the plan it was dealt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from rich.progress import Progress

from agents import make_planner
from cli import flags
from cli.errors import INTERRUPTED_EXIT, reporting_user_errors
from cli.output import script_console, write_json, writing
from cli.scenarios import parse_with_scenario
from cli.worlds import build_world, trace_dynamics
from env.cost_model import CostModel, Objective
from env.profiles import host_profile, pacing, resolve_profile
from env.snapshot import Snapshot
from runtime import models
from runtime.fidelity import fidelity_fields, print_fidelity
from runtime.graph import LayerGraph
from runtime.plan import random_plan
from runtime.spec import load_cluster
from serving.calibration import calibration_report, print_calibration
from serving.comparison_report import plot, print_summary, report_json, summarize
from serving.evaluation import (
    ComparisonInterrupted,
    LiveRescue,
    SimExecutor,
    live_session,
    rescuers,
    run_comparison,
)

console = script_console()


def load_problem(args: argparse.Namespace, failures_per_min: float = 0.0):
    """The cluster, the seeded model, its graph and the world the links follow, from the CLI options."""
    spec = load_cluster(args.cluster, bandwidth_cap=args.spec_cap_mbps)
    model = models.build(args.model, seed=args.seed)
    graph = LayerGraph.from_model(model, models.input_shape(args.model), args.model)
    dynamics = args.dynamics if args.dynamics is not None else trace_dynamics(args.traces)
    world = build_world(
        spec,
        dynamics,
        seed=args.seed,
        failures_per_min=failures_per_min,
        origin="--traces/--failures",
        base_dir=args.dynamics_dir,
    )
    return spec, model, graph, world


def compare(args: argparse.Namespace) -> dict:
    """Every agent on the same snapshots of the same world, in the simulator or live; the JSON report."""
    spec, model, graph, world = load_problem(args, args.failures)
    objective = Objective(args.objective, args.energy_weight)
    live = args.backend == "live"
    profile = resolve_profile(graph, args.cost, args.profile, same_host=live, say=console.print)
    cost = CostModel(graph, spec, profile)
    planners = {
        name: make_planner(
            name,
            graph=graph,
            spec=spec,
            cost_model=cost,
            world=world,
        )
        for name in args.agents.split(",")
    }

    def run(snapshot_at, execute):
        return run_comparison(
            planners, snapshot_at, args.requests, graph, objective, execute, console=console
        )

    def snapshot_at(index: int) -> Snapshot:  # the same request times for either backend
        return world.snapshot(args.warmup_s + index * args.gap_s)

    emulation = {}
    try:
        if live:
            options = cluster_options(args, profile or paced_by(graph))
            if args.rescue:
                options["rescue"] = LiveRescue(planners, graph, objective)
            with live_session(spec, args.model, model, world, seed=args.seed, **options) as session:
                console.print(f"emulation: time dilation {session.cluster.dilation:g}")
                records = run(snapshot_at, session.execute)
                emulation = fidelity_report(session)
        else:
            rescue = rescuers(planners, graph, objective) if args.rescue else None
            records = run(snapshot_at, SimExecutor(cost, world, rescue))
    except ComparisonInterrupted as stop:
        if not stop.requests:
            raise
        console.print(
            f"[yellow]interrupted[/] after {stop.requests} of {args.requests} requests: reporting those"
        )
        report = comparison_report(args, spec.name, stop.records, {}, stop.requests)
        return report | {"interrupted_after_requests": stop.requests}
    return comparison_report(args, spec.name, records, emulation, args.requests)


def comparison_report(
    args: argparse.Namespace, cluster: str, records, emulation: dict, requests: int
) -> dict:
    """Print the comparison's table (and plots) of ``requests`` requests; its JSON report."""
    summary = summarize(records, Objective(args.objective, args.energy_weight))
    cap = f", cap {args.spec_cap_mbps:g} Mbit/s" if args.spec_cap_mbps else ""
    print_summary(summary, console, f"{args.model} on {cluster}{cap}, {args.backend}, {requests} requests")
    report = report_json(
        summary,
        records,
        model=args.model,
        cluster=cluster,
        backend=args.backend,
        spec_cap_mbps=args.spec_cap_mbps,
        objective=args.objective,
        traces=args.traces,
        cost=args.cost,
        failures_per_min=args.failures,
        **emulation,
    )
    if args.plots:
        with writing(Path(args.plots)):
            paths = plot(summary, records, Path(args.plots))
        for path in paths:
            console.print(f"wrote {path}")
    return report


def calibrate(args) -> dict:
    """Run random plans on an emulated local cluster; compare measured latency and energy with predictions.

    Two predictions per plan: the default model (this host's cached compute profile, or ``--profile``)
    and FLOPs with device GFLOP/s alone, so the report shows which term of the model an error comes from.
    The emulation paces compute by the profile (``--pacing``): the profile's error is then that of
    everything but compute (transfers, radios, queues, energy); ``--pacing cpu`` adds this host's real
    compute, co-location cost included.
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
    """The emulated cluster's pacing: by the profile (``--pacing``), dilated by ``--dilation`` (default:
    automatic for this host)."""
    return pacing(profile, args.pacing) | {"dilation": args.dilation}


def fidelity_report(session) -> dict:
    """Print the live run's per-device fidelity; its JSON fields."""
    fidelity, dilation = session.fidelity.per_device(), session.cluster.dilation
    print_fidelity(fidelity, dilation, session.cluster.pacing, console)
    return fidelity_fields(fidelity, dilation, session.cluster.pacing)


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The parser and its subcommands, which share the problem, link, profile and output flags."""
    shared = argparse.ArgumentParser(add_help=False)
    flags.add_problem(shared, cluster_required=False)
    flags.add_scenario(shared)
    flags.add_links(shared)
    flags.add_profile(shared)
    flags.add_dilation(shared)
    flags.add_pacing(shared)
    flags.add_json(shared)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", parents=[shared], help="compare planners on identical snapshots")
    flags.add_agents(
        c, default="optimal,disnet,modnn,modnn-p2p,deepslicing,deepthings,deepthings-equal,neurosurgeon,local"
    )
    c.add_argument("--backend", choices=("sim", "live"), default="sim")
    flags.add_requests(c, default=20)
    c.add_argument(
        "--gap-s", type=flags.non_negative, default=2.0, help="seconds between requests in the world"
    )
    c.add_argument(
        "--warmup-s", type=flags.non_negative, default=10.0, help="world time of the first request"
    )
    c.add_argument(
        "--failures",
        type=float,
        default=0.0,
        help="failures per minute of every device but the source and sink (sim; 20 s down on average)",
    )
    flags.add_rescue(c)
    flags.add_objective(c)
    flags.add_cost_model(c)
    c.add_argument(
        "--plots",
        type=flags.output_folder,
        default=None,
        help="write latency CDF and bar PNGs into this folder",
    )
    k = sub.add_parser(
        "calibrate", parents=[shared], help="predicted vs measured latency and energy of random plans"
    )
    k.add_argument("--plans", type=flags.at_least_one, default=20)
    k.add_argument(
        "--max-devices", type=flags.at_least_one, default=4, help="devices per stage in the random plans"
    )
    k.add_argument("--max-stages", type=flags.at_least_one, default=4)
    flags.add_network(k)
    return parser, sub


def main(argv: list[str] | None = None) -> int:
    parser, subcommands = build_parser()
    args = parse_with_scenario(parser, argv, subcommands)
    if not args.cluster:
        parser.error("--cluster is required (or a --scenario that names one)")
    if args.dynamics is not None and args.traces:
        parser.error(f"--traces and the scenario {args.scenario!r} both set the links: choose one")
    if args.command == "compare":
        flags.check_objective(parser, args)
    if args.command == "compare" and args.backend == "sim" and (args.dilation or args.pacing != "profile"):
        parser.error("--dilation and --pacing are for the live backend (the sim emulates no cluster)")
    if args.command == "compare" and args.failures and args.backend == "live":
        parser.error("--failures is for the sim backend (a live cluster's workers fail only for real)")

    def work() -> int:
        report = compare(args) if args.command == "compare" else calibrate(args)
        if args.json:
            write_json(args.json, report, console)
        return INTERRUPTED_EXIT if "interrupted_after_requests" in report else 0

    return reporting_user_errors(work, console)


if __name__ == "__main__":
    sys.exit(main())
