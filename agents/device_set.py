"""The device-set network: a policy input that is a set of device tokens, pooled symmetrically.

Each device token (env/staged_env.py) goes through the same small MLP; the results are pooled by mean,
max and sum/16 over the devices present, and the pooled vector with the context goes through one more
layer. Pooling is symmetric, so the features do not change when devices are reordered or renamed, and
any number of devices fits the same weights (Deep Sets, Zaheer et al. 2017; Decima's summary nodes play
this role over a job graph). Link information enters through the tokens as route aggregates (from the
source, to the sink, from the previous stage, to the other devices), which is what the completion and the
cost model price; a message-passing layer over links would cost decision time at 32 devices and training
time on 2 cores for information the route features already carry.

``DeviceSetExtractor`` is the SB3 features extractor used in training (padded tokens, a presence flag
first); ``DeviceSetNet`` is the same forward pass in numpy over the exact device set, for deciding.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from env.staged_env import TOKEN_FEATURES

SUM_SCALE = 16.0  # the sum pooling is divided by this: counts of good devices stay near 1


class DeviceSetExtractor(BaseFeaturesExtractor):
    """Padded device tokens and a context vector (one flat observation) -> ``features_dim`` features."""

    def __init__(
        self, observation_space: gym.spaces.Box, max_devices: int, hidden: int = 64, features_dim: int = 128
    ):
        super().__init__(observation_space, features_dim)
        self.max_devices = max_devices
        context = observation_space.shape[0] - max_devices * TOKEN_FEATURES
        self.token = nn.Sequential(
            nn.Linear(TOKEN_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Linear(3 * hidden + context, features_dim), nn.ReLU())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        split = self.max_devices * TOKEN_FEATURES
        tokens = obs[:, :split].reshape(obs.shape[0], self.max_devices, TOKEN_FEATURES)
        present = tokens[..., :1]
        h = self.token(tokens) * present  # ReLU outputs are >= 0, so padding never wins the max
        pooled = [h.sum(1) / present.sum(1).clamp(min=1.0), h.max(1).values, h.sum(1) / SUM_SCALE]
        return self.head(torch.cat([*pooled, obs[:, split:]], dim=1))


class DeviceSetNet:
    """The actor of a MaskablePPO policy with a ``DeviceSetExtractor``, as float64 numpy (no torch
    dispatch: a decision's few forward passes take tens of microseconds)."""

    def __init__(self, state: dict[str, torch.Tensor], activation: str):
        prefix = (
            "pi_features_extractor."
            if any(k.startswith("pi_features_extractor.") for k in state)
            else "features_extractor."
        )

        def layer(name: str) -> tuple[np.ndarray, np.ndarray]:
            return state[f"{name}.weight"].double().numpy(), state[f"{name}.bias"].double().numpy()

        self.token = [layer(f"{prefix}token.0"), layer(f"{prefix}token.2")]
        self.head = layer(f"{prefix}head.0")
        net = "mlp_extractor.policy_net."
        hidden = sorted({int(k[len(net) :].split(".")[0]) for k in state if k.startswith(net)})
        self.actor = [layer(f"{net}{i}") for i in hidden]
        self.action = layer("action_net")
        self.activation = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}[activation]

    def logits(self, tokens: np.ndarray, context: np.ndarray) -> np.ndarray:
        h = tokens
        for w, b in self.token:
            h = np.maximum(h @ w.T + b, 0.0)
        pooled = [h.mean(0), h.max(0), h.sum(0) / SUM_SCALE]
        w, b = self.head
        x = np.maximum(w @ np.concatenate([*pooled, context]) + b, 0.0)
        for w, b in self.actor:
            x = self.activation(w @ x + b)
        w, b = self.action
        return w @ x + b
