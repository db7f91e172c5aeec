"""Labels for the policy for any cluster (``kind: staged``): the optimiser's plans replayed as sub-steps.

On ``bc.samples`` random states (a fresh world at a random time) an optimiser plans: the snapshot
optimiser (agents/optimizer.py, without its local search beyond the completion's plan space) or, with
``bc.labeller: optimal``, the robust optimiser built on it (agents/robust.py: its candidates priced over
the links' history and the devices' failure risk). Its plan's shape, clamped to the action space, is
replayed through the env's sub-steps, recording each observation, mask and action, and the request's
reward (the value target of every sub-step).
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import torch
from rich.progress import track

from agents import Planner, make_planner
from env.config import EnvConfig
from env.cost_model import CostModel
from env.shapes import Shape
from env.simulator import charged_in_world
from env.staged_env import StagedSplitEnv
from training.config import StagedConfig
from training.report import console


def random_state(env: StagedSplitEnv, seed: int) -> None:
    """A fresh world at a random time, both drawn from ``seed`` (the same seed, the same state)."""
    rng = np.random.default_rng(seed)
    t = env.config.start_s + float(rng.uniform(0.0, 300.0))
    env.reset(seed=int(rng.integers(2**31)), options={"time": t})


def label_shape(shape: Shape, env: StagedSplitEnv) -> Shape:
    """``shape`` within the action space: factors clamped to K and to what the state allows."""
    cap = max(1, min(env.actions.max_factor, env.sim.view.n_usable))
    factors = tuple(max(1, min(k, cap, env.graph.extent(e))) for (_, e, k) in shape.stages)
    return Shape(shape.bounds, factors)


LABEL_EXACT_LIMIT = 2000  # shapes enumerated exhaustively (4 devices: ~40,000 otherwise, 10 s a label)
_WORKER_ENV: dict[str, StagedSplitEnv] = {}


def labelling_planner(labeller: str, cost_model: CostModel, evaluations: int) -> Planner:
    """The optimiser ``bc.labeller`` names (a planner name), its shape search capped at ``evaluations``."""
    options = {"refine": False, "max_evaluations": evaluations, "exact_limit": LABEL_EXACT_LIMIT}
    return make_planner(labeller, cost_model=cost_model, **options)


def label_worker(
    env_cfg: dict, seeds: list[int], evaluations: int, labeller: str = "snapshot-optimal"
) -> list[dict]:
    """Per seed: the labeller's shape replayed as sub-steps (observations, masks, actions, reward), its
    latency in the world so completed, and the latency of the labeller's own plan (its devices and shares
    chosen by its search, not by the completion)."""
    torch.set_num_threads(1)
    key = json.dumps(env_cfg, sort_keys=True)
    if _WORKER_ENV.get(key) is None:  # one env per worker process: building 256 meshes' models once
        _WORKER_ENV.clear()
        _WORKER_ENV[key] = StagedSplitEnv(EnvConfig.model_validate(env_cfg))
    env = _WORKER_ENV[key]
    out = []
    for seed in seeds:
        random_state(env, seed)
        optimiser = labelling_planner(labeller, env.sim.cost_model, evaluations)
        plan = optimiser.plan(env.sim.snapshot, env.graph, env.sim.objective)
        own = charged_in_world(env.sim.cost_model, env.sim.world, plan, env.sim.time).latency_s
        shape = label_shape(Shape.of_plan(plan), env)
        if len(shape.factors) > env.actions.max_stages:
            continue
        obs, masks, actions = [], [], []
        info: dict = {}
        reward = 0.0
        for _, end, k in shape.stages:
            obs.append(env.observation())
            masks.append(env.action_masks())
            actions.append(env.actions.encode(end, k))
            _, reward, _, _, info = env.step(actions[-1])
        out.append(
            {"seed": seed, "obs": obs, "masks": masks, "actions": actions, "reward": reward,
             "latency_s": info["latency_s"], "optimiser_latency_s": own}
        )  # fmt: skip
    return out


def collect_labels(cfg: StagedConfig, seeds: list[int]) -> list[dict]:
    workers = cfg.ppo.n_envs
    chunks = [seeds[i :: workers * 8] for i in range(workers * 8)]  # small chunks: progress, balance
    data = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        jobs = [
            pool.submit(label_worker, cfg.env.model_dump(), c, cfg.bc.optimiser_evaluations, cfg.bc.labeller)
            for c in chunks
        ]
        for job in track(jobs, description="optimiser labels", console=console):
            data += job.result()
    return data
