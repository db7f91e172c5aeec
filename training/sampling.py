"""Random states of the training distribution, sampled in parallel worker processes: the oracle's shape
search (for the action list) and per-action costs with observations and masks (for selection and
behaviour cloning). Independent of any policy: a fresh world at a random time per state.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import torch

from env.completion import complete
from env.config import EnvConfig
from env.partition_env import MicroSplitEnv
from env.shapes import Shape, search_shape, structured_shapes
from training.oracle import action_costs


def worker_env(env_cfg: dict) -> MicroSplitEnv:
    torch.set_num_threads(1)
    return MicroSplitEnv(EnvConfig.model_validate(env_cfg))


def random_state(env: MicroSplitEnv, rng: np.random.Generator) -> np.ndarray:
    """Reset ``env`` into a fresh world at a random time; its observation there."""
    t = env.config.start_s + float(rng.uniform(0.0, 300.0))
    obs, _ = env.reset(seed=int(rng.integers(2**31)), options={"time": t})
    return obs


def search_worker(env_cfg: dict, seed: int, samples: int, max_stages: int, max_split: int) -> list:
    """The oracle's best shape (steepest descent from the structured shapes and the last few found) on
    ``samples`` random states, as lists."""
    env = worker_env(env_cfg)
    sim = env.sim
    rng = np.random.default_rng(seed)
    starts = structured_shapes(sim.graph, max_stages, max_split)
    found: list[Shape] = []
    for _ in range(samples):
        random_state(env, rng)

        def score(shape: Shape) -> float:
            plan = complete(sim.graph, sim.view, shape)
            return sim.objective.score(sim.cost_model.predict(plan, sim.snapshot, sim.time))

        best, _ = search_shape(sim.graph, score, starts + found[-4:], max_stages, max_split)
        found.append(best)
    return [s.to_list() for s in found]


def score_worker(env_cfg: dict, seed: int, samples: int, world: bool) -> tuple[np.ndarray, ...]:
    """Observations, masks and per-action costs (snapshot, and world if asked) on random states."""
    env = worker_env(env_cfg)
    rng = np.random.default_rng(seed)
    obs, masks, snap, real = [], [], [], []
    for _ in range(samples):
        obs.append(random_state(env, rng))
        masks.append(env.action_masks())
        s, r = action_costs(env, world)
        snap.append(s)
        real.append(r if world else s)
    return np.array(obs, dtype=np.float32), np.array(masks), np.array(snap), np.array(real)


def parallel(fn, env_cfg: dict, seed: int, total: int, workers: int, *args) -> list:
    """Run ``fn(env_cfg, seed_i, share_i, *args)`` on ``workers`` processes, shares summing to ``total``."""
    shares = [total // workers + (i < total % workers) for i in range(workers)]
    seeds = np.random.SeedSequence(seed).generate_state(workers).tolist()
    if workers == 1:
        return [fn(env_cfg, seeds[0], total, *args)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        jobs = [pool.submit(fn, env_cfg, s, n, *args) for s, n in zip(seeds, shares, strict=True) if n]
        return [j.result() for j in jobs]
