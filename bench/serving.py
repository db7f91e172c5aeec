"""Live serving under stress: adaptation to a bandwidth collapse, worker kills, and memory over time.

  collapse  the collapse scenario (configs/scenarios/collapse.yaml): every link of a 10-device mesh0-like
            cluster drops from 20 to 2 Mbit/s for 30 s (``--drop-len``), ``--drop-at`` s into the run; VGG-16 is
            served by each planner adaptively and with the one plan it chose at the start (static), side
            by side on fresh clusters under the same trace. Prints every run's p95 latency, each adaptive
            run's p95 over every static one (target <= 0.6), and how many requests after the drop it
            switched plan (target <= 2), and the latencies of the requests it rescued (restarted on a new
            plan while they ran). Both loops by default (``--loops closed,open``): closed loop, the next
            request enters when the last is done, so a slow plan also issues fewer requests and its tail
            weighs less in its p95 (the table shows how many requests each run had inside the collapse);
            open loop, a request arrives every ``--arrival-every`` s (5) and its latency counts from its
            arrival. ``--oracle`` adds a run of the first planner told the emulated world's exact present
            (what perfect link telemetry would reach); ``--no-rescue`` turns rescues off; ``--out DIR``
            keeps every run's requests as CSV, each one's wait for the cluster apart from its service time
            (a slow run can be read from its own records).
  plans     the same collapse world, planned offline: each planner's plan for the world's exact snapshot
            before, at and during the drop, with every device at a few speed factors (0.4-1), priced by the
            cost model. Shows how far a
            policy's collapse plans are from the optimiser's (``ppo-topK:PATH`` with K = the number of
            actions is the best its action list holds), without a live run's noise.
  streams   two cameras (devices 8 and 1 of mesh0, the sink 4), ``--fps`` each, open loop, while one
            helper's radio fades (``--world fade``, the default: every link of the helper with the largest
            share of both plans falls from its spec rate to ``--fade-mbps``, 0.2, at ``--drop-at`` for
            ``--drop-len`` s; a board moved behind a wall) or through the collapse above (``--world
            collapse``). Each stream is planned alone by the robust optimiser on the links before the
            drop, then served with its lane kept on that plan (static: re-planned only if a worker dies)
            and re-planned lane by lane as the links move (adaptive: serving/streams.py, ``Adaptation``),
            side by side on fresh clusters under the same trace, each at the dilation automatic for this
            host. Prints per run and stream p50 and p95 latency (from each frame's arrival), SLO misses,
            lost and wrong frames, re-plans and the lowest emulation fidelity, and each stream's adaptive
            p50 and p95 over its static ones.
  chaos     N requests of the tiny model on the 10-device mesh while 3 workers are killed and restarted;
            prints completed / lost / duplicated (target: 0 lost).
  soak      serves the tiny model for --minutes and prints controller and worker RSS at the start
            (after warm-up) and the end (target: growth <= 5%).

Rerun: python -m bench.serving collapse [--agents optimal,ppo:PATH] [--loops closed,open] [--oracle]
                                        [--network kernel] [--out DIR]
       | plans [--agents optimal,ppo:PATH,ppo-top40:PATH] | chaos [--requests 1000] | soak [--minutes 30]
       | streams [--world fade|collapse] [--fade-mbps 0.2] [--fps 0.2] [--frames 14] [--slo 10]
                 [--drop-at 15] [--drop-len 30]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import psutil
import torch
from rich.table import Table

from agents import make_planner, planner_label
from cli import flags
from cli.errors import USER_ERRORS
from cli.output import script_console
from cli.scenarios import SCENARIOS, load_scenario, timed_drop
from cli.worlds import build_world
from env.cost_model import CostModel, Objective
from env.network import NetworkState
from env.profiles import host_profile, pacing
from env.snapshot import Snapshot
from env.telemetry import LiveView
from runtime import models
from runtime.cluster import LocalCluster
from runtime.controller import Controller
from runtime.graph import LayerGraph
from runtime.spec import load_cluster
from serving.loop import ServeOptions, serve
from serving.metrics import MetricsWriter
from serving.policies import Decider
from serving.records import RequestLog
from serving.streams import Adaptation, StreamSpec, plan_streams, replanner, serve_streams

ROOT = Path(__file__).resolve().parents[1]
MESH0 = ROOT / "configs" / "clusters" / "mesh0.yaml"
PPO_POLICY = ROOT / "agents" / "pretrained" / "vgg16_mesh.zip"
console = script_console()


def setup(model_name: str):
    spec = load_cluster(MESH0)
    model = models.build(model_name)
    graph = LayerGraph.from_model(model, models.input_shape(model_name), model_name)
    return spec, model, graph


def profiled(graph: LayerGraph, spec) -> tuple[CostModel, dict]:
    """The cost model on this host's profile of the model, and the cluster options that pace the emulated
    devices by it: what every planner plans on and the live runs do (env/profiles.py)."""
    profile = host_profile(graph, same_host=True, say=console.print)
    return CostModel(graph, spec, profile), pacing(profile)


def collapse_world(spec, drop_at: float, drop_len: float | None = None) -> NetworkState:
    """The collapse scenario's world (configs/scenarios/collapse.yaml: every link 20 -> 2 Mbit/s), its drop
    moved to ``drop_at`` s for ``drop_len`` s (None: the scenario's); the same world for every run."""
    scenario = load_scenario("collapse")
    dynamics = timed_drop(scenario.dynamics, drop_at, drop_len)
    return build_world(spec, dynamics, seed=0, origin="configs/scenarios/collapse.yaml", base_dir=SCENARIOS)


def oracle(world: NetworkState, ctl: Controller) -> Callable[[], Snapshot]:
    """Live snapshots whose link bandwidths are the emulated world's exact present (not its future): the
    bound for what better link telemetry could gain. Device speeds stay measured: an emulated device's
    fidelity is below 1 when the host cannot keep up, and the world does not know by how much."""
    live = LiveView(ctl.spec, ctl)

    def snapshot() -> Snapshot:
        exact = world.snapshot(ctl.now(), window_s=1.0)
        return replace(live.snapshot(), link_mbps=exact.link_mbps, link_history=exact.link_history)

    return snapshot


def collapse(args) -> None:
    spec, model, graph = setup("vgg16_bn")
    world = collapse_world(spec, args.drop_at, args.drop_len)
    links = {(link.a, link.b): world.link_schedule(link.a, link.b) for link in spec.links}
    cost, paced = profiled(graph, spec)
    agents = args.agents.split(",")
    loops = args.loops.split(",")
    if unknown := set(loops) - {"closed", "open"}:
        raise SystemExit(f"--loops: unknown loop(s) {sorted(unknown)} (closed, open)")
    for agent in agents:  # a bad name fails now, not after the first runs
        make_planner(agent, graph=graph, spec=spec, cost_model=cost)
    runs = [(agent, mode) for agent in agents for mode in ("adaptive", "static")]
    if args.oracle:
        runs.append((agents[0], "oracle"))
    console.print(f"collapse at t={args.drop_at:g} s for {args.drop_len:g} s, {args.seconds:g} s per run")
    results = {}
    for loop in loops:
        every = args.arrival_every if loop == "open" else None
        console.print(
            f"[bold]{loop} loop[/bold]"
            + (f": a request every {every:g} s, latency counted from its arrival" if every else "")
        )
        for agent, mode in runs:
            decide = Decider(make_planner(agent, graph=graph, spec=spec, cost_model=cost), graph, Objective())
            label = f"{planner_label(agent)} ({mode})"
            with LocalCluster(
                spec, model="vgg16_bn", link_schedules=links, network=args.network, **paced
            ) as cluster:
                observe = oracle(world, cluster.controller) if mode == "oracle" else None
                options = collapse_options(mode, every, args)
                sink = MetricsWriter(args.out, f"{loop}-{planner_label(agent)}-{mode}") if args.out else None
                try:
                    results[loop, agent, mode] = serve_collapse(
                        cluster, model, decide, options, label, observe, sink
                    )
                finally:
                    if sink is not None:
                        sink.close()
    console.print(collapse_table(results, args))
    console.print(
        "Closed loop, a slow plan issues fewer requests: the static run has only a few inside the collapse "
        "(last column), so its p95 interpolates between its 2nd and 3rd slowest; the open loop counts every "
        "arrival's wait (how a serving system's tail is measured)."
    )


def collapse_options(mode: str, every: float | None, args) -> ServeOptions:
    """Serving options of a collapse run in ``mode`` (adaptive, static or oracle), open loop if ``every``."""
    return ServeOptions(
        requests=10_000,
        duration_s=args.seconds,
        static=mode == "static",
        replan_every=1000,
        arrival_every_s=every,
        rescue_margin=None if args.no_rescue else ServeOptions.rescue_margin,
        # t=0 of the trace at the first request: starting ten workers, loading a policy and
        # compiling the cost model can take longer than --drop-at on a loaded host
        restart_clock=True,
    )


def serve_collapse(
    cluster,
    model,
    decide: Decider,
    options: ServeOptions,
    label: str,
    observe,
    sink: MetricsWriter | None = None,
):
    """One run through the collapse, printed; its summary and records (also handed to ``sink``)."""
    records = []

    def keep(record: RequestLog) -> None:
        records.append(record)
        if sink is not None:
            sink(record)

    report = serve(
        cluster,
        model,
        decide,
        options,
        agent=label,
        console=console,
        on_result=keep,
        observe=observe,
    )
    s = report.summary()
    console.print(
        f"{label:24s} requests {s['completed']:3d}  mean {s['latency_mean_s']:.2f} s  "
        f"p95 {s['latency_p95_s']:.2f} s  replans {s['replans']}  rescued {s['rescued']}  "
        f"outputs exact {s['outputs_match']}"
    )
    console.print(
        "  t(s):latency(s), * = new plan, r = rescued: "
        + " ".join(
            f"{r.time_s:.0f}:{r.response_s:.1f}{'*' if r.replanned else ''}{'r' * r.rescues}" for r in records
        )
    )
    return s, records


def collapse_table(results: dict, args) -> Table:
    """Each adaptive (and oracle) run against the static runs of its loop."""
    table = Table(title="collapse: p95 adaptive / static (target <= 0.6), reaction (target <= 2)")
    for column in ("loop", "planner", "p95 s", "static p95 s", "ratio", "vs other statics", "reaction"):
        table.add_column(column)
    table.add_column("rescued: latency s")
    table.add_column("in collapse (adaptive/static)")
    for (loop, agent, mode), (s, records) in results.items():
        if mode == "static":
            continue
        static_summary, static_records = results[loop, agent, "static"]
        own = static_summary["latency_p95_s"]
        others = ", ".join(
            f"{s['latency_p95_s'] / st['latency_p95_s']:.2f} vs {planner_label(a)}"
            for (lp, a, m), (st, _) in results.items()
            if lp == loop and m == "static" and a != agent
        )
        after = [r for r in records if r.time_s >= args.drop_at]
        switched = next((i + 1 for i, r in enumerate(after) if r.replanned), None)
        table.add_row(
            loop,
            f"{planner_label(agent)} ({mode})",
            f"{s['latency_p95_s']:.2f}",
            f"{own:.2f}",
            f"{s['latency_p95_s'] / own:.2f}",
            others,
            f"request {switched}",
            " ".join(f"{r.response_s:.1f}" for r in records if r.rescues) or "-",
            f"{in_collapse(records, args.drop_at, args.drop_len)}/{in_collapse(static_records, args.drop_at, args.drop_len)}",
        )
    return table


def plans(args) -> None:
    spec, _, graph = setup("vgg16_bn")
    world = collapse_world(spec, args.drop_at)
    cost, _ = profiled(graph, spec)
    agents = args.agents.split(",")
    planners = [make_planner(agent, graph=graph, spec=spec, cost_model=cost) for agent in agents]
    moments = {"before": args.drop_at - 10, "at the drop": args.drop_at + 1, "8 s into it": args.drop_at + 15}
    table = Table(title="collapse world, exact snapshots: predicted latency (s) of each planner's plan")
    for column in ("device speed", "moment", *map(planner_label, agents)):
        table.add_column(column)
    for speed in (0.4, 0.55, 0.7, 1.0):
        for moment, t in moments.items():
            snap = world.snapshot(t, window_s=1.0)
            snap = replace(snap, speed=dict.fromkeys(snap.speed, speed))
            table.add_row(
                f"{speed:g}",
                moment,
                *(f"{cost.latency(p.plan(snap, graph, Objective()), snap):.2f}" for p in planners),
            )
    console.print(table)


def in_collapse(records, drop_at: float, drop_len: float) -> int:
    """Requests that ran at least partly inside the collapse (their end minus their latency)."""
    return sum(1 for r in records if r.time_s > drop_at and r.time_s - r.response_s < drop_at + drop_len)


CAMERAS = ("8", "1")  # mesh0's source and a device three hops from the sink, as in bench.streams


def streams(args) -> None:
    spec, model, graph = setup("vgg16_bn")
    cost, paced = profiled(graph, spec)
    planner = make_planner("optimal", graph=graph, spec=spec, cost_model=cost)
    cameras = [
        StreamSpec(
            name=f"camera {d}", source=d, sink=spec.sink, model="vgg16_bn", fps=args.fps, slo_s=args.slo
        )
        for d in CAMERAS
    ]
    if args.world == "collapse":
        world = collapse_world(spec, args.drop_at, args.drop_len)
        before = world.snapshot(0.0, window_s=1.0)  # the links before the drop
    else:
        before = NetworkState.static(spec).snapshot(0.0)
    planned = plan_streams(cameras, "independent", planner, cost, before, graph)
    for s, p in zip(cameras, planned.plans, strict=True):
        console.print(f"{s.name}: {p.describe()} ({cost.latency(p, before):.2f} s predicted before the drop)")
    if args.world == "fade":
        helper = busiest_helper(planned.plans)
        world = fade_world(spec, helper, args.fade_mbps, args.drop_at, args.drop_len)
        what = f"every link of device {helper} falls to {args.fade_mbps:g} Mbit/s"
    else:
        what = "every link falls from 20 to 2 Mbit/s"
    links = {(link.a, link.b): world.link_schedule(link.a, link.b) for link in spec.links}
    console.print(
        f"{what} at t={args.drop_at:g} s for {args.drop_len:g} s; {args.frames} frames per camera at "
        f"{args.fps:g} frames/s"
    )
    runs = {}
    for mode in ("static", "adaptive"):
        with LocalCluster(spec, model="vgg16_bn", link_schedules=links, dilation=None, **paced) as cluster:
            ctl = cluster.controller
            warm_lanes(ctl, cameras, planned.plans)
            run = serve_streams(
                ctl,
                cameras,
                planned.plans,
                [args.fps] * len(cameras),
                args.frames,
                model,
                replanners={
                    s.name: replanner(s, planner, before, graph, p.devices)
                    for s, p in zip(cameras, planned.plans, strict=True)
                },
                adaptation=Adaptation(planner, graph) if mode == "adaptive" else None,
                restart_clock=True,  # t=0 of the trace at the first frame
            )
            fidelity = min(ctl.fidelity.per_device().values(), default=float("nan"))
            runs[mode] = (run, fidelity, cluster.dilation)
        for at, what in run.events:
            console.print(f"  {mode} at {at:.1f} s: {what}")
    console.print(streams_table(runs))


def busiest_helper(plans) -> str:
    """The device, no plan's source or sink, with the largest share of the plans' work (shares summed
    over each plan's stages, weighted by their units)."""
    ends = {p.source for p in plans} | {p.sink for p in plans}
    load: dict[str, float] = {}
    for p in plans:
        for st in p.stages:
            total = sum(a.share for a in st.assignments)
            for a in st.assignments:
                load[a.device] = load.get(a.device, 0.0) + (st.end - st.start) * a.share / total
    return max((d for d in load if d not in ends), key=lambda d: (load[d], d))


def fade_world(spec, device: str, mbps: float, drop_at: float, drop_len: float) -> NetworkState:
    """Every link of ``device`` falling from its spec rate to ``mbps`` at ``drop_at`` for ``drop_len`` s;
    the other links at their spec rates."""
    fading = {
        f"{link.a}-{link.b}": {
            "kind": "step_drop",
            "high": link.mbps,
            "low": mbps,
            "t_drop": drop_at,
            "drop_len": drop_len,
            "duration": 3600.0,
        }
        for link in spec.links
        if device in (link.a, link.b)
    }
    dynamics = {"links": {"per_link": fading}, "scale_to_spec": False}
    return build_world(spec, dynamics, seed=0, origin=f"device {device}'s radio fading")


def warm_lanes(ctl: Controller, cameras, plans) -> None:
    """One frame per camera on its plan, waited for: the workers' first bands are not part of a run."""
    x = torch.zeros(ctl.input_shape)
    out = {
        ctl.submit(x, lane=s.name) for s, p in zip(cameras, plans, strict=True) if ctl.deploy(p, lane=s.name)
    }
    while out:
        out -= {r.rid for r in ctl.collect(0.1)}


def streams_table(runs: dict) -> Table:
    """Per run and camera its latency figures, and the adaptive run's over the static one's."""
    table = Table(title="cameras through the drop: static and adaptive lanes (latency from each arrival)")
    for column in (
        "lanes",
        "camera",
        "p50 s",
        "p95 s",
        "SLO misses",
        "lost",
        "wrong",
        "re-plans",
        "fidelity min",
    ):
        table.add_column(column)
    table.add_column("p50 / static", style="bold")
    table.add_column("p95 / static", style="bold")
    static = {r.name: r for r in runs["static"][0].reports}
    for mode, (run, fidelity, dilation) in runs.items():
        for r in run.reports:
            replans = sum(what.startswith(f"{r.name}:") for _, what in run.events)
            ratios = (
                ("-", "-")
                if mode == "static"
                else (
                    f"{r.p50_s / static[r.name].p50_s:.2f}",
                    f"{r.p95_s / static[r.name].p95_s:.2f}",
                )
            )
            table.add_row(
                f"{mode} (D {dilation:g})",
                r.name,
                f"{r.p50_s:.2f}",
                f"{r.p95_s:.2f}",
                str(r.slo_misses),
                str(r.lost),
                str(r.wrong),
                str(replans),
                f"{fidelity:.3f}",
                *ratios,
            )
    return table


def chaos(args) -> None:
    spec, model, graph = setup("tiny")
    decide = Decider(make_planner("deepslicing", graph=graph, spec=spec), graph, Objective())
    victims = [d for d in spec.device_ids if d not in (spec.source, spec.sink)][:3]
    events = []
    for k, device in enumerate(victims):
        at = (k + 1) * args.requests // 4
        events += [(at, "kill", device), (at + args.requests // 8, "restart", device)]
    options = ServeOptions(requests=args.requests, replan_every=50, chaos=events)
    with LocalCluster(spec, model="tiny") as cluster:
        report = serve(cluster, model, decide, options, agent="chaos", console=console)
    s = report.summary()
    console.print(
        f"{s['requests']} requests, {s['worker_kills']} worker kills: completed {s['completed']}, "
        f"lost {s['lost']}, duplicated {s['duplicated']}, outputs exact {s['outputs_match']}, replans {s['replans']}"
    )


def soak(args) -> None:
    spec, model, graph = setup("tiny")
    decide = Decider(make_planner("deepslicing", graph=graph, spec=spec), graph, Objective())
    controller_rss, worker_rss = [], []

    def sample(_record) -> None:
        if _record.index % 200 == 0:
            controller_rss.append(psutil.Process().memory_info().rss)
            stats = cluster.controller.ping(1.0)
            worker_rss.append(sum(s.stats.get("rss_bytes", 0) for s in stats.values()))

    options = ServeOptions(requests=10**9, duration_s=args.minutes * 60, replan_every=25)
    with LocalCluster(spec, model="tiny") as cluster:
        serve(cluster, model, decide, options, agent="soak", console=console, on_result=sample)
    warm = len(controller_rss) // 10  # skip warm-up: caches and allocator pools fill first
    for name, series in (("controller", controller_rss), ("workers (sum)", worker_rss)):
        start, end = series[warm], series[-1]
        console.print(
            f"{name:14s} RSS {start / 2**20:8.1f} MB -> {end / 2**20:8.1f} MB ({end / start - 1:+.1%})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collapse")
    policy = PPO_POLICY.relative_to(ROOT)
    flags.add_agents(
        c, f"optimal,ppo:{policy}", help="comma-separated planners, each served adaptively and static"
    )
    c.add_argument("--oracle", action="store_true", help="also serve the first agent on exact snapshots")
    c.add_argument("--loops", default="closed,open", help="closed, open, or both (comma-separated)")
    c.add_argument(
        "--arrival-every", type=float, default=5.0, help="open loop: a request every this many seconds"
    )
    c.add_argument("--no-rescue", action="store_true", help="adaptive runs never restart a running request")
    c.add_argument("--seconds", type=float, default=120.0, help="serving time per run")
    c.add_argument("--drop-at", type=float, default=40.0)
    flags.add_network(c)
    c.add_argument("--drop-len", type=float, default=30.0, help="seconds the collapse lasts")
    c.add_argument(
        "--out",
        type=Path,
        help="write each run's requests here (CSV, TensorBoard): arrival wait and service time apart",
    )
    p = sub.add_parser("plans")
    flags.add_agents(p, f"optimal,ppo:{policy},ppo-top40:{policy}", help="comma-separated planners")
    p.add_argument("--drop-at", type=float, default=40.0)
    t = sub.add_parser("streams")
    t.add_argument("--world", choices=("fade", "collapse"), default="fade", help="what the links do")
    t.add_argument("--fade-mbps", type=flags.positive, default=0.2, help="fade: the helper's links' rate")
    t.add_argument("--fps", type=flags.positive, default=0.2, help="frames per second per camera")
    t.add_argument("--frames", type=flags.at_least_one, default=14, help="frames per camera")
    t.add_argument("--slo", type=flags.positive, default=10.0, help="p95 latency SLO in s")
    t.add_argument("--drop-at", type=float, default=15.0)
    t.add_argument("--drop-len", type=float, default=30.0, help="seconds the collapse lasts")
    k = sub.add_parser("chaos")
    k.add_argument("--requests", type=flags.at_least_one, default=1000)
    s = sub.add_parser("soak")
    s.add_argument("--minutes", type=flags.positive, default=5.0)
    args = parser.parse_args()
    try:
        {"collapse": collapse, "plans": plans, "streams": streams, "chaos": chaos, "soak": soak}[
            args.command
        ](args)
    except USER_ERRORS as exc:  # e.g. a misspelt --agents name or a policy file that is not one
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
