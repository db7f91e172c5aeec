"""A fixed-slot run (agents/ppo.py's policy): actions -> behaviour cloning -> MaskablePPO -> held-out comparison.

4. **PPO** (sb3-contrib MaskablePPO, ``ppo.timesteps``): vectorised envs (SubprocVecEnv or DummyVecEnv;
   ``--backend live``: one env on one LocalCluster, labels and validation stay simulated) with domain
   randomisation over clusters, traces, loads and failures; reward = -latency / reference (env docstring).
   ``gamma`` defaults to 0: a plan does not change the world, only when the next request comes, so each
   request is a contextual bandit step. Callbacks: MaskableEvalCallback on a validation env (the same
   unseen worlds of the training distribution at every evaluation, the first one right after behaviour
   cloning) that also logs latency, energy and the ratio to the oracle, and keeps the policy with the best
   validation reward (possibly the behaviour-cloned one); CheckpointCallback; training scalars.

Phases 2, 3 and 5 are training/actions.py, training/cloning.py and training/compare.py.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
import yaml
from sb3_contrib import MaskablePPO
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.logger import configure as configure_logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from agents.ppo import PolicyMeta, load_policy, save_policy
from env.config import EnvConfig
from env.partition_env import MicroSplitEnv
from training.actions import build_actions
from training.callbacks import FixedWorlds, OracleEvalCallback, RequestStats, SavePolicy
from training.cloning import clone
from training.compare import compare
from training.config import PPOConfig, TrainConfig
from training.oracle import OracleInfo
from training.report import console, plot_learning_curve


def run(cfg: TrainConfig, out: Path, backend: str = "sim", init: Path | None = None) -> Path:
    """Every phase of the run into the folder ``out``; the shipped policy file."""
    started = time.perf_counter()
    workers = cfg.ppo.n_envs
    env_cfg, init_state = _actions(cfg, workers, init)
    resolved = cfg.model_copy(update={"env": env_cfg})
    (out / "config.yaml").write_text(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False))

    monitor_dir = out / "monitor"  # 4. set up first: behaviour cloning trains this model's policy
    monitor_dir.mkdir(exist_ok=True)
    pc = cfg.ppo
    if backend == "live":  # one cluster of real worker processes, in this process
        pc = pc.model_copy(update={"n_envs": 1, "vec_env": "dummy"})
    vec_env = make_vec_env(env_cfg, backend, pc.n_envs, pc.vec_env, cfg.seed, monitor_dir)
    model = make_model(pc, vec_env, cfg.seed, out)
    meta = PolicyMeta.of_env(MicroSplitEnv(env_cfg), pc.activation)

    bc_metrics: dict = {}  # 3. behaviour cloning
    if init_state is not None:
        model.policy.load_state_dict(init_state)
    elif cfg.bc.samples:
        bc_metrics = clone(model, cfg, env_cfg, workers, out, meta, console.print)

    evaluator = _ppo(model, cfg, env_cfg, pc, out, meta)  # 4. PPO
    vec_env.close()
    policy_path = out / "policy.zip"
    if (out / "policy_best.zip").exists():
        shutil.copyfile(out / "policy_best.zip", policy_path)
    else:
        save_policy(policy_path, model.policy, meta)
    plot_learning_curve(out, evaluator.history, monitor_dir, pc.n_envs, bc_metrics)
    summary = {"name": cfg.name, "train_seconds": time.perf_counter() - started, "bc": bc_metrics}
    summary["eval"] = evaluator.history
    if cfg.compare.requests:  # 5. held-out comparison
        summary["heldout"] = compare(cfg, env_cfg, policy_path)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    console.print(f"run folder: {out} ({time.perf_counter() - started:.0f} s)")
    return policy_path


def _actions(cfg: TrainConfig, workers: int, init: Path | None) -> tuple[EnvConfig, dict | None]:
    """2. The env config with its action list pinned: the policy's own (``init``, whose weights are also
    returned), the config's, or built by the oracle."""
    env_cfg = cfg.env
    if init is not None:
        state, meta = load_policy(init)
        return env_cfg.model_copy(update={"shapes": meta.shapes, "n_actions": meta.n_actions}), state
    if env_cfg.shapes is None:
        shapes = build_actions(cfg, env_cfg, workers, console.print)
        env_cfg = env_cfg.model_copy(update={"shapes": [s.to_list() for s in shapes]})
    return env_cfg, None


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


def make_model(pc: PPOConfig, vec_env, seed: int, out: Path) -> MaskablePPO:
    """MaskablePPO with the config's hyperparameters, logging to TensorBoard and CSV in ``out/tb``."""
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
        seed=seed,
        device="cpu",
        verbose=0,
    )
    model.set_logger(configure_logger(str(out / "tb"), ["tensorboard", "csv"]))
    return model


def _ppo(model, cfg: TrainConfig, env_cfg: EnvConfig, pc: PPOConfig, out: Path, meta: PolicyMeta):
    """Evaluate the starting policy, learn, evaluate again; the evaluator (its history, the best policy
    in ``policy_best.zip``)."""
    eval_cfg = env_cfg.model_copy(update={"requests_per_episode": cfg.eval.requests_per_episode})
    validation = FixedWorlds(OracleInfo(MicroSplitEnv(eval_cfg)), cfg.eval.episodes, 1000 * (cfg.seed + 1))
    evaluator = OracleEvalCallback(
        DummyVecEnv([lambda: Monitor(validation)]),
        n_eval_episodes=cfg.eval.episodes,
        eval_freq=max(1, cfg.eval.every // pc.n_envs),
        log_path=str(out / "eval"),
        deterministic=True,
        callback_on_new_best=SavePolicy(out / "policy_best.zip", meta),
        requests_per_episode=cfg.eval.requests_per_episode,
        verbose=0,
    )
    checkpoints = CheckpointCallback(
        max(1, pc.checkpoint_every // pc.n_envs), str(out / "checkpoints"), name_prefix="ppo"
    )
    evaluator.init_callback(model)
    evaluator.evaluate_now()
    if pc.timesteps:
        model.learn(pc.timesteps, callback=[RequestStats(), checkpoints, evaluator], progress_bar=True)
        evaluator.evaluate_now()
    return evaluator
