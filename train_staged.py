"""Train a stage-by-stage policy for any cluster: behaviour cloning from the optimiser, then MaskablePPO.

    python train.py --config configs/train/vgg16_any.yaml [--timesteps N] [--out runs/NAME] [--export PATH]

(train.py hands a config with ``kind: staged`` to this module.) The algorithm, top to bottom:

1. **Config**: one YAML validated by ``StagedConfig`` (``file: field: message`` on a bad field). ``env:`` is
   the environment (env/staged_env.py on env/partition_env.py's worlds): procedurally generated meshes of the
   DISNET family (``env.meshes``, seeds below the evaluation range), random source and sink, recorded and
   synthetic traces, load and failures.
2. **Labels**: on ``bc.samples`` random states (a fresh world at a random time) the analytic optimiser
   (agents/optimizer.py, without its local search beyond the completion's plan space) plans; its plan's
   shape, clamped to the action space, is replayed through the env's sub-steps, recording each observation,
   mask and action, and the request's reward (the value target of every sub-step).
3. **Behaviour cloning**: cross-entropy of the masked policy on those actions, MSE of the value head.
4. **PPO** (``ppo.timesteps``): sb3-contrib MaskablePPO with the device-set features extractor
   (agents/device_set.py), ``gamma = gae_lambda = 1`` inside the one-request episodes.
5. **Validation**: after cloning and after PPO, the policy plans on ``bc.validation`` of the labelled states
   (never trained on) and its latency in the world is compared with the optimiser's on the same state; the
   better policy is the one written (``policy.zip``); ``summary.json`` has every figure and the times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.progress import track
from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from agents.device_set import DeviceSetExtractor
from agents.optimizer import OptimalPlanner
from agents.staged_policy import StagedMeta, StagedPlanner, save_staged
from env.partition_env import EnvConfig, EnvConfigError
from env.shapes import Shape
from env.snapshot import NetworkError
from env.staged_env import StagedSplitEnv
from runtime.config import describe_validation_error

console = Console()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StagedBC(_Section):
    samples: int = Field(1500, ge=1)
    validation: float = Field(0.1, gt=0, lt=1)
    optimiser_evaluations: int = Field(400, ge=1)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(1e-3, gt=0)


class StagedPPO(_Section):
    timesteps: int = Field(50000, ge=0)
    n_envs: int = Field(2, ge=1)
    n_steps: int = Field(512, ge=1)
    batch_size: int = Field(256, ge=1)
    n_epochs: int = Field(4, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    clip_range: float = Field(0.1, gt=0)
    ent_coef: float = Field(0.0, ge=0)
    net_arch: list[int] = Field(default_factory=lambda: [128])
    activation: str = Field("tanh", pattern="^(tanh|relu)$")
    token_hidden: int = Field(64, ge=1)
    features: int = Field(128, ge=1)


class StagedConfig(_Section):
    name: str
    kind: str = Field("staged", pattern="^staged$")
    seed: int = 0
    env: EnvConfig
    bc: StagedBC = StagedBC()
    ppo: StagedPPO = StagedPPO()


def load_config(path: Path) -> StagedConfig:
    """The validated config, env paths anchored at the config's folder; ValueError names file and field."""
    try:
        data = yaml.safe_load(path.read_text())
        cfg = StagedConfig.model_validate(data)
        base = cfg.env.base_dir or path.parent.resolve()
        return cfg.model_copy(update={"env": cfg.env.resolved(f"{path}: env", base)})
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read config ({exc})") from None
    except ValidationError as exc:
        raise ValueError(describe_validation_error(str(path), exc)) from None
    except (EnvConfigError, NetworkError) as exc:
        raise ValueError(str(exc)) from None


# ---------------------------------------------------------------------------------------- 2. labels


def _state(env: StagedSplitEnv, seed: int) -> None:
    """A fresh world at a random time, both drawn from ``seed`` (the same seed, the same state)."""
    rng = np.random.default_rng(seed)
    t = env.config.start_s + float(rng.uniform(0.0, 300.0))
    env.reset(seed=int(rng.integers(2**31)), options={"time": t})


def label_shape(shape: Shape, env: StagedSplitEnv) -> Shape:
    """``shape`` within the action space: factors clamped to K and to what the state allows."""
    cap = max(1, min(env.actions.max_factor, env.inner.view.n_usable))
    factors = tuple(max(1, min(k, cap, env.graph.extent(e))) for (_, e, k) in shape.stages)
    return Shape(shape.bounds, factors)


LABEL_EXACT_LIMIT = 2000  # shapes enumerated exhaustively (4 devices: ~40,000 otherwise, 10 s a label)
_WORKER_ENV: dict[str, StagedSplitEnv] = {}


def label_worker(env_cfg: dict, seeds: list[int], evaluations: int) -> list[dict]:
    """Per seed: the optimiser's shape replayed as sub-steps (observations, masks, actions, reward)."""
    torch.set_num_threads(1)
    key = json.dumps(env_cfg, sort_keys=True)
    if _WORKER_ENV.get(key) is None:  # one env per worker process: building 256 meshes' models once
        _WORKER_ENV.clear()
        _WORKER_ENV[key] = StagedSplitEnv(EnvConfig.model_validate(env_cfg))
    env = _WORKER_ENV[key]
    out = []
    for seed in seeds:
        _state(env, seed)
        optimiser = OptimalPlanner(
            env.inner.cost_model, refine=False, max_evaluations=evaluations, exact_limit=LABEL_EXACT_LIMIT
        )
        plan = optimiser.plan(env.inner.snapshot, env.graph, env.inner.objective)
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
             "latency_s": info["latency_s"]}
        )  # fmt: skip
    return out


def collect_labels(cfg: StagedConfig, seeds: list[int]) -> list[dict]:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    workers = cfg.ppo.n_envs
    chunks = [seeds[i :: workers * 8] for i in range(workers * 8)]  # small chunks: progress, balance
    data = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        jobs = [
            pool.submit(label_worker, cfg.env.model_dump(), c, cfg.bc.optimiser_evaluations) for c in chunks
        ]
        for job in track(jobs, description="optimiser labels", console=console):
            data += job.result()
    return data


# ------------------------------------------------------------------------------ 3. behaviour cloning


def behaviour_cloning(model: MaskablePPO, samples: list[dict], bc: StagedBC, seed: int) -> dict:
    obs = torch.as_tensor(np.concatenate([np.array(s["obs"]) for s in samples]))
    masks = torch.as_tensor(np.concatenate([np.array(s["masks"]) for s in samples]))
    actions = torch.as_tensor(np.concatenate([s["actions"] for s in samples]))
    values = torch.as_tensor(
        np.concatenate([[s["reward"]] * len(s["actions"]) for s in samples]), dtype=torch.float32
    )
    policy = model.policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=bc.learning_rate)
    rng = np.random.default_rng(seed)
    policy.set_training_mode(True)
    for _ in range(bc.epochs):
        order = rng.permutation(len(obs))
        for i in range(0, len(order), bc.batch_size):
            idx = torch.as_tensor(order[i : i + bc.batch_size])
            features = policy.extract_features(obs[idx])
            latent_pi, latent_vf = policy.mlp_extractor(features)
            logits = policy.action_net(latent_pi).masked_fill(~masks[idx], -1e8)
            loss_pi = torch.nn.functional.cross_entropy(logits, actions[idx])
            loss_v = torch.nn.functional.mse_loss(policy.value_net(latent_vf).squeeze(1), values[idx])
            optimizer.zero_grad()
            (loss_pi + 0.5 * loss_v).backward()
            optimizer.step()
    policy.set_training_mode(False)
    with torch.no_grad():
        logits = policy.action_net(policy.mlp_extractor(policy.extract_features(obs))[0])
        pick = logits.masked_fill(~masks, -torch.inf).argmax(dim=1)
    return {"substeps": len(obs), "train_action_accuracy": float((pick == actions).float().mean())}


# ------------------------------------------------------------------------------------ 5. validation


def validate(env: StagedSplitEnv, planner: StagedPlanner, samples: list[dict]) -> dict:
    """The planner's latency in the world on the validation states, over the optimiser's on each."""
    ratios = []
    for s in samples:
        _state(env, s["seed"])
        shape = planner.shapes(env.inner.snapshot, env.graph, env.inner.view)[0]
        for _, end, k in shape.stages:
            _, _, _, _, info = env.step(env.actions.encode(end, k))
        ratios.append(info["latency_s"] / s["latency_s"])
    ratios = np.array(ratios)
    return {
        "mean_ratio_to_optimiser": float(ratios.mean()),
        "median_ratio": float(np.median(ratios)),
        "p90_ratio": float(np.percentile(ratios, 90)),
        "states": len(ratios),
    }


# ----------------------------------------------------------------------------------------- main


def make_model(cfg: StagedConfig, vec_env, max_devices: int) -> MaskablePPO:
    pc = cfg.ppo
    return MaskablePPO(
        "MlpPolicy",
        vec_env,
        learning_rate=pc.learning_rate,
        n_steps=pc.n_steps,
        batch_size=pc.batch_size,
        n_epochs=pc.n_epochs,
        gamma=1.0,
        gae_lambda=1.0,
        clip_range=pc.clip_range,
        ent_coef=pc.ent_coef,
        policy_kwargs={
            "features_extractor_class": DeviceSetExtractor,
            "features_extractor_kwargs": {
                "max_devices": max_devices,
                "hidden": pc.token_hidden,
                "features_dim": pc.features,
            },
            "net_arch": {"pi": pc.net_arch, "vf": pc.net_arch},
            "activation_fn": {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[pc.activation],
        },
        seed=cfg.seed,
        device="cpu",
        verbose=0,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a stage-by-stage policy (see train_staged.py).")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--timesteps", type=int, default=None, help="PPO timesteps (overrides ppo.timesteps)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/NAME)")
    parser.add_argument("--export", type=Path, default=None, help="also copy the final policy file here")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ValueError as exc:
        print(f"config error\n{exc}", file=sys.stderr)
        return 2
    if args.timesteps is not None:
        cfg.ppo.timesteps = args.timesteps
    out = args.out or Path("runs") / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(1)
    started = time.perf_counter()
    summary: dict = {"name": cfg.name}

    seeds = np.random.SeedSequence(cfg.seed).generate_state(cfg.bc.samples).tolist()
    labels = collect_labels(cfg, seeds)
    n_val = max(1, int(len(labels) * cfg.bc.validation))
    val, train = labels[:n_val], labels[n_val:]
    summary["labels_seconds"] = time.perf_counter() - started
    console.print(f"optimiser labels: {len(labels)} states ({summary['labels_seconds']:.0f} s)")

    fns = [lambda rank=i: _train_env(cfg, rank) for i in range(cfg.ppo.n_envs)]
    parallel = cfg.ppo.n_envs > 1 and cfg.ppo.timesteps > 0  # no PPO: one env gives the spaces
    vec_env = SubprocVecEnv(fns, start_method="spawn") if parallel else DummyVecEnv(fns[:1])
    probe = StagedSplitEnv(cfg.env)
    model = make_model(cfg, vec_env, probe.max_devices)
    meta = StagedMeta(
        model=probe.graph.name,
        n_units=len(probe.graph.units),
        cut_points=list(probe.graph.cut_points),
        max_factor=probe.actions.max_factor,
        max_stages=probe.actions.max_stages,
        activation=cfg.ppo.activation,
        objective=cfg.env.objective.model_dump(),
    )
    start = time.perf_counter()
    summary["bc"] = behaviour_cloning(model, train, cfg.bc, cfg.seed)
    save_staged(out / "policy_bc.zip", model.policy, meta)
    summary["bc"]["seconds"] = time.perf_counter() - start
    summary["bc"]["validation"] = validate(probe, StagedPlanner(out / "policy_bc.zip"), val)
    console.print(f"behaviour cloning: {summary['bc']}")
    best, best_path = summary["bc"]["validation"]["mean_ratio_to_optimiser"], out / "policy_bc.zip"

    if cfg.ppo.timesteps:
        start = time.perf_counter()
        model.learn(cfg.ppo.timesteps, progress_bar=True)
        save_staged(out / "policy_ppo.zip", model.policy, meta)
        summary["ppo"] = {"seconds": time.perf_counter() - start, "timesteps": cfg.ppo.timesteps}
        summary["ppo"]["validation"] = validate(probe, StagedPlanner(out / "policy_ppo.zip"), val)
        console.print(f"PPO: {summary['ppo']}")
        if summary["ppo"]["validation"]["mean_ratio_to_optimiser"] < best:
            best_path = out / "policy_ppo.zip"
    vec_env.close()
    policy_path = out / "policy.zip"
    policy_path.write_bytes(best_path.read_bytes())
    summary["shipped"] = best_path.name
    summary["train_seconds"] = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if args.export is not None:
        args.export.parent.mkdir(parents=True, exist_ok=True)
        args.export.write_bytes(policy_path.read_bytes())
    console.print(f"run folder: {out} ({summary['train_seconds']:.0f} s, shipped {best_path.name})")
    return 0


def _train_env(cfg: StagedConfig, rank: int) -> StagedSplitEnv:
    torch.set_num_threads(1)
    env = StagedSplitEnv(cfg.env)
    env.reset(seed=cfg.seed * 1000 + rank)
    return env


if __name__ == "__main__":
    sys.exit(main())
