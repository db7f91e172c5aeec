"""Serve inference on a cluster with a planner that adapts online; or run the end-to-end demo.

  python deploy.py --cluster CONFIG --model NAME --agent ppo:PATH|optimal|disnet|... \
      [--requests N | --duration S] [--arrival-every S | --fps F]
      [--traces DIR|FILE|synthetic [--trace-mode sample|replay] [--trace-cap MBPS]] [--bandwidth-cap MBPS]
      [--scenario NAME|FILE | --collapse [--collapse-at S] | --demo]
      [--static] [--chaos] [--json OUT] [--cost profile|flops] [--profile FILE] [--pacing profile|cpu]
      [--network emulated|kernel]
  python deploy.py --demo
  python deploy.py --cluster CONFIG --streams STREAMS.yaml [--chaos] [--dilation D] [--json OUT]  (cameras)
      [--traces DIR|FILE|synthetic ... | --scenario NAME|FILE | --collapse [--collapse-at S]] [--static]

By default the cluster is a local emulated one (one worker process per device; links follow the traces).
Closed loop by default (the next request enters when the cluster has room); ``--arrival-every S`` or
``--fps F`` serve a camera instead: a request arrives every S seconds whatever the cluster does, and its
latency counts from its arrival (waiting included). ``--trace-mode sample`` gives every link its own piece
of the traces (a random file of a folder, from a random offset, rescaled to the link's spec bandwidth);
``replay`` plays one recorded trace file on every link from t=0 as recorded (looping at its end), so a
recorded collapse collapses every link at once.

A scenario (configs/scenarios/NAME.yaml or any YAML file, cli/scenarios.py) may set every option, named as
the flag's destination (``window: 2``, ``spec_cap_mbps: 15``); flags still override it. ``--demo`` is
``--scenario demo``: VGG-16 on a local 10-device cluster like disnet-mesh0 served by the shipped PPO policy,
then by the analytic optimiser and two baselines, each replaying the same synthetic link traces from t=0
(the cluster's emulation clock restarts per planner); every output is checked against the unsplit model
and the comparison printed. ``--collapse`` is ``--scenario collapse``: every link drops
from 20 to 2 Mbit/s for 30 s.

Planners plan on this host's per-unit compute profile of the model (env/profiles.py: measured through a
worker once and cached; ``--profile FILE`` for another), or with ``--cost flops`` on FLOPs alone; the
emulated devices are paced by the profile (this host's profile with ``--cost flops``): each band takes the
profile's seconds for it (``--pacing cpu``: the CPU time its real computation took). Each run reports
every device's emulation fidelity (achieved over nominal compute speed, runtime/fidelity.py;
``fidelity_min`` in the JSON): below 0.95 the host could not keep up. Serving with a planner runs
undilated (D = 1): a planner's decision takes wall time, which a dilated run would shrink D x.
``--streams`` runs with a time dilation (runtime/emulation.py; automatic for this host, ``--dilation D``
to force): every time it reports is the emulated cluster's (serving/streams.py), and the JSON records
``dilation`` too. Its streams are re-planned lane by lane as the links move (``--static``: never, unless
a worker dies); the links follow ``--traces`` or a scenario's dynamics as with a planner.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.table import Table

from agents import Planner, make_planner, planner_labels
from cli import flags
from cli.errors import reporting_user_errors
from cli.output import script_console, write_json
from cli.scenarios import parse_with_scenario, timed_drop
from cli.worlds import build_world, trace_dynamics
from env.cost_model import CostModel, Objective
from env.network import NetworkState
from env.profiles import host_profile, pacing, resolve_profile
from runtime import models
from runtime.cluster import ClusterError, LocalCluster
from runtime.fidelity import print_fidelity
from runtime.graph import LayerGraph
from runtime.spec import ClusterSpec, load_cluster
from serving.deploy_streams import deploy_streams
from serving.loop import ServeOptions, serve
from serving.metrics import MetricsWriter
from serving.policies import Decider
from serving.streams import load_streams

console = script_console()


def world_for(spec: ClusterSpec, args: argparse.Namespace) -> NetworkState:
    """The link conditions the emulated cluster follows: a scenario's dynamics (its drop moved by
    ``--collapse-at``), the traces, or the spec's constant bandwidths."""
    if args.dynamics is not None:
        dynamics = timed_drop(args.dynamics, args.collapse_at)
    else:
        replay_cap = args.trace_cap_mbps if args.trace_cap_mbps is not None else args.spec_cap_mbps
        dynamics = trace_dynamics(args.traces, args.trace_mode, replay_cap)
    return build_world(spec, dynamics, seed=args.seed, origin="deploy.py", base_dir=args.dynamics_dir)


def chaos_schedule(spec, requests: int, kills: int = 3) -> list[tuple[int, str, str]]:
    """Kill ``kills`` workers spread over the run, each restarted a little later: never the source or
    the sink, nor a relay on every path between them (requests wait for such a relay to come back, and
    this schedule brings a worker back only after more requests are served)."""
    victims = [
        d
        for d in spec.device_ids
        if d not in (spec.source, spec.sink) and spec.connected_without(spec.source, spec.sink, d)
    ]
    if not victims:
        raise ClusterError(
            f"--chaos: cluster {spec.name!r} has no device to kill but its source, its sink and relays "
            "on every path between them"
        )
    events = []
    for k in range(kills):
        at = (k + 1) * requests // (kills + 1)
        device = victims[k % len(victims)]
        events += [(at, "kill", device), (at + max(2, requests // (4 * kills)), "restart", device)]
    return events


def run_agent(
    label: str,
    planner: Planner,
    cluster: LocalCluster,
    model,
    cost: CostModel,
    args,
    out_dir: Path | None,
    chaos: list[tuple[int, str, str]],
) -> dict:
    """One serving run of ``planner`` (labelled ``label``) planning on ``cost`` with the ``chaos`` kills, the
    emulation clock (and so the traces) from t=0."""
    graph = cost.graph
    fallback = make_planner("optimal", cost_model=cost)
    decide = Decider(planner, graph, Objective(args.objective, args.energy_weight), fallback)
    options = ServeOptions(
        requests=args.requests,
        duration_s=args.duration,
        replan_every=args.replan_every,
        static=args.static,
        window=args.window,
        arrival_every_s=args.arrival_every,
        chaos=chaos,
        seed=args.seed,
        replan_margin=args.replan_margin,
        restart_clock=True,  # every planner meets the same traces from its first request
    )
    writer = MetricsWriter(out_dir, label) if out_dir else None
    try:
        report = serve(cluster, model, decide, options, agent=label, console=console, on_result=writer)
    finally:
        if writer is not None:
            writer.close()
    summary = report.summary()
    summary["rss_mb"] = report.rss_mb
    fidelity = cluster.controller.fidelity.per_device()
    print_fidelity(
        fidelity,
        cluster.dilation,
        cluster.pacing,
        console,
        f" of {label}",
        remedy="serving with a planner runs undilated, so its latencies include the host's contention; "
        "rerun on a quieter host",
    )
    summary["fidelity"] = fidelity
    summary["fidelity_min"] = min(fidelity.values(), default=None)
    return summary


def print_table(summaries: list[dict], title: str) -> None:
    table = Table(title=title)
    cols = (
        "agent",
        "done",
        "lost",
        "dup",
        "outputs",
        "replans",
        "fallbacks",
        "lat mean s",
        "p50 s",
        "p95 s",
        "energy J",
        "fidelity",
    )
    for col in cols:
        table.add_column(col, justify="left" if col == "agent" else "right")
    for s in sorted(summaries, key=lambda s: s["latency_mean_s"]):
        table.add_row(
            s["agent"],
            str(s["completed"]),
            str(s["lost"]),
            str(s["duplicated"]),
            "exact" if s["outputs_match"] else "MISMATCH",
            str(s["replans"]),
            str(s["planner_fallbacks"]),
            f"{s['latency_mean_s']:.3f}",
            f"{s['latency_p50_s']:.3f}",
            f"{s['latency_p95_s']:.3f}",
            f"{s['energy_mean_j']:.2f}",
            "-" if s["fidelity_min"] is None else f"{s['fidelity_min']:.3f}",
        )
    console.print(table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    flags.add_problem(parser, cluster_required=False)
    flags.add_agents(parser, default="optimal")
    flags.add_requests(parser, default=50)
    parser.add_argument(
        "--duration", type=flags.positive, default=None, help="serve for S seconds (at most --requests)"
    )
    arrivals = parser.add_mutually_exclusive_group()
    arrivals.add_argument(
        "--arrival-every",
        type=flags.positive,
        default=None,
        metavar="S",
        help="open loop: a request arrives every S seconds; latency counts from its arrival",
    )
    arrivals.add_argument(
        "--fps", type=flags.positive, default=None, help="open loop at F requests per second"
    )
    flags.add_links(parser, replay=True)
    scenarios = flags.add_scenario(parser)
    scenarios.add_argument(
        "--demo",
        dest="scenario",
        action="store_const",
        const="demo",
        help="the end-to-end demo (--scenario demo)",
    )
    scenarios.add_argument(
        "--collapse",
        dest="scenario",
        action="store_const",
        const="collapse",
        help="every link drops from 20 to 2 Mbit/s for 30 s (--scenario collapse)",
    )
    parser.add_argument(
        "--collapse-at",
        type=flags.non_negative,
        default=None,
        metavar="S",
        help="the scenario's links drop S s into the run (default: as the scenario says; collapse: 20)",
    )
    add_serving(parser)
    flags.add_objective(parser)
    flags.add_network(parser)
    flags.add_cost_model(parser)
    flags.add_profile(parser)
    flags.add_pacing(parser)
    parser.add_argument(
        "--out", type=flags.output_folder, default="runs/serve", help="CSV and TensorBoard metrics go here"
    )
    flags.add_json(parser)
    parser.add_argument("--streams", default=None, help="serve the concurrent streams of this YAML file")
    flags.add_dilation(
        parser, help="--streams: run D x slower than the emulated cluster (default: automatic)"
    )
    return parser


def add_serving(parser: argparse.ArgumentParser) -> None:
    """How the serving loop re-plans and how much it runs at once."""
    parser.add_argument("--static", action="store_true", help="plan once at the start, never again")
    parser.add_argument("--chaos", action="store_true", help="kill and restart 3 workers during the run")
    parser.add_argument("--replan-every", type=flags.at_least_one, default=10)
    parser.add_argument(
        "--replan-margin",
        type=flags.share_or_off,
        default=ServeOptions.replan_margin,
        help="a new plan replaces the one in force only if, priced on the same snapshot, it gains more "
        "than this share of its score plus the swap's measured cost; 'off': any different plan (default "
        "%(default)s)",
    )
    parser.add_argument(
        "--window", type=flags.at_least_one, default=1, help="requests in flight (pipelining)"
    )


# options of serving with planners that --streams does not take (its own: the cluster, seed, chaos,
# dilation, cost model, profile, pacing and outputs)
NOT_FOR_STREAMS = (
    "model",
    "agents",
    "requests",
    "duration",
    "arrival_every",
    "fps",
    "replan_every",
    "window",
    "objective",
    "energy_weight",
    "network",
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The options, a scenario's taken as defaults; inconsistent ones are a usage error."""
    parser = build_parser()
    args = parse_with_scenario(parser, argv)
    if not args.cluster:
        parser.error("--cluster is required (or use --demo)")
    flags.check_objective(parser, args)
    if args.fps is not None:
        args.arrival_every = 1.0 / args.fps
    if args.arrival_every is not None and args.window != 1:
        parser.error("open-loop serving (--arrival-every/--fps) runs one request at a time (--window 1)")
    if args.dynamics is not None and args.traces:
        parser.error(f"--traces and the scenario {args.scenario!r} both set the links: choose one")
    if args.dilation is not None and not args.streams:
        parser.error("--dilation applies to --streams only: serving with a planner runs undilated (D = 1)")
    if args.streams:
        ignored = [
            f"--{d.replace('_', '-')}" for d in NOT_FOR_STREAMS if getattr(args, d) != parser.get_default(d)
        ]
        if ignored:
            parser.error(
                f"{', '.join(ignored)}: not for --streams (the streams file names the model and each stream's "
                "rate; each lane is planned and re-planned by the robust optimiser)"
            )
    if args.trace_mode == "replay" and not (args.traces and Path(args.traces).is_file()):
        parser.error("--trace-mode replay needs --traces FILE: one recorded trace file (not a folder)")
    return args


def serve_agents(args: argparse.Namespace, spec: ClusterSpec) -> list[dict]:
    """Every agent of ``--agents`` served in turn on one local emulated cluster; their summaries."""
    model = models.build(args.model, seed=args.seed)
    graph = LayerGraph.from_model(model, models.input_shape(args.model), args.model)
    world = world_for(spec, args)
    profile = resolve_profile(graph, args.cost, args.profile, same_host=True, say=console.print)
    cost = CostModel(graph, spec, profile)
    hosts = [d.id for d in spec.devices.values() if d.address is not None]
    if hosts:
        console.print(
            f"[yellow]note:[/] deploy.py serves on a local emulated cluster; the addresses of "
            f"{', '.join(hosts)} in the cluster file are not used (real hosts: README, 'Real hosts')"
        )
    # every name checked (and every policy fitted to the model and cluster) before a worker starts
    planners = {
        label: make_planner(agent, graph=graph, spec=spec, cost_model=cost)
        for agent, label in planner_labels(args.agents.split(",")).items()
    }
    chaos = chaos_schedule(spec, args.requests) if args.chaos else []
    links = {(link.a, link.b): world.link_schedule(link.a, link.b) for link in spec.links}
    with LocalCluster(
        spec,
        model=args.model,
        seed=args.seed,
        link_schedules=links,
        network=args.network,
        **pacing(profile or host_profile(graph, same_host=True, say=console.print), args.pacing),
    ) as cluster:
        return [
            run_agent(label, planner, cluster, model, cost, args, Path(args.out), chaos)
            for label, planner in planners.items()
        ]


def serve_streams_file(args: argparse.Namespace, spec: ClusterSpec) -> int:
    """``--streams``: several cameras on one mesh; 0 if no frame was lost or wrong."""
    streams = load_streams(args.streams, spec.device_ids)
    links = None
    if args.dynamics is not None or args.traces:
        world = world_for(spec, args)
        links = {(link.a, link.b): world.link_schedule(link.a, link.b) for link in spec.links}
    run = deploy_streams(
        spec,
        streams,
        seed=args.seed,
        chaos=args.chaos,
        dilation=args.dilation,
        links=links,
        static=args.static,
        replan_margin=args.replan_margin,
        cost_model=args.cost,
        profile_file=args.profile,
        pacing_mode=args.pacing,
        out_dir=Path(args.out),
        json_path=args.json,
        console=console,
    )
    return 0 if all(r.lost == 0 and r.wrong == 0 for r in run.reports) else 1


def report(summaries: list[dict], args: argparse.Namespace, cluster: str, title: str) -> int:
    """Print the table and write the JSON (one shape for any number of agents); 0 if every output was
    exact and nothing lost or duplicated."""
    print_table(summaries, title)
    console.print(f"every request: {args.out} (a CSV per agent, and TensorBoard logs)")
    if args.json:
        write_json(args.json, {"model": args.model, "cluster": cluster, "agents": summaries}, console)
    ok = all(s["outputs_match"] and s["lost"] == 0 and s["duplicated"] == 0 for s in summaries)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.time()

    def work() -> int:
        spec = load_cluster(args.cluster, bandwidth_cap=args.spec_cap_mbps)
        if args.streams:
            return serve_streams_file(args, spec)
        summaries = serve_agents(args, spec)
        title = f"{args.model} served on {spec.name} ({time.time() - started:.0f} s)"
        return report(summaries, args, spec.name, title)

    served = None if args.streams else f"the requests served so far are in {args.out} (a CSV per planner)"
    return reporting_user_errors(work, console, kept=served)


if __name__ == "__main__":
    sys.exit(main())
