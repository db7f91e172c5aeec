"""Halo cost of fusing layers, and the in-process executor's overhead, for VGG-16 at 224.

Fusing L layers into one horizontally split stage saves L-1 exchanges between devices, but every band
must then compute the halo rows of the inner layers itself. This prints the redundant FLOPs (in % of
the stage's own FLOPs) for fusing the first L conv/pool groups with split factors 2..8 (equal shares),
next to the bytes the devices exchange when the same layers are re-split after every layer instead.
Then it times the executor on a 3-stage, 4-way plan against a plain forward pass on the same input,
interleaved in one run so machine noise hits both alike.

Rerun: python -m bench.halo [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.table import Table

from cli import flags
from cli.output import script_console
from runtime import models
from runtime.executor import run_plan
from runtime.graph import LayerGraph
from runtime.layout import layout
from runtime.plan import Plan

FACTORS = range(2, 9)


def redundancy(graph: LayerGraph, groups: int, k: int) -> float:
    """Redundant FLOPs in % when the first ``groups`` groups are fused and split ``k`` ways."""
    end = graph.groups[groups - 1][1]
    devices = [f"d{i}" for i in range(k)]
    plan = Plan.build("d0", "d0", [(0, end, dict.fromkeys(devices, 1.0)), (end, len(graph), {"d0": 1})])
    lay = layout(graph, plan)
    split = sum(t.flops for t in lay.tasks[0])
    whole = graph.band_flops(0, end, (0, graph.extent(end)))
    return 100.0 * (split - whole) / whole


def resplit_exchange_mb(graph: LayerGraph, groups: int, k: int) -> float:
    """MB moved between devices when each of the first ``groups`` groups is its own k-way stage."""
    devices = [f"d{i}" for i in range(k)]
    bounds = graph.groups[:groups]
    stages = [(s, e, dict.fromkeys(devices, 1.0)) for s, e in bounds]
    stages.append((bounds[-1][1], len(graph), {"d0": 1}))
    lay = layout(graph, Plan.build("d0", "d0", stages))
    inner = [t for t in lay.transfers if 0 < t.stage < groups and not t.local]
    return sum(t.nbytes for t in inner) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=flags.at_least_one, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = script_console()
    model = models.build("vgg16_bn")
    graph = LayerGraph.from_model(model, models.input_shape("vgg16_bn"), "vgg16_bn")
    conv_groups = [i + 1 for i, (s, _) in enumerate(graph.groups) if graph.units[s].kind == "spatial"]

    table = Table(title="VGG-16 @224: redundant FLOPs (%) when fusing the first L conv/pool layers")
    table.add_column("L fused")
    for k in FACTORS:
        table.add_column(f"k={k}", justify="right")
    table.add_column("re-split exch. MB (k=4)", justify="right")
    for groups in [g for g in (1, 2, 3, 4, 6, 9, 12, 14, 18) if g in conv_groups]:
        row = [f"{redundancy(graph, groups, k):.1f}" for k in FACTORS]
        table.add_row(str(groups), *row, f"{resplit_exchange_mb(graph, groups, 4):.2f}")
    console.print(table)

    x = torch.randn(1, *models.input_shape("vgg16_bn"))
    c1, c2 = graph.groups[6][1], graph.groups[17][1]
    shares = {"a": 1, "b": 1, "c": 1, "d": 1}
    plan = Plan.build("a", "a", [(0, c1, shares), (c1, c2, shares), (c2, len(graph), shares)])
    run_plan(graph, plan, x)  # warm up caches
    plain, split = [], []
    with torch.no_grad():
        for _ in range(args.reps):
            t = time.perf_counter()
            model(x)
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            run_plan(graph, plan, x)
            split.append(time.perf_counter() - t)
    p, s = statistics.median(plain), statistics.median(split)
    flops = sum(layout(graph, plan).flops_by_device().values())
    console.print(
        f"executor, 3 stages x 4 bands: {s * 1e3:.0f} ms vs plain forward {p * 1e3:.0f} ms "
        f"-> ratio {s / p:.2f} (of which halo FLOPs {flops / graph.total_flops:.2f}x); median of {args.reps}"
    )


if __name__ == "__main__":
    main()
