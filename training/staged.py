"""A run of the policy for any cluster (``kind: staged``): optimiser labels, behaviour cloning, MaskablePPO.

1. **Labels** (training/staged_labels.py): the plans of the optimiser ``bc.labeller`` names on random states,
   replayed as sub-steps.
2. **Behaviour cloning**: cross-entropy of the masked policy on those actions, MSE of the value head.
3. **PPO** (``ppo.timesteps``): sb3-contrib MaskablePPO with the device-set features extractor
   (agents/device_set.py), ``gamma = gae_lambda = 1`` inside the one-request episodes.
4. **Validation**: after cloning and after PPO, the policy plans on ``bc.validation`` of the labelled states
   (never trained on) and its latency in the world is compared with the optimiser's own plan's on the same
   state (``mean_ratio_to_optimiser``, what ``evaluate.py compare`` reads) and with its label's
   (``mean_ratio_to_label``: the optimiser's shape completed as the policy's are); the better policy is
   the one written (``policy.zip``); ``summary.json`` has every figure and the times.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml
from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv
from torch.nn.functional import cross_entropy

from agents.device_set import DeviceSetExtractor
from agents.staged_policy import StagedMeta, StagedPlanner, save_staged
from env.staged_env import StagedSplitEnv
from training.cloning import cloning_step, greedy_actions
from training.config import StagedBC, StagedConfig
from training.report import console
from training.staged_labels import collect_labels, random_state


def behaviour_cloning(model: MaskablePPO, samples: list[dict], bc: StagedBC, seed: int) -> dict:
    """Fit the policy to the optimiser's actions and the value head to the requests' rewards; the
    policy's accuracy on them afterwards."""
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
            loss = partial(cross_entropy, target=actions[idx])
            cloning_step(policy, optimizer, obs[idx], masks[idx], values[idx], loss)
    policy.set_training_mode(False)
    pick = greedy_actions(policy, obs, masks)
    return {"substeps": len(obs), "train_action_accuracy": float((pick == actions).float().mean())}


def validate(env: StagedSplitEnv, planner: StagedPlanner, samples: list[dict]) -> dict:
    """The planner's latency in the world on the validation states over the optimiser's own plan's on
    each (what ``evaluate.py compare`` measures), and over its label (the optimiser's shape, completed as
    the policy's shapes are: what cloning can reach). The two part where the completion's choice of
    devices is far from the optimiser's (a model whose compute profile is far from its FLOPs)."""
    to_optimiser, to_label = [], []
    for s in samples:
        random_state(env, s["seed"])
        shape = planner.shapes(env.sim.snapshot, env.graph, env.sim.view)[0]
        for _, end, k in shape.stages:
            _, _, _, _, info = env.step(env.actions.encode(end, k))
        to_optimiser.append(info["latency_s"] / s["optimiser_latency_s"])
        to_label.append(info["latency_s"] / s["latency_s"])
    ratios = np.array(to_optimiser)
    return {
        "mean_ratio_to_optimiser": float(ratios.mean()),
        "median_ratio": float(np.median(ratios)),
        "p90_ratio": float(np.percentile(ratios, 90)),
        "mean_ratio_to_label": float(np.mean(to_label)),
        "states": len(ratios),
    }


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


def run(cfg: StagedConfig, out: Path) -> Path:
    """Every phase of the run into the folder ``out``; the shipped policy file."""
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
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
    meta = _meta(cfg, probe)
    start = time.perf_counter()
    summary["bc"] = behaviour_cloning(model, train, cfg.bc, cfg.seed)
    summary["bc"]["seconds"] = time.perf_counter() - start
    candidates = {"policy_bc.zip": _validated(probe, model, meta, out / "policy_bc.zip", val, summary["bc"])}
    console.print(f"behaviour cloning: {summary['bc']}")
    if cfg.ppo.timesteps:
        start = time.perf_counter()
        model.learn(cfg.ppo.timesteps, progress_bar=True)
        summary["ppo"] = {"seconds": time.perf_counter() - start, "timesteps": cfg.ppo.timesteps}
        candidates["policy_ppo.zip"] = _validated(
            probe, model, meta, out / "policy_ppo.zip", val, summary["ppo"]
        )
        console.print(f"PPO: {summary['ppo']}")
    vec_env.close()
    best = min(candidates, key=candidates.get)  # the first of equals: the cloned policy
    policy_path = out / "policy.zip"
    policy_path.write_bytes((out / best).read_bytes())
    summary["shipped"] = best
    summary["train_seconds"] = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    console.print(f"run folder: {out} ({summary['train_seconds']:.0f} s, shipped {best})")
    return policy_path


def _validated(
    probe: StagedSplitEnv, model, meta: StagedMeta, path: Path, val: list[dict], report: dict
) -> float:
    """Save the model's policy to ``path``, validate it into ``report``; its mean ratio to the optimiser."""
    save_staged(path, model.policy, meta)
    report["validation"] = validate(probe, StagedPlanner(path, probe.sim.cost_model), val)
    return report["validation"]["mean_ratio_to_optimiser"]


def _meta(cfg: StagedConfig, probe: StagedSplitEnv) -> StagedMeta:
    return StagedMeta(
        model=probe.graph.name,
        n_units=len(probe.graph.units),
        cut_points=list(probe.graph.cut_points),
        max_factor=probe.actions.max_factor,
        max_stages=probe.actions.max_stages,
        activation=cfg.ppo.activation,
        completion="flops" if probe.sim.profile is None else "profile",
        objective=cfg.env.objective.model_dump(),
    )


def _train_env(cfg: StagedConfig, rank: int) -> StagedSplitEnv:
    torch.set_num_threads(1)
    env = StagedSplitEnv(cfg.env)
    env.reset(seed=cfg.seed * 1000 + rank)
    return env
