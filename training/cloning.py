"""Phase 3 of a fixed-slot run: behaviour cloning, a warm start (PPO alone would spend most of its time
budget finding what the cost model can tell directly).

On ``bc.samples`` fresh snapshots every action is scored by the cost model (what an analytic optimiser over
the action list sees); the policy is fitted to a soft label ``softmax(-(regret) / bc.temperature)`` over the
valid actions (cross-entropy; ``bc.labels: world`` uses what each action earns in the world instead) and its
value head to the label action's reward.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from agents.ppo import PolicyMeta, save_policy
from env.config import EnvConfig
from training.config import BCConfig, TrainConfig
from training.sampling import parallel, score_worker


def clone(
    model, cfg: TrainConfig, env_cfg: EnvConfig, workers: int, out: Path, meta: PolicyMeta, say: Callable
) -> dict:
    """Label, fit and save ``policy_bc.zip`` (the labels in ``bc_data.npz``); the cloning metrics."""
    start = time.perf_counter()
    parts = parallel(score_worker, env_cfg.model_dump(), cfg.seed + 2, cfg.bc.samples, workers, True)
    data = tuple(np.concatenate([p[i] for p in parts]) for i in range(4))
    np.savez_compressed(out / "bc_data.npz", obs=data[0], masks=data[1], snapshot=data[2], world=data[3])
    metrics = behaviour_cloning(model, data, cfg.bc, cfg.seed)
    say(
        f"behaviour cloning on {len(data[0])} snapshots ({time.perf_counter() - start:.0f} s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
    )
    for key, value in metrics.items():
        model.logger.record(f"bc/{key}", value)
    save_policy(out / "policy_bc.zip", model.policy, meta)
    return metrics


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
            loss = partial(soft_cross_entropy, target[idx])
            cloning_step(policy, optimizer, obs_t[idx], masks_t[idx], value[idx], loss)
    policy.set_training_mode(False)
    metrics = {}
    for name, idx in (("train", train), ("validation", val)):
        if len(idx) == 0:
            continue
        pick = greedy_actions(policy, obs_t[idx], masks_t[idx]).numpy()
        for kind, c in (("snapshot", snap), ("world", world)):
            chosen = c[idx, pick] / np.min(c[idx], axis=1)
            metrics[f"{name}_{kind}_regret_pct"] = float(100 * (chosen.mean() - 1))
    return metrics


def soft_cross_entropy(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the logits' softmax against soft labels, averaged over the batch."""
    return -(labels * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def cloning_step(
    policy, optimizer, obs: torch.Tensor, masks: torch.Tensor, values: torch.Tensor, policy_loss: Callable
) -> None:
    """One gradient step on a minibatch: ``policy_loss`` of the masked logits plus half the value head's
    mean squared error to ``values``."""
    latent_pi, latent_vf = policy.mlp_extractor(policy.extract_features(obs))
    loss_pi = policy_loss(policy.action_net(latent_pi).masked_fill(~masks, -1e8))
    loss_v = torch.nn.functional.mse_loss(policy.value_net(latent_vf).squeeze(1), values)
    optimizer.zero_grad()
    (loss_pi + 0.5 * loss_v).backward()
    optimizer.step()


def greedy_actions(policy, obs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The policy's most likely valid action per observation."""
    with torch.no_grad():
        logits = policy.action_net(policy.mlp_extractor(policy.extract_features(obs))[0])
    return logits.masked_fill(~masks, -torch.inf).argmax(dim=1)
