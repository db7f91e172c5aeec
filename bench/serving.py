"""Live serving under stress: adaptation to a bandwidth collapse, worker kills, and memory over time.

  collapse  every link of a 10-device mesh0-like cluster drops from 20 to 2 Mbit/s for 30 s; VGG-16 is
            served by the same planner adaptively and with one plan chosen at the start (--static),
            side by side on fresh clusters under the same trace. Prints p95 latency of both and their
            ratio (target <= 0.6), and how many requests after the drop the adaptive run switched plan
            (target <= 2).
  chaos     N requests of the tiny model on the 10-device mesh while 3 workers are killed and restarted;
            prints completed / lost / duplicated (target: 0 lost).
  soak      serves the tiny model for --minutes and prints controller and worker RSS at the start
            (after warm-up) and the end (target: growth <= 5%).

Rerun: python bench/serving.py collapse [--agent optimal] | chaos [--requests 1000] | soak [--minutes 30]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import psutil
from rich.console import Console

from agents import make_planner
from agents.serving import Decider, ServeOptions, serve
from env.cost_model import Objective
from env.network import DynamicsConfig, NetworkState
from runtime import models
from runtime.cluster import LocalCluster
from runtime.graph import LayerGraph
from runtime.spec import load_cluster

ROOT = Path(__file__).resolve().parents[1]
MESH0 = ROOT / "configs" / "clusters" / "mesh0.yaml"
console = Console()


def setup(model_name: str):
    spec = load_cluster(MESH0)
    model = models.build(model_name)
    graph = LayerGraph.from_model(model, models.input_shape(model_name), model_name)
    return spec, model, graph


def collapse(args) -> None:
    spec, model, graph = setup("vgg16_bn")
    drop = {
        "kind": "step_drop",
        "high": 20.0,
        "low": 2.0,
        "t_drop": args.drop_at,
        "drop_len": 30.0,
        "duration": 3600.0,
    }
    world = NetworkState.sample(
        spec,
        DynamicsConfig.parse({"links": {"default": drop}, "scale_to_spec": False}),
        np.random.default_rng(0),
    )
    links = {(link.a, link.b): world.link_schedule(link.a, link.b) for link in spec.links}
    reports, records = {}, {}
    for static in (False, True):
        decide = Decider(make_planner(args.agent, graph=graph, spec=spec), graph, Objective())
        options = ServeOptions(requests=10_000, duration_s=args.seconds, static=static, replan_every=1000)
        label = f"{args.agent} ({'static' if static else 'adaptive'})"
        with LocalCluster(spec, model="vgg16_bn", link_schedules=links) as cluster:
            records[static] = []
            reports[static] = serve(
                cluster,
                model,
                decide,
                options,
                agent=label,
                console=console,
                on_result=records[static].append,
            )
    for static, report in reports.items():
        s = report.summary()
        console.print(
            f"{report.agent:24s} requests {s['completed']:3d}  mean {s['latency_mean_s']:.2f} s  "
            f"p95 {s['latency_p95_s']:.2f} s  replans {s['replans']}  outputs exact {s['outputs_match']}"
        )
        console.print(
            "  t(s):latency(s), * = new plan: "
            + " ".join(
                f"{r.time_s:.0f}:{r.latency_s:.1f}{'*' if r.replanned else ''}" for r in records[static]
            )
        )
    adaptive, static = reports[False].summary(), reports[True].summary()
    console.print(
        f"p95 adaptive / static = {adaptive['latency_p95_s'] / static['latency_p95_s']:.2f} (target <= 0.6)"
    )
    after = [r for r in records[False] if r.time_s >= args.drop_at]
    switched = next((i + 1 for i, r in enumerate(after) if r.replanned), None)
    console.print(f"adaptive run switched plan after request {switched} of the collapse (target <= 2)")


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
    c.add_argument("--agent", default="optimal")
    c.add_argument("--seconds", type=float, default=120.0, help="serving time per run")
    c.add_argument("--drop-at", type=float, default=40.0)
    k = sub.add_parser("chaos")
    k.add_argument("--requests", type=int, default=1000)
    s = sub.add_parser("soak")
    s.add_argument("--minutes", type=float, default=5.0)
    args = parser.parse_args()
    {"collapse": collapse, "chaos": chaos, "soak": soak}[args.command](args)


if __name__ == "__main__":
    main()
