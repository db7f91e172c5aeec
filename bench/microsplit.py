"""MicroSplit speed: sim env steps per second, where a step's time goes, and the policy's decision time.

VGG-16 (bn, 224) on disnet-mesh0 with recorded Norway HSDPA traces, random-walk load and failures, one
process. Measured side by side in one run:

1. env steps/s (sim backend) when the actions are the shipped policy's, random valid actions, and a
   fixed single-device action (the cheapest plan), plus cost-model evaluations/s of the same plans.
   The headline env steps/s counts only the time inside env.step()/env.reset(), what an RL library's
   rollout pays for the env (also in process CPU time, which other processes on a shared host move
   less); "with the decision" also counts choosing the action (the agent's cost). Measured after 200
   warm-up steps per action kind on other worlds: a training run's steady state (one-off costs, numba
   loading its kernels and each stage's band tables, happen in the first steps of a process);
2. the share of a step spent in NetworkState.snapshot, CostModel.predict (with its per-plan skeleton),
   the completion, the Plan objects handed out in info, the observation, the decision and the rest
   (cProfile, a separate pass);
3. decision time of the PPO planner (argmax, and top-3 checked by the cost model) and of the analytic
   optimiser on the same snapshots, and the ratios.

Rerun: python -m bench.microsplit [--policy agents/pretrained/vgg16_mesh.zip] [--steps 600] [--decisions 5]
(As a module: ``python bench/microsplit.py`` puts bench/ first on sys.path, where bench/serving.py
shadows the ``serving`` package.)
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table

from agents.optimizer import OptimalPlanner
from agents.ppo import PPOPlanner
from cli import flags
from cli.errors import reporting_user_errors
from cli.output import script_console
from env.config import EnvConfig
from env.cost_model import Objective
from env.partition_env import MicroSplitEnv

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
console = script_console()


def make_env(policy: PPOPlanner) -> MicroSplitEnv:
    traces = SHARED / "traces" / "pensieve_norway_hsdpa"
    links = {"default": {"kind": "dir", "path": str(traces)}} if traces.is_dir() else {}
    config = {
        "model": "vgg16_bn",
        "clusters": ["mesh0"],
        "requests_per_episode": 64,
        "dynamics": [
            {
                "links": links,
                "load": {"kind": "random_walk", "lo": 0.3, "hi": 1.0},
                "failures": {"rate_per_min": 0.5},
                "horizon_s": 600,
            }
        ],
    }
    config |= {"shapes": policy.meta.shapes, "n_actions": policy.meta.n_actions}
    return MicroSplitEnv(EnvConfig.parse(config))


@dataclass(frozen=True)
class Rates:
    """Steps/s of one run: ``env`` counts only the time inside env.step()/env.reset() (what an RL
    library's rollout pays for the env; choosing the action is the agent's cost), ``env_cpu`` the same
    in this process's CPU time (less moved by other processes on a shared host), ``loop`` the whole
    loop with the decision; ``evals`` are cost-model evaluations/s of the same plans at the same times."""

    env: float
    env_cpu: float
    loop: float
    evals: float


def run_steps(env: MicroSplitEnv, steps: int, choose, seed: int = 0) -> Rates:
    clock = time.perf_counter
    env.reset(seed=seed)
    plans = []
    in_env = in_env_cpu = 0.0
    start = clock()
    for _ in range(steps):
        action = choose(env)
        world, t = env.sim.world, env.sim.time
        t0, c0 = clock(), time.process_time()
        *_, truncated, info = env.step(action)
        if truncated:
            env.reset()
        in_env += clock() - t0
        in_env_cpu += time.process_time() - c0
        plans.append((info["plan"], world, t))
    loop = clock() - start
    start = clock()
    for plan, world, t in plans:
        env.sim.cost_model.predict(plan, world, t)
    return Rates(steps / in_env, steps / in_env_cpu, steps / loop, len(plans) / (clock() - start))


def breakdown(env: MicroSplitEnv, steps: int, choose) -> dict[str, float]:
    """Shares of the time of ``steps`` steps (decisions and episode resets included), by cProfile."""
    profiler = cProfile.Profile()
    env.reset(seed=1)

    def loop() -> None:
        for _ in range(steps):
            *_, truncated, _ = env.step(choose(env))
            if truncated:
                env.reset()

    profiler.runcall(loop)
    stats = pstats.Stats(profiler).stats
    total = max(v[3] for k, v in stats.items() if k[2] == "loop")

    def cum(name: str, file_part: str) -> float:
        return sum(v[3] for k, v in stats.items() if k[2] == name and file_part in k[0])

    parts = {
        "NetworkState.snapshot": cum("snapshot", "network.py"),
        "cost model (skeleton + replay)": cum("cost", "cost_model.py") + cum("predict", "cost_model.py"),
        "completion": cum("complete_arrays", "completion.py"),
        "the Plan objects of info['plan']": cum("plan", "plan_arrays.py"),
        "observation (net view + encoding)": cum("encode", "observation.py") + cum("net_view", "net_view.py"),
        "episode reset (new world)": cum("reset", "partition_env.py"),
    }
    parts["the decision (agent's cost, not the env's)"] = cum("act", "ppo.py")
    parts["rest (env glue, info)"] = total - sum(parts.values())
    return {k: v / total for k, v in parts.items()}


def rates_table(env: MicroSplitEnv, choosers: dict, steps: int) -> Table:
    """Steps/s of each way of choosing actions, after warm-up on other worlds."""
    table = Table(title=f"sim env, VGG-16 on disnet-mesh0, {len(env.shapes)} actions, one process")
    columns = (
        "actions",
        "env steps/s (step+reset only)",
        "same, CPU time",
        "with the decision",
        "cost-model evals/s",
    )
    for col in columns:
        table.add_column(col)
    # warm-up on other worlds (seed 1), so the figures are a long training run's steady state: a fresh
    # checkout compiles the numba kernels on first use, and each stage's band tables are built once
    for choose in choosers.values():
        run_steps(env, 200, choose, seed=1)
    for name, choose in choosers.items():
        r = run_steps(env, steps, choose)
        table.add_row(name, f"{r.env:,.0f}", f"{r.env_cpu:,.0f}", f"{r.loop:,.0f}", f"{r.evals:,.0f}")
    return table


def breakdown_table(parts: dict[str, float]) -> Table:
    table = Table(title="where a step's time goes (cProfile, same actions)")
    table.add_column("part")
    table.add_column("share")
    for name, share in parts.items():
        table.add_row(name, f"{100 * share:.0f} %")
    return table


def decision_times(env: MicroSplitEnv, policy: PPOPlanner, policy_path: Path, decisions: int) -> None:
    """Print the median decision time of the policy (argmax, and top-3 checked by the cost model) and of
    the analytic optimiser on the same snapshots."""
    optimiser = OptimalPlanner(env.sim.cost_model)
    top3 = PPOPlanner(policy_path, env.sim.cost_model, top_k=3)
    env.reset(seed=2)
    ppo_s, top3_s, opt_s = [], [], []
    for _ in range(decisions):
        snap = env.sim.snapshot
        start = time.perf_counter()
        for _ in range(20):
            policy.plan(snap, env.graph, Objective())
        ppo_s.append((time.perf_counter() - start) / 20)
        start = time.perf_counter()  # once: its three plans are new to the cost model, as in service
        top3.plan(snap, env.graph, Objective())
        top3_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        optimiser.plan(snap, env.graph, Objective())
        opt_s.append(time.perf_counter() - start)
        for _ in range(3):
            env.step(0)
    ppo, top, opt = (float(np.median(x)) for x in (ppo_s, top3_s, opt_s))
    console.print(
        f"decision time (median of {decisions} snapshots): PPO {ppo * 1e3:.2f} ms, ppo-top3 "
        f"{top * 1e3:.2f} ms, optimiser {opt:.2f} s -> PPO decides {opt / ppo:,.0f}x faster, "
        f"ppo-top3 {opt / top:,.0f}x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--policy",
        type=Path,
        default=ROOT / "agents" / "pretrained" / "vgg16_mesh.zip",
        help="a fixed-action policy (disnet-ppo/1); bench.staged measures the stage-by-stage kind",
    )
    parser.add_argument("--steps", type=flags.at_least_one, default=600)
    parser.add_argument("--decisions", type=flags.at_least_one, default=5)
    args = parser.parse_args(argv)
    return reporting_user_errors(lambda: run(args), console)


def run(args: argparse.Namespace) -> int:
    policy = PPOPlanner(args.policy)
    env = make_env(policy)
    rng = np.random.default_rng(0)
    choosers = {"single device (action 0)": lambda e: 0}
    choosers["random valid action"] = lambda e: int(rng.choice(np.flatnonzero(e.action_masks())))
    choosers["shipped policy"] = lambda e: policy.act(e.sim.snapshot, e.graph, e.sim.view)
    console.print(rates_table(env, choosers, args.steps))
    console.print(breakdown_table(breakdown(env, max(50, args.steps // 4), choosers["shipped policy"])))
    decision_times(env, policy, args.policy, args.decisions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
