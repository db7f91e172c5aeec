"""The analytic optimiser's decision time as the cluster and the model grow, and the planner targets.

Three tables, measured in one run (the machine is shared, so times come with CPU seconds and ratios):

1. devices: VGG-16 (bn) at 224 on random meshes of 5..30 devices built like the DISNET evaluation's
   (1.5 links per device, compute rate 1-10 GFLOP/s, links 10-50 Mbit/s capped at 15, the three
   DISNET power classes), three meshes per size; median decision time and cost-model evaluations,
   as a ratio to the 10-device case;
2. model size: tiny (32x32), ResNet-18, VGG-16 (bn) and "deep50" (a ResNet-50-sized plain network:
   an nn.Sequential of 50 3x3 convolutions with batch norm in five resolution levels, 8.5 GFLOPs and
   22 M parameters like ResNet-50's 8.2 GFLOPs and 25.6 M, but 56 cut groups instead of ~19 blocks),
   all at 224 except tiny, on configs/clusters/mesh0.yaml capped at 15 Mbit/s (the mesh0-15 scenario);
   ratio to VGG-16;
3. targets (issue 5): VGG-16 (bn) at 224 on disnet-mesh0 and disnet-mesh1 with 10 and 15 Mbit/s caps,
   predicted by the cost model: the optimiser's latency against MoDNN (with its gather, and the
   peer-to-peer reading), DeepSlicing and DISNET, and its energy under the energy objective against
   MoDNN's. Needs ../shared/scenarios; skipped without it.

Rerun: python -m bench.planners [--sizes 5,10,15,20,25,30] [--meshes 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from tqdm import tqdm

from agents import DeepSlicing, DisnetPlanner, MoDNN, OptimalPlanner
from cli import flags
from cli.output import write_json
from cli.scenarios import load_scenario
from env.cost_model import CostModel, Objective
from env.network import NetworkState
from env.profiles import resolve_profile
from runtime import models
from runtime.graph import LayerGraph
from runtime.spec import ClusterSpec, load_cluster, parse_cluster

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "scenarios"
POWER_CLASSES = [  # the three device classes of the DISNET meshes (W)
    {"compute": 3.8, "transmit": 1.0, "receive": 1.0, "idle": 0.0},
    {"compute": 2.2, "transmit": 0.8, "receive": 0.8, "idle": 0.0},
    {"compute": 1.2, "transmit": 1.1, "receive": 1.1, "idle": 0.0},
]
LATENCY, ENERGY = Objective("latency"), Objective("energy")


def random_mesh(n: int, seed: int, cap: float = 15.0) -> ClusterSpec:
    """A connected random mesh like the DISNET evaluation's: a random spanning tree plus random extra
    links up to 1.5 links per device; source and sink two distinct random devices."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    links = {tuple(sorted((int(order[i]), int(order[rng.integers(i)])))) for i in range(1, n)}
    while len(links) < min(int(1.5 * n), n * (n - 1) // 2):  # a small mesh holds fewer links
        a, b = (int(x) for x in rng.choice(n, size=2, replace=False))
        links.add((min(a, b), max(a, b)))
    devices = {
        str(i): {"compute_rate": int(rng.integers(1, 11)), "power_w": POWER_CLASSES[int(rng.integers(3))]}
        for i in range(n)
    }
    source, sink = (str(int(x)) for x in rng.choice(n, size=2, replace=False))
    data = {
        "format": "disnet-mesh/1",
        "name": f"random{n}-{seed}",
        "devices": devices,
        "links": [[str(a), str(b), int(rng.integers(10, 51))] for a, b in sorted(links)],
        "source": source,
        "sink": sink,
    }
    return parse_cluster(data, origin=data["name"], bandwidth_cap=cap)


def deep50() -> nn.Sequential:
    """A ResNet-50-sized plain CNN: 50 3x3 convolutions (stride-2 stem, then 2/6/16/18/7 per level,
    a 2x max pool after each level), global pooling and a 1000-way linear layer."""
    widths, depths = (32, 56, 112, 224, 448), (2, 6, 16, 18, 7)
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()]
    c = 32
    for width, depth in zip(widths, depths, strict=True):
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            c = width
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000)]
    return nn.Sequential(*layers).eval()


def zoo_graph(name: str, shape: tuple[int, int, int] | None = None) -> LayerGraph:
    return LayerGraph.from_model(models.build(name), shape or models.input_shape(name), name)


def decide(graph: LayerGraph, spec: ClusterSpec, objective: Objective = LATENCY) -> dict:
    """One optimiser decision from a static snapshot: wall and CPU seconds, evaluations, latency."""
    snapshot = NetworkState.static(spec).snapshot(0.0)
    planner = OptimalPlanner(CostModel(graph, spec))
    wall, cpu = time.perf_counter(), time.process_time()
    planner.plan(snapshot, graph, objective)
    stats = planner.last_stats
    return {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "evaluations": stats.evaluations,
        "exhaustive": stats.exhaustive,
        "score": stats.score,
    }


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    out = Table(title=title)
    for col in columns:
        out.add_column(col, justify="right")
    for row in rows:
        out.add_row(*row)
    return out


def devices_sweep(graph: LayerGraph, sizes: list[int], meshes: int) -> list[dict]:
    results = []
    for n in tqdm(sizes, desc="devices"):
        runs = [decide(graph, random_mesh(n, seed)) for seed in range(meshes)]
        results.append(
            {
                "devices": n,
                "wall_s": median_of(runs, "wall_s"),
                "cpu_s": median_of(runs, "cpu_s"),
                "evaluations": median_of(runs, "evaluations"),
            }
        )
    return results


def model_sweep(spec: ClusterSpec, graphs: dict[str, Callable[[], LayerGraph]]) -> list[dict]:
    results = []
    for name, build in tqdm(graphs.items(), desc="models"):
        graph = build()
        run = decide(graph, spec)
        results.append(
            {
                "model": name,
                "groups": len(graph.groups),
                "units": len(graph.units),
                "gflops": graph.total_flops / 1e9,
                **run,
            }
        )
    return results


def targets(graph: LayerGraph) -> list[dict]:
    profile = resolve_profile(graph)  # the default cost model: this host's compute profile
    results = []
    for mesh in ("disnet-mesh0", "disnet-mesh1"):
        for cap in (10.0, 15.0):
            spec = load_cluster(SHARED / f"{mesh}.json", bandwidth_cap=cap)
            snap = NetworkState.static(spec).snapshot(0.0)
            model = CostModel(graph, spec, profile)

            def predict(planner, objective, snap=snap, model=model):
                return model.predict(planner.plan(snap, graph, objective), snap)

            fast, frugal = predict(OptimalPlanner(model), LATENCY), predict(OptimalPlanner(model), ENERGY)
            modnn, p2p = predict(MoDNN(), LATENCY), predict(MoDNN(gather=False), LATENCY)
            results.append(
                {
                    "mesh": mesh,
                    "cap_mbps": cap,
                    "optimal_latency_s": fast.latency_s,
                    "vs_modnn": modnn.latency_s / fast.latency_s,
                    "vs_modnn_p2p": p2p.latency_s / fast.latency_s,
                    "vs_deepslicing": predict(DeepSlicing(), LATENCY).latency_s / fast.latency_s,
                    "vs_disnet": predict(DisnetPlanner(), LATENCY).latency_s / fast.latency_s,
                    "optimal_energy_j": frugal.energy_j,
                    "energy_vs_modnn": modnn.energy_j / frugal.energy_j,
                }
            )
    return results


def devices_table(sweep: list[dict], meshes: int) -> Table:
    ref = next((r for r in sweep if r["devices"] == 10), sweep[0])
    return table(
        f"optimiser decision time vs devices: VGG-16 at 224, random meshes, median of {meshes}",
        ["devices", "wall s", "CPU s", "CPU / 10-device", "evaluations"],
        [
            [
                str(r["devices"]),
                f"{r['wall_s']:.2f}",
                f"{r['cpu_s']:.2f}",
                f"{r['cpu_s'] / ref['cpu_s']:.2f}x",
                f"{r['evaluations']:.0f}",
            ]
            for r in sweep
        ],
    )


def models_table(sizes: list[dict]) -> Table:
    ref = next(r for r in sizes if r["model"] == "vgg16_bn")
    columns = [
        "model",
        "groups",
        "units",
        "GFLOPs",
        "search",
        "wall s",
        "CPU s",
        "CPU / VGG-16",
        "evaluations",
    ]
    return table(
        "optimiser decision time vs model size: mesh0 (10 devices), 15 Mbit/s",
        columns,
        [
            [
                r["model"],
                str(r["groups"]),
                str(r["units"]),
                f"{r['gflops']:.2f}",
                "exhaustive" if r["exhaustive"] else "descent",
                f"{r['wall_s']:.2f}",
                f"{r['cpu_s']:.2f}",
                f"{r['cpu_s'] / ref['cpu_s']:.2f}x",
                str(r["evaluations"]),
            ]
            for r in sizes
        ],
    )


def targets_table(goals: list[dict]) -> Table:
    columns = [
        "mesh",
        "cap",
        "optimal s",
        "MoDNN",
        "MoDNN p2p",
        "DeepSlicing",
        "DISNET",
        "energy J",
        "MoDNN energy",
    ]
    return table(
        "targets: VGG-16 (bn) at 224, cost model; latency ratios = baseline / optimiser",
        columns,
        [
            [
                g["mesh"],
                f"{g['cap_mbps']:.0f}",
                f"{g['optimal_latency_s']:.3f}",
                f"{g['vs_modnn']:.2f}x",
                f"{g['vs_modnn_p2p']:.2f}x",
                f"{g['vs_deepslicing']:.2f}x",
                f"{g['vs_disnet']:.2f}x",
                f"{g['optimal_energy_j']:.2f}",
                f"{g['energy_vs_modnn']:.2f}x",
            ]
            for g in goals
        ],
    )


def zoo_and_deep50(vgg: LayerGraph) -> dict[str, Callable[[], LayerGraph]]:
    """The models of the size sweep, each built when its turn comes."""
    return {
        "tiny (32x32)": lambda: zoo_graph("tiny"),
        "resnet18": lambda: zoo_graph("resnet18"),
        "vgg16_bn": lambda: vgg,
        "deep50": lambda: LayerGraph.from_model(deep50(), (3, 224, 224), "deep50"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,10,15,20,25,30", help="device counts of the random meshes")
    parser.add_argument("--meshes", type=flags.at_least_one, default=3, help="random meshes per device count")
    flags.add_json(parser, help="also write the figures as JSON here")
    args = parser.parse_args()
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes takes a comma list of whole numbers, not {args.sizes!r}")
    if min(args.sizes) < 2:
        parser.error("--sizes: a mesh has at least 2 devices")
    torch.set_num_threads(1)
    console = Console(width=150)
    vgg = zoo_graph("vgg16_bn")
    report: dict = {}
    report["devices"] = devices_sweep(vgg, args.sizes, args.meshes)
    console.print(devices_table(report["devices"], args.meshes))
    mesh0 = load_scenario("mesh0-15").cluster_spec()
    report["models"] = model_sweep(mesh0, zoo_and_deep50(vgg))
    console.print(models_table(report["models"]))
    if SHARED.exists():
        report["targets"] = targets(vgg)
        console.print(targets_table(report["targets"]))
    else:
        console.print(f"[yellow]targets skipped: {SHARED} not found[/yellow]")
    if args.json:
        write_json(args.json, report, console)
    console.print("rerun: python -m bench.planners [--sizes 5,10,...] [--meshes 3] [--json OUT]")


if __name__ == "__main__":
    main()
