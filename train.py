"""Train a MicroSplit policy: candidate shapes -> behaviour cloning -> MaskablePPO -> held-out comparison.

    python train.py --config configs/train/NAME.yaml [--backend sim|live] [--timesteps N] [--out runs/NAME]
                    [--init POLICY.zip] [--export PATH]

The whole algorithm, top to bottom:

1. **Config**: one YAML validated by ``TrainConfig`` (a bad field gives ``file: field: message``, no
   traceback). ``env:`` is the environment (env/partition_env.py), the other sections tune the phases.
2. **Actions** (skipped with ``--init``, which reuses the policy's own): the oracle (``search_shape``: the
   cost model on the snapshot, steepest descent over cut points and split factors from the structured
   shapes) runs on ``shapes.search_samples`` snapshots drawn from the training distribution; the shapes
   it finds plus the structured ones form a pool, every pool shape is scored on ``shapes.select_samples``
   fresh snapshots, and a greedy facility location keeps the ``shapes.keep`` shapes that minimise the
   mean regret of the best kept shape (the oracle's loss from restricting itself to the list).
3. **Behaviour cloning** (``bc.samples`` > 0): on fresh snapshots every kept shape is scored by the cost
   model (what an analytic optimiser over this action space sees); the policy is fitted to a soft label
   ``softmax(-(regret) / bc.temperature)`` over the valid actions (cross-entropy; ``bc.labels: world``
   uses what each action earns in the world instead) and its value head to the label action's reward. This is a warm start: PPO alone would spend most of the time budget finding what
   the model can tell us directly.
4. **PPO** (sb3-contrib MaskablePPO, ``ppo.timesteps``): vectorised envs (SubprocVecEnv or DummyVecEnv;
   ``--backend live``: one env on one LocalCluster, labels and validation stay simulated)
   with domain randomisation over clusters, traces, loads and failures; reward = -latency / reference
   (env docstring). ``gamma`` defaults to 0: a plan does not change the world, only when the next
   request comes, so each request is a contextual bandit step. Callbacks: MaskableEvalCallback on a
   validation env (the same unseen worlds of the training distribution at every evaluation, the first
   one right after behaviour cloning) that also logs latency, energy and the ratio to the oracle, and
   keeps the policy with the best validation reward (possibly the behaviour-cloned one);
   CheckpointCallback; training latency/energy/failure scalars.
5. **Held-out comparison** (``compare.requests`` > 0): the saved policy (through ``PPOPlanner``, exactly
   what ships), the oracle and the planners named in ``compare.agents`` (``ppo-topK``, ``ppo-polish``:
   the same policy, the cost model choosing among its K most likely actions or polishing its plan) plan
   on identical snapshots of worlds drawn from ``compare.dynamics`` (traces not used in training); each
   plan runs in the world with the env's semantics (cost model, failures retried on the reference).

The run folder holds ``policy.zip`` (agents/ppo.py format; ``policy_bc.zip``: right after cloning),
``config.yaml`` (resolved, shapes included, so ``--config`` on it reproduces the action list),
``learning_curve.png``, ``summary.json`` (timings, BC metrics, validation history, held-out summaries
overall and per dynamics), ``bc_data.npz`` (the labels), TensorBoard logs and a CSV of every scalar
(``tb/``), SB3 checkpoints and monitor CSVs. ``--init P --timesteps 0`` re-runs only the evaluations.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.logger import configure as configure_logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from agents.base import Planner
from agents.ppo import PolicyMeta, PPOPlanner, load_policy, save_policy
from env.completion import Shape, complete, net_view, search_shape, structured_shapes
from env.network import DynamicsConfig, NetworkError
from env.partition_env import EnvConfig, EnvConfigError, MicroSplitEnv, model_graph
from env.profiles import ProfileError, host_profile
from runtime.config import describe_validation_error
from runtime.profiler import profile_path

console = Console()


# ------------------------------------------------------------------------------------------- config


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShapesConfig(_Section):
    search_samples: int = Field(48, ge=0)
    select_samples: int = Field(96, ge=1)
    keep: int = Field(32, ge=1)
    max_stages: int = Field(20, ge=1)
    max_split: int = Field(10, ge=1)


class BCConfig(_Section):
    samples: int = Field(2000, ge=0)
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    temperature: float = Field(0.01, gt=0)
    labels: Literal["snapshot", "world"] = "snapshot"
    validation: float = Field(0.1, ge=0, lt=1)


class PPOConfig(_Section):
    timesteps: int = Field(20000, ge=0)
    n_envs: int = Field(2, ge=1)
    vec_env: Literal["subproc", "dummy"] = "subproc"
    n_steps: int = Field(256, ge=1)
    batch_size: int = Field(128, ge=1)
    n_epochs: int = Field(4, ge=1)
    learning_rate: float = Field(3e-5, gt=0)
    gamma: float = Field(0.0, ge=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip_range: float = Field(0.1, gt=0)
    ent_coef: float = Field(0.0, ge=0)
    vf_coef: float = Field(0.5, ge=0)
    net_arch: list[int] = Field(default_factory=lambda: [128, 128])
    activation: Literal["tanh", "relu"] = "tanh"
    checkpoint_every: int = Field(10000, ge=1)


class EvalConfig(_Section):
    every: int = Field(5000, ge=1)
    episodes: int = Field(2, ge=1)
    requests_per_episode: int = Field(16, ge=1)


class CompareConfig(_Section):
    requests: int = Field(0, ge=0)
    worlds: int = Field(2, ge=1)
    gap_s: float = Field(5.0, gt=0)
    dynamics: list[dict[str, Any]] = Field(default_factory=lambda: [{}], min_length=1)
    agents: list[str] = Field(default_factory=lambda: ["optimal", "disnet", "deepslicing", "local"])


class TrainConfig(_Section):
    name: str
    seed: int = 0
    env: EnvConfig = EnvConfig()
    shapes: ShapesConfig = ShapesConfig()
    bc: BCConfig = BCConfig()
    ppo: PPOConfig = PPOConfig()
    eval: EvalConfig = EvalConfig()
    compare: CompareConfig = CompareConfig()


class ConfigError(ValueError):
    """A training config is invalid; the message names the file and the field."""


def load_config(path: Path) -> tuple[TrainConfig, EnvConfig]:
    """The validated config and its environment section (paths anchored at the config's folder)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(str(path), exc)) from None
    base = cfg.env.base_dir or path.parent.resolve()  # a resolved config (run folder) keeps its anchor
    try:
        env_cfg = cfg.env.resolved(f"{path}: env", base)
        for i, dyn in enumerate(cfg.compare.dynamics):
            DynamicsConfig.parse(dyn, origin=f"{path}: compare.dynamics.{i}", base_dir=base)
    except (EnvConfigError, NetworkError) as exc:
        raise ConfigError(str(exc)) from None
    return cfg, env_cfg


def pin_profile(env_cfg: EnvConfig) -> EnvConfig:
    """With the profiled cost model (the default), the profile file every env of the run reads, measured
    here first if this host has none yet (not by every env process at once), and recorded in the run's
    config.yaml."""
    if env_cfg.cost != "profile" or env_cfg.profile is not None:
        return env_cfg
    graph = model_graph(env_cfg.model)
    host_profile(graph, say=console.print)
    return env_cfg.model_copy(update={"profile": str(profile_path(graph.name).resolve())})


# --------------------------------------------------------------------------- parallel sampling workers


def _env(env_cfg: dict) -> MicroSplitEnv:
    torch.set_num_threads(1)
    return MicroSplitEnv(EnvConfig.model_validate(env_cfg))


def _random_state(env: MicroSplitEnv, rng: np.random.Generator) -> None:
    """A fresh world at a random time: snapshots for the oracle, independent of any policy."""
    t = env.config.start_s + float(rng.uniform(0.0, 300.0))
    env.reset(seed=int(rng.integers(2**31)), options={"time": t})


def _search_worker(env_cfg: dict, seed: int, samples: int, max_stages: int, max_split: int) -> list:
    env = _env(env_cfg)
    rng = np.random.default_rng(seed)
    starts = structured_shapes(env.graph, max_stages, max_split)
    found: list[Shape] = []
    for _ in range(samples):
        _random_state(env, rng)

        def score(shape: Shape) -> float:
            plan = complete(env.graph, env.view, shape)
            return env.score(env.cost_model.predict(plan, env.snapshot, env.time))

        best, _ = search_shape(env.graph, score, starts + found[-4:], max_stages, max_split)
        found.append(best)
    return [s.to_list() for s in found]


def _score_worker(env_cfg: dict, seed: int, samples: int, world: bool) -> tuple[np.ndarray, ...]:
    """Observations, masks and per-action costs (snapshot, and world if asked) on random states."""
    env = _env(env_cfg)
    rng = np.random.default_rng(seed)
    obs, masks, snap, real = [], [], [], []
    for _ in range(samples):
        _random_state(env, rng)
        obs.append(env.observer.encode(env.snapshot, env.view))
        masks.append(env.action_masks())
        s, r = env.action_costs(world)
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


# ------------------------------------------------------------------------------------- 2. actions


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


def build_actions(cfg: TrainConfig, env_cfg: EnvConfig, workers: int) -> list[Shape]:
    sc = cfg.shapes
    base = env_cfg.model_dump()
    graph = MicroSplitEnv(env_cfg).graph
    pool = structured_shapes(graph, sc.max_stages, sc.max_split)
    if sc.search_samples:
        start = time.perf_counter()
        for found in parallel(
            _search_worker, base, cfg.seed, sc.search_samples, workers, sc.max_stages, sc.max_split
        ):
            pool += [Shape.from_list(s) for s in found]
        console.print(f"oracle search on {sc.search_samples} snapshots: {time.perf_counter() - start:.0f} s")
    pool = list(dict.fromkeys(pool))
    single = Shape((0, len(graph.units)), (1,))
    pool = [single, *(s for s in pool if s != single)]
    start = time.perf_counter()
    pool_cfg = {**base, "shapes": [s.to_list() for s in pool], "n_actions": None}
    parts = parallel(_score_worker, pool_cfg, cfg.seed + 1, sc.select_samples, workers, False)
    regret = np.concatenate([p[2] for p in parts])
    regret = regret / np.min(regret, axis=1, keepdims=True)
    chosen = select_shapes(regret, sc.keep)
    best = np.min(np.where(np.isfinite(regret[:, chosen]), regret[:, chosen], np.inf), axis=1)
    console.print(
        f"actions: {len(chosen)} of {len(pool)} pool shapes kept ({time.perf_counter() - start:.0f} s); "
        f"oracle regret over the kept list: mean {100 * (best.mean() - 1):.2f} %, p95 {100 * (np.percentile(best, 95) - 1):.2f} %"
    )
    return [pool[j] for j in chosen]


# ------------------------------------------------------------------------------ 3. behaviour cloning


def behaviour_cloning(model, data: tuple[np.ndarray, ...], bc: BCConfig, seed: int) -> dict:
    """Fit the policy to soft oracle labels and the value head to the label's reward; returns the
    regret of the policy's deterministic choice (snapshot and world costs) on train and validation."""
    obs, masks, snap, world = data
    costs = snap if bc.labels == "snapshot" else world
    regret = costs / np.min(costs, axis=1, keepdims=True)
    logits = np.where(masks & np.isfinite(regret), -(regret - 1.0) / bc.temperature, -np.inf)
    target = torch.softmax(torch.as_tensor(logits, dtype=torch.float32), dim=1)
    value = torch.as_tensor(-world[np.arange(len(world)), np.argmin(costs, axis=1)], dtype=torch.float32)
    obs_t, masks_t = torch.as_tensor(obs), torch.as_tensor(masks)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(obs))
    n_val = int(len(obs) * bc.validation)
    val, train = order[:n_val], order[n_val:]
    policy = model.policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=bc.learning_rate)
    policy.set_training_mode(True)
    for _ in range(bc.epochs):
        rng.shuffle(train)
        for i in range(0, len(train), bc.batch_size):
            idx = torch.as_tensor(train[i : i + bc.batch_size])
            latent_pi, latent_vf = policy.mlp_extractor(policy.extract_features(obs_t[idx]))
            out = policy.action_net(latent_pi).masked_fill(~masks_t[idx], -1e8)
            loss_pi = -(target[idx] * torch.log_softmax(out, dim=1)).sum(dim=1).mean()
            loss_v = torch.nn.functional.mse_loss(policy.value_net(latent_vf).squeeze(1), value[idx])
            optimizer.zero_grad()
            (loss_pi + 0.5 * loss_v).backward()
            optimizer.step()
    policy.set_training_mode(False)
    metrics = {}
    for name, idx in (("train", train), ("validation", val)):
        if len(idx) == 0:
            continue
        with torch.no_grad():
            out = policy.action_net(policy.mlp_extractor(policy.extract_features(obs_t[idx]))[0])
            pick = out.masked_fill(~masks_t[idx], -torch.inf).argmax(dim=1).numpy()
        for kind, c in (("snapshot", snap), ("world", world)):
            chosen = c[idx, pick] / np.min(c[idx], axis=1)
            metrics[f"{name}_{kind}_regret_pct"] = float(100 * (chosen.mean() - 1))
    return metrics


# ------------------------------------------------------------------------------------------ 4. PPO


class OracleInfo(gym.Wrapper):
    """Validation env: each request's info also says what the oracle's action (the best on the snapshot)
    would have cost in the same world at the same time (``oracle_latency_s``, ``oracle_energy_j``)."""

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()

    def step(self, action):
        env = self.env.unwrapped
        plan, _ = env.plan_for(int(np.argmin(env.action_costs(world=False)[0])))
        reference = env.cost_model.predict(env.reference_plan(), env.world, env.time)
        latency, energy = env.charged(env.predicted_outcome(plan, env.time), reference)
        obs, reward, terminated, truncated, info = self.env.step(action)
        return (
            obs,
            reward,
            terminated,
            truncated,
            {**info, "oracle_latency_s": latency, "oracle_energy_j": energy},
        )


class FixedWorlds(gym.Wrapper):
    """Validation env: every evaluation replays the same worlds (the i-th reset of an evaluation always
    gets the i-th seed), so that checkpoints are compared, and the best kept, on identical requests."""

    def __init__(self, env: gym.Env, episodes: int, seed: int) -> None:
        super().__init__(env)
        self.seeds = [seed + i for i in range(episodes + 1)]  # + the auto-reset after the last episode
        self.resets = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        seed = self.seeds[self.resets % len(self.seeds)]
        self.resets += 1
        return self.env.reset(seed=seed, options=options)

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()


class RequestStats(BaseCallback):
    """TensorBoard scalars of the training requests: latency, energy, ratio to the reference, failures."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[float, ...]] = []

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            self.rows.append(
                (
                    info["latency_s"],
                    info["energy_j"],
                    info["latency_s"] / info["reference_latency_s"],
                    float(info["failed"]),
                    float(info["invalid_action"]),
                )
            )
        return True

    def _on_rollout_end(self) -> None:
        if self.rows:
            means = np.mean(self.rows, axis=0)
            for key, value in zip(
                ("latency_s", "energy_j", "latency_vs_reference", "failed", "invalid_action"),
                means,
                strict=True,
            ):
                self.logger.record(f"rollout/{key}", float(value))
            self.rows = []


class SavePolicy(BaseCallback):
    """Writes the current policy in the agents/ppo.py format (used on every new best evaluation)."""

    def __init__(self, path: Path, meta: PolicyMeta) -> None:
        super().__init__()
        self.path, self.meta = path, meta

    def _on_step(self) -> bool:
        save_policy(self.path, self.model.policy, self.meta)
        return True


class OracleEvalCallback(MaskableEvalCallback):
    """MaskableEvalCallback that also logs the evaluation requests' latency, energy and their ratio to
    the oracle's on the same requests (``eval/ratio_to_oracle``), and keeps a history for the plot."""

    def __init__(self, *args, requests_per_episode: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.requests_per_episode = requests_per_episode
        self.requests: list[tuple[float, float, float, float]] = []
        self.history: list[dict[str, float]] = []

    def _log_success_callback(self, locals_: dict, globals_: dict) -> None:
        super()._log_success_callback(locals_, globals_)
        info = locals_["info"]
        if "oracle_latency_s" in info:
            self.requests.append(
                (info["latency_s"], info["energy_j"], info["oracle_latency_s"], info["oracle_energy_j"])
            )

    def evaluate_now(self) -> None:
        """One evaluation outside the schedule (before training: the behaviour-cloned policy)."""
        every, self.eval_freq, self.n_calls = self.eval_freq, 1, 0
        self.on_step()
        self.eval_freq, self.n_calls = every, 0

    def _on_step(self) -> bool:
        due = self.eval_freq > 0 and self.n_calls % self.eval_freq == 0
        if due:
            self.requests = []
        keep_going = super()._on_step()
        if due and self.requests:
            lat, energy, o_lat, o_energy = np.mean(self.requests, axis=0)
            row = {
                "timesteps": self.num_timesteps,
                "reward_per_request": self.last_mean_reward / self.requests_per_episode,
                "latency_s": float(lat),
                "energy_j": float(energy),
                "ratio_to_oracle": float(lat / o_lat),
            }
            self.history.append(row)
            for key in ("latency_s", "energy_j", "ratio_to_oracle"):
                self.logger.record(f"eval/{key}", row[key])
            self.logger.record("eval/energy_ratio_to_oracle", float(energy / o_energy))
            self.logger.dump(self.num_timesteps)
            console.print(
                f"eval @ {self.num_timesteps}: reward/request {row['reward_per_request']:.4f}, latency {lat:.3f} s, "
                f"{row['ratio_to_oracle']:.3f}x the oracle"
            )
        return keep_going


def make_vec_env(env_cfg: EnvConfig, backend: str, n_envs: int, kind: str, seed: int, monitor_dir: Path):
    def factory(rank: int):
        def make():
            torch.set_num_threads(1)
            env = Monitor(MicroSplitEnv(env_cfg, backend=backend), str(monitor_dir / f"train_{rank}"))
            env.reset(seed=seed + rank)
            return env

        return make

    fns = [factory(i) for i in range(n_envs)]
    if kind == "subproc" and n_envs > 1:
        return SubprocVecEnv(fns, start_method="spawn")
    return DummyVecEnv(fns)


# ----------------------------------------------------------------------------- 5. held-out comparison


def compare(cfg: TrainConfig, env_cfg: EnvConfig, policy_path: Path) -> dict:
    """PPO (the saved file), the oracle and ``compare.agents`` on identical snapshots of held-out worlds.

    Returns the summary over all requests (``all``) and per ``compare.dynamics`` entry, each agent with
    the number of its requests that failed (a device went down mid-request) and were retried."""
    from agents import PlannerError, make_planner
    from serving.comparison_report import print_summary, summarize
    from serving.evaluation import Outcome, run_comparison

    cc = cfg.compare
    records, per_dynamics = [], {}
    for d, dynamics in enumerate(cc.dynamics):
        env = MicroSplitEnv(EnvConfig.model_validate({**env_cfg.model_dump(), "dynamics": [dynamics]}))
        mine, failed = [], {}
        for w in range(cc.worlds):
            env.reset(seed=10_000 * (cfg.seed + 1) + 100 * d + w)
            planners = {"ppo": PPOPlanner(policy_path, env.cost_model), "oracle": _Oracle(env)}
            for name in cc.agents:  # "ppo-topK", "ppo-polish": this policy, helped by the cost model
                policy = f"{name}:{policy_path}" if name.startswith("ppo-") else name
                try:
                    planners[name] = make_planner(policy, cost_model=env.cost_model)
                except PlannerError as exc:
                    console.print(f"[yellow]compare: skipping {name}: {exc}")

            def snapshot_at(i: int, env=env):
                return env.world.snapshot(env_cfg.start_s + i * cc.gap_s, env_cfg.window_s, env_cfg.history)

            def execute(agent: str, index: int, t: float, plan, env=env, failed=failed) -> Outcome:
                reference = env.cost_model.predict(_reference(env, t), env.world, t)
                outcome = env.predicted_outcome(plan, t)
                failed[agent] = failed.get(agent, 0) + outcome.failed
                return Outcome(*env.charged(outcome, reference))

            console.print(f"held-out world {w}: {env.world.spec.name}, compare.dynamics.{d}")
            mine += run_comparison(
                planners, snapshot_at, cc.requests, env.graph, env.objective, execute, console=console
            )
        per_dynamics[d] = {a: {**s, "failed_requests": failed.get(a, 0)} for a, s in summarize(mine).items()}
        print_summary(
            summarize(mine), console, f"compare.dynamics.{d}: {cc.worlds} worlds x {cc.requests} requests"
        )
        records += mine
    summary = summarize(records)
    print_summary(
        summary, console, f"held-out comparison, all: {len(records) // len(summary)} requests per agent"
    )
    return {"all": summary, "per_dynamics": per_dynamics}


def _reference(env: MicroSplitEnv, t: float):
    """The reference plan at ``t`` (what a failed request is retried on)."""
    view = net_view(env.world.snapshot(t, env.config.window_s, env.config.history))
    return complete(env.graph, view, env.shapes[0])


class _Oracle(Planner):
    """The optimiser restricted to the action list: the best shape for the snapshot (cost model)."""

    name = "oracle"

    def __init__(self, env: MicroSplitEnv) -> None:
        super().__init__(env.cost_model)
        self.env = env

    def plan(self, snapshot, graph, objective):
        view = net_view(snapshot)
        plans = [complete(graph, view, shape) for shape in self.env.shapes]
        return min(
            plans, key=lambda p: objective.score(self.env.cost_model.predict(p, snapshot, snapshot.time))
        )


# ----------------------------------------------------------------------------------------- plot


def plot_learning_curve(
    out: Path, history: list[dict], monitor_dir: Path, n_envs: int, bc_metrics: dict
) -> Path:
    """Reward per request (training episodes, smoothed, and the fixed validation worlds) and the
    validation latency relative to the oracle's on the same requests, over PPO timesteps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for csv in sorted(monitor_dir.glob("train_*.monitor.csv")):
        if len(csv.read_text().splitlines()) < 4:  # header lines and fewer than two episodes
            continue
        data = np.atleast_2d(np.genfromtxt(csv, delimiter=",", skip_header=2))
        if data.shape[0] >= 2:
            per_request = data[:, 0] / data[:, 1]
            window = max(1, len(per_request) // 20)
            smooth = np.convolve(per_request, np.ones(window) / window, mode="valid")
            steps = np.cumsum(data[:, 1])[window - 1 :] * n_envs
            ax1.plot(steps, smooth, alpha=0.6, label=f"training episodes ({csv.name.split('.')[0]})")
    if history:
        steps = [h["timesteps"] for h in history]
        ax1.plot(steps, [h["reward_per_request"] for h in history], "o-", label="validation (fixed worlds)")
        ax2.plot(steps, [h["ratio_to_oracle"] for h in history], "o-", label="policy / oracle, same requests")
    ax1.set_xlabel("PPO timesteps (0: after behaviour cloning)")
    ax1.set_ylabel("reward per request (-latency / reference)")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.axhline(1.0, color="gray", lw=0.8)
    ax2.set_xlabel("PPO timesteps (0: after behaviour cloning)")
    ax2.set_ylabel("validation mean latency / oracle's")
    if bc_metrics:
        ax2.set_title(
            f"BC validation regret: {bc_metrics.get('validation_snapshot_regret_pct', float('nan')):.1f} % "
            f"(snapshot), {bc_metrics.get('validation_world_regret_pct', float('nan')):.1f} % (world)",
            fontsize=9,
        )
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = out / "learning_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------- main


def _kind(path: Path) -> str | None:
    """The config's ``kind`` (``staged``: train_staged.py's policy for any cluster), None if unreadable."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None  # load_config reports it
    return data.get("kind") if isinstance(data, dict) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a MicroSplit policy (see the module docstring).")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--backend", choices=("sim", "live"), default="sim")
    parser.add_argument("--timesteps", type=int, default=None, help="PPO timesteps (overrides ppo.timesteps)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/NAME)")
    parser.add_argument(
        "--init", type=Path, default=None, help="policy file to fine-tune (keeps its actions)"
    )
    parser.add_argument("--export", type=Path, default=None, help="also copy the final policy file here")
    args = parser.parse_args(argv)
    if _kind(args.config) == "staged":  # a policy for any cluster: train_staged.py
        import train_staged

        return train_staged.main(argv)
    try:
        cfg, env_cfg = load_config(args.config)
        env_cfg = pin_profile(env_cfg)
    except (ConfigError, ProfileError) as exc:
        print(f"config error\n{exc}", file=sys.stderr)
        return 2
    if args.timesteps is not None:
        cfg.ppo.timesteps = args.timesteps
    out = args.out or Path("runs") / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(1)
    workers = cfg.ppo.n_envs
    started = time.perf_counter()

    # 2. actions
    init_state = None
    if args.init is not None:
        init_state, meta = load_policy(args.init)
        env_cfg = env_cfg.model_copy(update={"shapes": meta.shapes, "n_actions": meta.n_actions})
    elif env_cfg.shapes is None:
        shapes = build_actions(cfg, env_cfg, workers)
        env_cfg = env_cfg.model_copy(update={"shapes": [s.to_list() for s in shapes]})
    resolved = cfg.model_copy(update={"env": env_cfg})
    (out / "config.yaml").write_text(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False))

    # 4. (set up first: behaviour cloning trains this model's policy)
    monitor_dir = out / "monitor"
    monitor_dir.mkdir(exist_ok=True)
    pc = cfg.ppo
    if args.backend == "live":  # one cluster of real worker processes, in this process
        pc = pc.model_copy(update={"n_envs": 1, "vec_env": "dummy"})
    vec_env = make_vec_env(env_cfg, args.backend, pc.n_envs, pc.vec_env, cfg.seed, monitor_dir)
    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[pc.activation]
    model = MaskablePPO(
        "MlpPolicy",
        vec_env,
        learning_rate=pc.learning_rate,
        n_steps=pc.n_steps,
        batch_size=pc.batch_size,
        n_epochs=pc.n_epochs,
        gamma=pc.gamma,
        gae_lambda=pc.gae_lambda,
        clip_range=pc.clip_range,
        ent_coef=pc.ent_coef,
        vf_coef=pc.vf_coef,
        policy_kwargs={"net_arch": {"pi": pc.net_arch, "vf": pc.net_arch}, "activation_fn": activation},
        seed=cfg.seed,
        device="cpu",
        verbose=0,
    )
    model.set_logger(configure_logger(str(out / "tb"), ["tensorboard", "csv"]))
    probe = MicroSplitEnv(env_cfg)
    meta = PolicyMeta.of_env(probe, pc.activation)

    # 3. behaviour cloning
    bc_metrics: dict = {}
    if init_state is not None:
        model.policy.load_state_dict(init_state)
    elif cfg.bc.samples:
        start = time.perf_counter()
        parts = parallel(_score_worker, env_cfg.model_dump(), cfg.seed + 2, cfg.bc.samples, workers, True)
        data = tuple(np.concatenate([p[i] for p in parts]) for i in range(4))
        np.savez_compressed(out / "bc_data.npz", obs=data[0], masks=data[1], snapshot=data[2], world=data[3])
        bc_metrics = behaviour_cloning(model, data, cfg.bc, cfg.seed)
        console.print(
            f"behaviour cloning on {len(data[0])} snapshots ({time.perf_counter() - start:.0f} s): "
            + ", ".join(f"{k} {v:.3f}" for k, v in bc_metrics.items())
        )
        for key, value in bc_metrics.items():
            model.logger.record(f"bc/{key}", value)
        save_policy(out / "policy_bc.zip", model.policy, meta)

    # 4. PPO
    eval_cfg = env_cfg.model_copy(update={"requests_per_episode": cfg.eval.requests_per_episode})
    eval_env = DummyVecEnv(
        [
            lambda: Monitor(
                FixedWorlds(OracleInfo(MicroSplitEnv(eval_cfg)), cfg.eval.episodes, 1000 * (cfg.seed + 1))
            )
        ]
    )
    best_path = out / "policy_best.zip"
    evaluator = OracleEvalCallback(
        eval_env,
        n_eval_episodes=cfg.eval.episodes,
        eval_freq=max(1, cfg.eval.every // pc.n_envs),
        log_path=str(out / "eval"),
        deterministic=True,
        callback_on_new_best=SavePolicy(best_path, meta),
        requests_per_episode=cfg.eval.requests_per_episode,
        verbose=0,
    )
    callbacks = [
        RequestStats(),
        CheckpointCallback(
            max(1, pc.checkpoint_every // pc.n_envs), str(out / "checkpoints"), name_prefix="ppo"
        ),
        evaluator,
    ]
    evaluator.init_callback(model)
    evaluator.evaluate_now()
    if pc.timesteps:
        model.learn(pc.timesteps, callback=callbacks, progress_bar=True, reset_num_timesteps=True)
        evaluator.evaluate_now()
    vec_env.close()
    policy_path = out / "policy.zip"
    if best_path.exists():
        shutil.copyfile(best_path, policy_path)
    else:
        save_policy(policy_path, model.policy, meta)
    plot_learning_curve(out, evaluator.history, monitor_dir, pc.n_envs, bc_metrics)
    summary = {
        "name": cfg.name,
        "train_seconds": time.perf_counter() - started,
        "bc": bc_metrics,
        "eval": evaluator.history,
    }

    # 5. held-out comparison
    if cfg.compare.requests:
        summary["heldout"] = compare(cfg, env_cfg, policy_path)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    if args.export is not None:
        args.export.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(policy_path, args.export)
    console.print(f"run folder: {out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
