"""The stage-by-stage policy's speed: decision time against the optimiser's, and the env's steps/s.

On unseen meshes of the DISNET family (evaluation seeds) with 10 and 32 devices (``--devices``), VGG-16, a
static world at the spec's rates capped at 15 Mbit/s; measured side by side in one run:

1. the policy's fallbacks, and its decision time (``StagedPlanner.decide``: every sub-step's observation
   and forward pass, then the completion and the plan's validation) and the analytic optimiser's, medians
   over ``--decisions`` snapshots of the same world, and their ratio, the set-up frozen out of full garbage
   collections as in serving (serving/heap.py);
2. the StagedSplit env (sim backend) on a generated mesh of that size (a training seed: the env draws its
   meshes from the family) with random-walk link traces: sub-steps/s
   and requests/s with the policy's actions, time inside ``env.step``/``env.reset`` only (the agent's
   decision excluded, as bench.microsplit counts it), after warm-up requests.

Rerun: python -m bench.staged --policy agents/pretrained/vgg16_any.zip [--devices 10 32] [--decisions 15]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from agents.optimizer import OptimalPlanner
from agents.staged_policy import StagedPlanner
from cli import flags
from cli.errors import reporting_user_errors
from cli.output import script_console
from env.config import model_graph
from env.cost_model import Objective
from env.meshes import EVAL_SEED_BASE, generate_mesh
from env.network import NetworkState
from env.staged_env import StagedSplitEnv
from runtime.spec import parse_cluster
from serving.heap import setup_frozen

MODEL = "vgg16_bn"
CAP_MBPS = 15.0


def decision_times(planner, snapshots, graph, repeats: int = 1) -> tuple[list[float], int]:
    """CPU seconds per decision (this process's CPU time: on a shared host, wall time mostly measures the
    other processes), and how many decisions were fallbacks."""
    times, fallbacks = [], 0
    for snapshot in snapshots:
        for _ in range(repeats):
            start = time.process_time()
            decision = planner.decide(snapshot, graph, Objective())
            times.append(time.process_time() - start)
            fallbacks += decision.fallback is not None
    return times, fallbacks


def env_speed(policy: StagedPlanner, devices: int, requests: int) -> tuple[float, float]:
    """Sub-steps/s and requests/s inside the env (CPU time), on the policy's actions."""
    env = StagedSplitEnv(
        {
            "model": MODEL,
            "clusters": [],
            "meshes": {"devices": [devices, devices], "count": 1, "seed": devices},
            "max_devices": devices,
            "max_split": policy.meta.max_factor,
            "max_stages": policy.meta.max_stages,
            "spec_cap_mbps": CAP_MBPS,
            "dynamics": [
                {"links": {"default": {"kind": "random_walk", "mean": 30, "sigma": 6, "lo": 1, "hi": 80}}}
            ],
        }
    )
    inside, steps = 0.0, 0
    env.reset(seed=0)
    for request in range(requests + 20):
        if request == 20:  # warm-up done
            inside, steps = 0.0, 0
        shape = policy.shapes(env.sim.snapshot, env.graph, env.sim.view)[0]
        for _, end, k in shape.stages:
            action = env.actions.encode(end, k)
            start = time.process_time()
            _, _, done, _, _ = env.step(action)
            if done:
                env.reset()
            inside += time.process_time() - start
            steps += 1
    return steps / inside, requests / inside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--policy",
        default="agents/pretrained/vgg16_any.zip",
        help="a stage-by-stage policy (disnet-staged/1); bench.microsplit measures the fixed-action kind",
    )
    parser.add_argument("--devices", type=flags.mesh_size, nargs="+", default=[10, 32])
    parser.add_argument("--decisions", type=flags.at_least_one, default=15)
    parser.add_argument("--requests", type=flags.at_least_one, default=200)
    args = parser.parse_args(argv)
    console = script_console()
    return reporting_user_errors(lambda: run(args, console), console)


def run(args: argparse.Namespace, console: Console) -> int:
    graph = model_graph(MODEL)
    policy = StagedPlanner(args.policy)
    table = Table(title=f"{MODEL}, unseen meshes, cap {CAP_MBPS:g} Mbit/s")
    for col in (
        "devices",
        "policy fallbacks",
        "policy CPU ms (median)",
        "optimiser CPU ms (median)",
        "ratio",
        "env sub-steps/s",
        "requests/s",
    ):
        table.add_column(col, justify="right")
    for n in args.devices:
        spec = parse_cluster(generate_mesh(n, EVAL_SEED_BASE + n), bandwidth_cap=CAP_MBPS)
        world = NetworkState.static(spec)
        snapshots = [world.snapshot(10.0 + i) for i in range(args.decisions)]
        decision_times(policy, snapshots[:2], graph)  # warm-up: numba kernels, caches
        with setup_frozen():  # as in serving, full collections do not walk the set-up inside decisions
            times, fallbacks = decision_times(policy, snapshots, graph, repeats=3)
            theirs = np.median(decision_times(OptimalPlanner(), snapshots, graph)[0])
        mine = np.median(times)
        steps, requests = env_speed(policy, n, args.requests)
        table.add_row(
            str(n),
            f"{fallbacks} of {len(times)}",
            f"{1e3 * mine:.2f}",
            f"{1e3 * theirs:.0f}",
            f"{theirs / mine:.0f}x",
            f"{steps:,.0f}",
            f"{requests:,.0f}",
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
