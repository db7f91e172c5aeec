"""The oracle: the best action of the list for a snapshot, by the cost model on the simulator.

It labels behaviour cloning (``action_costs``), measures validation requests against the policy's
(``OracleInfo``) and plans in the held-out comparison (``ActionListOracle``). Costs are the sim backend's
semantics whatever the env's backend: the snapshot's view for what an analytic optimiser over the action
list sees, the world's for what a request would actually cost.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from agents.base import Planner
from env.completion import complete
from env.cost_model import Cost
from env.net_view import net_view
from env.partition_env import MicroSplitEnv
from env.simulator import charge


def action_costs(env: MicroSplitEnv, world: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Per action, relative to the reference (lower is better; inf for masked actions): the objective
    under the snapshot and, with ``world``, minus the reward the action would earn now in the world."""
    sim = env.sim
    t, score = sim.time, sim.objective.score
    reference = sim.reference_plan()
    ref_snap = score(sim.cost_model.cost(reference, sim.snapshot, t))
    ref_world = sim.world_cost(reference, t) if world else None
    snap = np.full(env.n_actions, np.inf)
    real = np.full(env.n_actions, np.inf) if world else None
    for a in np.flatnonzero(env.action_masks()):
        plan = sim.completed(env.shapes[a])
        snap[a] = score(sim.cost_model.cost(plan, sim.snapshot, t)) / ref_snap
        if world:
            charged = charge(sim.predicted_outcome(plan, t), ref_world)
            real[a] = score(Cost(charged.latency_s, charged.energy_j)) / score(ref_world)
    return snap, real


class OracleInfo(gym.Wrapper):
    """Validation env: each request's info also says what the oracle's action (the best on the snapshot)
    would have cost in the same world at the same time (``oracle_latency_s``, ``oracle_energy_j``)."""

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()

    def step(self, action):
        env = self.env.unwrapped
        sim = env.sim
        plan, _ = env.plan_for(int(np.argmin(action_costs(env, world=False)[0])))
        reference = sim.cost_model.predict(sim.reference_plan().plan, sim.world, sim.time)
        oracle = charge(sim.predicted_outcome(plan, sim.time), reference)
        obs, reward, terminated, truncated, info = self.env.step(action)
        extra = {"oracle_latency_s": oracle.latency_s, "oracle_energy_j": oracle.energy_j}
        return obs, reward, terminated, truncated, {**info, **extra}


class ActionListOracle(Planner):
    """The optimiser restricted to an env's action list: the best shape for the snapshot (cost model)."""

    name = "oracle"

    def __init__(self, env: MicroSplitEnv) -> None:
        super().__init__(env.sim.cost_model)
        self.env = env

    def plan(self, snapshot, graph, objective):
        view = net_view(snapshot)
        cost_model = self.env.sim.cost_model
        plans = [complete(graph, view, shape) for shape in self.env.shapes]
        return min(plans, key=lambda p: objective.score(cost_model.predict(p, snapshot, snapshot.time)))
