"""What watches PPO in a fixed-slot run: fixed validation worlds, TensorBoard scalars of the training
requests, the best policy saved in the agents/ppo.py format, and evaluations logged against the oracle."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from stable_baselines3.common.callbacks import BaseCallback

from agents.ppo import PolicyMeta, save_policy
from training.report import console


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
                f"eval @ {self.num_timesteps}: reward/request {row['reward_per_request']:.4f}, "
                f"latency {lat:.3f} s, {row['ratio_to_oracle']:.3f}x the oracle"
            )
        return keep_going
