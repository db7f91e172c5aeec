"""Cost-model evaluations per second: VGG-16 at 224 on the 10-device disnet-mesh0.

Plans are random valid plans with up to 5 stages of up to 6 devices each (the range planners explore).
Three figures, measured in one run: a planner's case (constant snapshot) for plans seen for the first
time ("cold": the skeleton built: bands, halo rows, transfers) and again ("warm": cached), and the
trace-driven world (exact integration over real link traces) on warm plans. Each figure for the
FLOPs-only model and for the profiled one (this host's profile, the default cost model), in alternating
rounds (a fresh model each round, after one warm-up pass that compiles the kernels and fills the
graph's caches), with the ratio of their medians: the kernel reads the same tables, which hold seconds
instead of FLOPs.

Rerun: python -m bench.cost_model [--plans 2000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import numpy as np
from rich.table import Table

from cli import flags
from cli.output import script_console
from env.cost_model import CostModel
from env.dynamics import DynamicsConfig
from env.network import NetworkState
from env.profiles import resolve_profile
from runtime import models
from runtime.graph import LayerGraph
from runtime.plan import random_plan
from runtime.spec import load_cluster

ROOT = Path(__file__).resolve().parents[1]


def rate(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=flags.at_least_one, default=2000)
    parser.add_argument("--rounds", type=flags.at_least_one, default=4)
    args = parser.parse_args()
    spec = load_cluster(ROOT / "configs" / "clusters" / "mesh0.yaml")
    graph = LayerGraph.from_model(models.build("vgg16_bn"), models.input_shape("vgg16_bn"), "vgg16_bn")
    rng = np.random.default_rng(0)
    devices = list(spec.device_ids)
    plans = [
        random_plan(graph, devices, rng, max_devices=6, max_stages=5, source=spec.source, sink=spec.sink)
        for _ in range(args.plans)
    ]
    dynamics = DynamicsConfig.parse({"links": {"default": {"kind": "random_walk", "mean": 20, "sigma": 5}}})
    world = NetworkState.sample(spec, dynamics, np.random.default_rng(1))
    snapshot = world.snapshot(30.0)
    profiles = {"flops": None, "profile": resolve_profile(graph)}
    figures: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in profiles}
    warmup = CostModel(graph, spec)  # compiles the kernels and fills the graph's own caches for all rounds
    rate(lambda p: warmup.predict(p, world, 30.0), plans)
    for r in range(args.rounds):
        for kind in list(profiles)[:: 1 if r % 2 == 0 else -1]:  # alternate who goes first
            model = None
            gc.collect()  # the previous model's caches must not slow this one's garbage collections
            model = CostModel(graph, spec, profiles[kind])
            cold = rate(lambda p, m=model: m.predict(p, snapshot), plans)
            warm = rate(lambda p, m=model: m.predict(p, snapshot), plans)
            traced = rate(lambda p, m=model: m.predict(p, world, 30.0), plans)
            figures[kind].append((cold, warm, traced))
    table = Table(
        title=f"cost model, VGG-16 on mesh0, {args.plans} random plans (<= 5 stages x 6 devices), "
        f"median of {args.rounds} rounds, evaluations/s"
    )
    for col in ("conditions", "plans", "FLOPs", "profile", "profile / FLOPs"):
        table.add_column(col)
    medians = {kind: np.median(np.array(rows), axis=0) for kind, rows in figures.items()}
    rows = (("snapshot", "new (cold)"), ("snapshot", "seen (warm)"), ("trace-driven world", "seen (warm)"))
    for i, (conditions, which) in enumerate(rows):
        flops, profiled = medians["flops"][i], medians["profile"][i]
        table.add_row(conditions, which, f"{flops:,.0f}", f"{profiled:,.0f}", f"{profiled / flops:.2f}")
    script_console().print(table)


if __name__ == "__main__":
    main()
