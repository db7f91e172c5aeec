"""Serve inference on a cluster with a planner that adapts online; or run the end-to-end demo.

  python deploy.py --cluster CONFIG --model NAME --agent ppo:PATH|optimal|disnet|... \
      [--requests N | --duration S] [--arrival-every S | --fps F]
      [--traces DIR|FILE|synthetic [--trace-mode sample|replay] | --collapse] [--bandwidth-cap MBPS]
      [--static] [--chaos] [--json OUT] [--cost profile|flops] [--profile FILE] [--network emulated|kernel]
  python deploy.py --demo
  python deploy.py --cluster CONFIG --streams STREAMS.yaml [--chaos] [--json OUT]   (several cameras)

By default the cluster is a local emulated one (one worker process per device; links follow the traces).
Closed loop by default (the next request enters when the cluster has room); ``--arrival-every S`` or
``--fps F`` serve a camera instead: a request arrives every S seconds whatever the cluster does, and its
latency counts from its arrival (waiting included). ``--trace-mode sample`` gives every link its own piece
of the traces (a random file of a folder, from a random offset, rescaled to the link's spec bandwidth);
``replay`` plays one recorded trace file on every link from t=0 as recorded (looping at its end), so a
recorded collapse collapses every link at once.
``--demo`` serves VGG-16 on a local 10-device cluster like disnet-mesh0 with the shipped PPO policy, then
with the analytic optimiser and two baselines, each replaying the same synthetic link traces from t=0
(the cluster's emulation clock restarts per planner), checks every output against the unsplit model and
prints the comparison.

Planners plan on this host's per-unit compute profile of the model (env/profiles.py: measured through a
worker once and cached; ``--profile FILE`` for another), or with ``--cost flops`` on FLOPs alone; the
emulated devices are paced by the profile (this host's profile with ``--cost flops``). Each run reports
every device's emulation fidelity (achieved over nominal compute speed, runtime/fidelity.py;
``fidelity_min`` in the JSON): below 0.95 the host could not keep up. Serving runs undilated (D = 1):
the live view's telemetry is read at wall-clock rates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from agents import PlannerError, make_planner, planner_label
from env.cost_model import CostModel, Objective
from env.dynamics import DynamicsConfig
from env.network import NetworkState
from env.profiles import ProfileError, host_profile, pacing_gflops, resolve_profile
from env.snapshot import NetworkError
from env.traces import TraceError
from runtime import models
from runtime.cluster import NETWORKS, ClusterError, LocalCluster
from runtime.fidelity import print_fidelity
from runtime.graph import LayerGraph
from runtime.spec import SpecError, load_cluster
from serving.deploy_streams import deploy_streams
from serving.loop import ServeOptions, serve
from serving.metrics import MetricsWriter
from serving.policies import Decider
from serving.streams import StreamsFileError, load_streams

ROOT = Path(__file__).resolve().parent
DEMO_POLICY = ROOT / "agents" / "pretrained" / "vgg16_mesh.zip"
console = Console(width=None if sys.stdout.isatty() else 120)


def world_for(spec, args) -> NetworkState:
    """The link conditions the emulated cluster follows: constant, a trace folder, or a collapse."""
    if args.collapse:
        links = {
            "kind": "step_drop",
            "high": 20.0,
            "low": 2.0,
            "t_drop": args.collapse_at,
            "drop_len": 30.0,
            "duration": 600.0,
        }
        dynamics = {"links": {"default": links}, "scale_to_spec": False, "seed": args.seed}
    elif args.traces == "synthetic":  # every link wanders around its spec bandwidth
        walk = {"kind": "random_walk", "mean": 1.0, "sigma": 0.25, "lo": 0.2, "hi": 1.5, "duration": 600.0}
        dynamics = {"links": {"default": walk}, "seed": args.seed}
    elif args.traces and args.trace_mode == "replay":  # as recorded, from t=0, on every link
        recorded = {"kind": "file", "path": args.traces, "random_offset": False}
        dynamics = {
            "links": {"default": recorded},
            "scale_to_spec": False,
            "bandwidth_cap_mbps": args.bandwidth_cap,
            "seed": args.seed,
        }
    elif args.traces:
        dynamics = {"links": {"default": args.traces}, "seed": args.seed}
    else:
        return NetworkState.static(spec)
    return NetworkState.sample(
        spec, DynamicsConfig.parse(dynamics, origin="deploy.py"), np.random.default_rng(args.seed)
    )


def chaos_schedule(spec, requests: int, kills: int = 3) -> list[tuple[int, str, str]]:
    """Kill ``kills`` workers (never source or sink) spread over the run, each restarted a little later."""
    victims = [d for d in spec.device_ids if d not in (spec.source, spec.sink)]
    events = []
    for k in range(kills):
        at = (k + 1) * requests // (kills + 1)
        device = victims[k % len(victims)]
        events += [(at, "kill", device), (at + max(2, requests // (4 * kills)), "restart", device)]
    return events


def run_agent(agent: str, cluster: LocalCluster, model, cost: CostModel, args, out_dir: Path | None) -> dict:
    """One serving run of ``agent`` planning on ``cost``, with the emulation clock (and so the traces) from
    t=0."""
    spec, graph = cluster.spec, cost.graph
    planner = make_planner(agent, cost_model=cost)
    fallback = make_planner("optimal", cost_model=cost)
    decide = Decider(planner, graph, Objective(args.objective, args.energy_weight), fallback)
    options = ServeOptions(
        requests=args.requests,
        duration_s=args.duration,
        replan_every=args.replan_every,
        static=args.static,
        window=args.window,
        arrival_every_s=args.arrival_every,
        chaos=chaos_schedule(spec, args.requests) if args.chaos else [],
        seed=args.seed,
        replan_margin=args.replan_margin,
        restart_clock=True,  # every planner meets the same traces from its first request
    )
    label = planner_label(agent)
    writer = MetricsWriter(out_dir, label.replace(":", "_")) if out_dir else None
    try:
        report = serve(cluster, model, decide, options, agent=label, console=console, on_result=writer)
    finally:
        if writer is not None:
            writer.close()
    summary = report.summary()
    summary["rss_mb"] = report.rss_mb
    fidelity = cluster.controller.fidelity.per_device()
    print_fidelity(fidelity, cluster.dilation, console, f" of {label}")
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
            f"{s['latency_mean_s']:.3f}",
            f"{s['latency_p50_s']:.3f}",
            f"{s['latency_p95_s']:.3f}",
            f"{s['energy_mean_j']:.2f}",
            "-" if s["fidelity_min"] is None else f"{s['fidelity_min']:.3f}",
        )
    console.print(table)


def positive(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def margin(text: str) -> float | None:
    """An argparse type: a share >= 0, or 'off'."""
    if text == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'off'") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="the end-to-end demo (ignores the other options)")
    parser.add_argument("--cluster", help="cluster YAML or disnet-mesh/1 JSON")
    parser.add_argument("--model", default="vgg16_bn", choices=models.MODEL_NAMES)
    parser.add_argument(
        "--agent",
        default="optimal",
        help="ppo:PATH, ppo-top3:PATH, ppo-polish:PATH, optimal, disnet, modnn, ... (comma list ok)",
    )
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument(
        "--duration", type=float, default=None, help="serve for S seconds (at most --requests)"
    )
    arrivals = parser.add_mutually_exclusive_group()
    arrivals.add_argument(
        "--arrival-every",
        type=positive,
        default=None,
        metavar="S",
        help="open loop: a request arrives every S seconds; latency counts from its arrival",
    )
    arrivals.add_argument("--fps", type=positive, default=None, help="open loop at F requests per second")
    parser.add_argument(
        "--traces", default=None, help="trace file or folder the links follow, or 'synthetic'"
    )
    parser.add_argument(
        "--trace-mode",
        choices=("sample", "replay"),
        default="sample",
        help="sample: each link a random piece of the traces, rescaled to its spec bandwidth; "
        "replay: the one --traces FILE on every link from t=0, as recorded",
    )
    parser.add_argument("--collapse", action="store_true", help="links drop 20 -> 2 Mbit/s for 30 s")
    parser.add_argument("--collapse-at", type=float, default=20.0, help="seconds into the run")
    parser.add_argument(
        "--bandwidth-cap",
        type=positive,
        default=None,
        metavar="MBPS",
        help="cap every link of the cluster file at MBPS Mbit/s (what planners assume before measuring; "
        "sampled traces are rescaled to the capped bandwidth, so they may exceed it for a while); "
        "with --trace-mode replay the replayed trace is also capped at MBPS at every instant",
    )
    parser.add_argument("--static", action="store_true", help="plan once at the start, never again")
    parser.add_argument("--chaos", action="store_true", help="kill and restart 3 workers during the run")
    parser.add_argument("--replan-every", type=int, default=10)
    parser.add_argument(
        "--replan-margin",
        type=margin,
        default=ServeOptions.replan_margin,
        help="a new plan replaces the one in force only if, priced on the same snapshot, it gains more "
        "than this share of its score plus the swap's measured cost; 'off': any different plan (default "
        "%(default)s)",
    )
    parser.add_argument("--window", type=int, default=1, help="requests in flight (pipelining)")
    parser.add_argument("--objective", choices=("latency", "energy", "weighted"), default="latency")
    parser.add_argument("--energy-weight", type=float, default=0.0)
    parser.add_argument(
        "--network",
        choices=NETWORKS,
        default="emulated",
        help="who shapes the links: each worker's radio timer (emulated), or tc on veths between one network namespace per worker (kernel; root only)",
    )
    parser.add_argument(
        "--cost", choices=("profile", "flops"), default="profile", help="cost model to plan on"
    )
    parser.add_argument("--profile", default=None, help="compute profile JSON (default: this host's, cached)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/serve", help="CSV and TensorBoard metrics go here")
    parser.add_argument("--json", default=None)
    parser.add_argument("--streams", default=None, help="serve the concurrent streams of this YAML file")
    args = parser.parse_args(argv)
    if args.demo:
        args.cluster = str(ROOT / "configs" / "clusters" / "mesh0.yaml")
        args.model, args.requests, args.bandwidth_cap, args.collapse = "vgg16_bn", 8, 15.0, False
        args.agent = f"ppo:{DEMO_POLICY},optimal,disnet,deepslicing"
        args.traces = "synthetic"
    if not args.cluster:
        parser.error("--cluster is required (or use --demo)")
    if args.fps is not None:
        args.arrival_every = 1.0 / args.fps
    if args.arrival_every is not None and args.window != 1:
        parser.error("open-loop serving (--arrival-every/--fps) runs one request at a time (--window 1)")
    if args.collapse and args.traces:
        parser.error("--collapse and --traces both set the links: choose one")
    if args.trace_mode == "replay" and not (args.traces and Path(args.traces).is_file()):
        parser.error("--trace-mode replay needs --traces FILE: one recorded trace file (not a folder)")
    if args.requests < 1 or args.replan_every < 1 or args.window < 1:
        parser.error("--requests, --replan-every and --window must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.time()
    try:
        spec = load_cluster(args.cluster, bandwidth_cap=args.bandwidth_cap)
        if args.streams:
            streams = load_streams(args.streams, spec.device_ids)
            json_path = Path(args.json) if args.json else None
            run = deploy_streams(
                spec,
                streams,
                seed=args.seed,
                chaos=args.chaos,
                out_dir=Path(args.out),
                json_path=json_path,
                console=console,
            )
            return 0 if all(r.lost == 0 and r.wrong == 0 for r in run.reports) else 1
        model = models.build(args.model, seed=args.seed)
        graph = LayerGraph.from_model(model, models.input_shape(args.model), args.model)
        world = world_for(spec, args)
        profile = resolve_profile(graph, args.cost, args.profile, same_host=True, say=console.print)
        cost = CostModel(graph, spec, profile)
        links = {(link.a, link.b): world.link_schedule(link.a, link.b) for link in spec.links}
        with LocalCluster(
            spec,
            model=args.model,
            seed=args.seed,
            link_schedules=links,
            network=args.network,
            host_gflops=pacing_gflops(profile or host_profile(graph, same_host=True, say=console.print)),
        ) as cluster:
            summaries = [
                run_agent(agent, cluster, model, cost, args, Path(args.out))
                for agent in args.agent.split(",")
            ]
    except (
        SpecError,
        PlannerError,
        NetworkError,
        TraceError,
        models.ModelError,
        ClusterError,
        ProfileError,
        StreamsFileError,
    ) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    print_table(summaries, f"{args.model} served on {spec.name} ({time.time() - started:.0f} s)")
    if args.json:
        result = summaries[0] if len(summaries) == 1 else {"agents": summaries}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        console.print(f"wrote {args.json}")
    ok = all(s["outputs_match"] and s["lost"] == 0 and s["duplicated"] == 0 for s in summaries)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
