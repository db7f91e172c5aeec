"""Phase 2 of a fixed-slot run: the action list.

The oracle (``search_shape``: the cost model on the snapshot, steepest descent over cut points and split
factors from the structured shapes) runs on ``shapes.search_samples`` snapshots of the training
distribution; the shapes it finds plus the structured ones form a pool, every pool shape is scored on
``shapes.select_samples`` fresh snapshots, and a greedy facility location keeps the ``shapes.keep`` shapes
that minimise the mean regret of the best kept shape (the oracle's loss from restricting itself to the list).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from env.actions import action_list
from env.config import EnvConfig, model_graph
from env.shapes import Shape, structured_shapes
from training.config import TrainConfig
from training.sampling import parallel, score_worker, search_worker


def select_shapes(regret: np.ndarray, keep: int) -> list[int]:
    """Greedy facility location: columns minimising the mean over rows of the best kept column.
    Column 0 (the single-device shape) is always kept first."""
    regret = np.where(np.isfinite(regret), regret, 10.0)
    chosen, best = [0], regret[:, 0].copy()
    while len(chosen) < min(keep, regret.shape[1]):
        gains = np.minimum(best[:, None], regret).mean(axis=0)
        gains[chosen] = np.inf
        j = int(np.argmin(gains))
        if gains[j] >= best.mean():
            break
        chosen.append(j)
        best = np.minimum(best, regret[:, j])
    return chosen


def build_actions(
    cfg: TrainConfig, env_cfg: EnvConfig, workers: int, say: Callable[[str], None]
) -> list[Shape]:
    """The kept shapes, the single-device shape first."""
    sc = cfg.shapes
    base = env_cfg.model_dump()
    graph = model_graph(env_cfg.model)
    pool = structured_shapes(graph, sc.max_stages, sc.max_split)
    if sc.search_samples:
        start = time.perf_counter()
        for found in parallel(
            search_worker, base, cfg.seed, sc.search_samples, workers, sc.max_stages, sc.max_split
        ):
            pool += [Shape.from_list(s) for s in found]
        say(f"oracle search on {sc.search_samples} snapshots: {time.perf_counter() - start:.0f} s")
    pool = action_list(graph, pool)
    start = time.perf_counter()
    pool_cfg = {**base, "shapes": [s.to_list() for s in pool], "n_actions": None}
    parts = parallel(score_worker, pool_cfg, cfg.seed + 1, sc.select_samples, workers, False)
    regret = np.concatenate([p[2] for p in parts])
    regret = regret / np.min(regret, axis=1, keepdims=True)
    chosen = select_shapes(regret, sc.keep)
    best = np.min(np.where(np.isfinite(regret[:, chosen]), regret[:, chosen], np.inf), axis=1)
    say(
        f"actions: {len(chosen)} of {len(pool)} pool shapes kept ({time.perf_counter() - start:.0f} s); "
        f"oracle regret over the kept list: mean {100 * (best.mean() - 1):.2f} %, "
        f"p95 {100 * (np.percentile(best, 95) - 1):.2f} %"
    )
    return [pool[j] for j in chosen]
