"""Phase 5 of a fixed-slot run: the held-out comparison.

The saved policy (through ``PPOPlanner``, exactly what ships), the oracle and the planners named in
``compare.agents`` (``ppo-topK``, ``ppo-polish``: the same policy, the cost model choosing among its K most
likely actions or polishing its plan) plan on identical snapshots of worlds drawn from
``compare.dynamics`` (traces not used in training); each plan runs in the world with the simulator's
semantics (cost model, failures retried on the reference).
"""

from __future__ import annotations

from pathlib import Path

from agents import make_planner
from agents.base import Planner
from agents.ppo import PPOPlanner
from env.backends import Outcome
from env.config import EnvConfig
from env.partition_env import MicroSplitEnv
from env.simulator import charge
from serving.comparison_report import print_summary, summarize
from serving.evaluation import RequestRecord, run_comparison
from training.config import CompareConfig, TrainConfig
from training.oracle import ActionListOracle
from training.report import console


def compare(cfg: TrainConfig, env_cfg: EnvConfig, policy_path: Path) -> dict:
    """The summary over all requests (``all``) and per ``compare.dynamics`` entry, each agent with the
    number of its requests that failed (a device went down mid-request) and were retried."""
    cc = cfg.compare
    records, per_dynamics = [], {}
    for d, dynamics in enumerate(cc.dynamics):
        env = MicroSplitEnv(EnvConfig.model_validate({**env_cfg.model_dump(), "dynamics": [dynamics]}))
        mine = []
        for w in range(cc.worlds):
            env.reset(seed=10_000 * (cfg.seed + 1) + 100 * d + w)
            planners = _planners(env, cc, policy_path)
            console.print(f"held-out world {w}: {env.sim.world.spec.name}, compare.dynamics.{d}")
            mine += _requests(env, cc, planners)
        per_dynamics[d] = summarize(mine)
        print_summary(
            per_dynamics[d], console, f"compare.dynamics.{d}: {cc.worlds} worlds x {cc.requests} requests"
        )
        records += mine
    summary = summarize(records)
    print_summary(
        summary, console, f"held-out comparison, all: {len(records) // len(summary)} requests per agent"
    )
    return {"all": summary, "per_dynamics": per_dynamics}


def _planners(env: MicroSplitEnv, cc: CompareConfig, policy_path: Path) -> dict[str, Planner]:
    """The saved policy, the oracle and ``compare.agents`` (``ppo-*`` names: this policy, helped by the
    cost model; the config checked the names), all on the env's cost model."""
    cost_model = env.sim.cost_model
    planners = {"ppo": PPOPlanner(policy_path, cost_model), "oracle": ActionListOracle(env)}
    for name in cc.agents:
        planners[name] = make_planner(
            f"{name}:{policy_path}" if name.startswith("ppo-") else name, cost_model=cost_model
        )
    return planners


def _requests(env: MicroSplitEnv, cc: CompareConfig, planners: dict[str, Planner]) -> list[RequestRecord]:
    """``cc.requests`` requests, ``cc.gap_s`` apart from the env's start, in the env's current world."""
    sim = env.sim

    def snapshot_at(i: int):
        return sim.snapshot_at(sim.config.start_s + i * cc.gap_s)

    def execute(agent: str, index: int, t: float, plan) -> Outcome:
        reference = sim.cost_model.predict(sim.reference_plan(t), sim.world, t)
        return charge(sim.predicted_outcome(plan, t), reference)

    return run_comparison(
        planners, snapshot_at, cc.requests, sim.graph, sim.objective, execute, console=console
    )
