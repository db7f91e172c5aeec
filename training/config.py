"""Training configs: one YAML per run, validated by pydantic (a bad field gives ``file: field: message``).

Two kinds share the loader: the fixed-slot policy (``TrainConfig``: an action list, behaviour cloning on
the oracle's costs, PPO, held-out comparison) and, with ``kind: staged``, the policy for any cluster
(``StagedConfig``: optimiser labels, cloning, PPO). ``env:`` is the environment (env/config.py) in both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agents import PLANNERS, POLICY_NAME
from env.config import EnvConfig, EnvConfigError, model_graph
from env.dynamics import DynamicsConfig
from env.profiles import host_profile
from env.snapshot import NetworkError
from runtime.config import describe_validation_error
from runtime.profiler import profile_path


class ConfigError(ValueError):
    """A training config is invalid; the message names the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- the fixed-slot policy ---------------------------------------------------------------------------


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

    @field_validator("agents")
    @classmethod
    def _known(cls, agents: list[str]) -> list[str]:
        """Planner names, or ``ppo-...`` forms of the policy being trained (``ppo-top3``): checked before
        the training, not after it."""
        for name in agents:
            if name not in PLANNERS and not (name.startswith("ppo-") and POLICY_NAME.fullmatch(f"{name}:x")):
                raise ValueError(
                    f"unknown planner {name!r}; valid: {', '.join(PLANNERS)}, or ppo-topK, ppo-polish, "
                    "ppo-topK-polish (the trained policy helped by the cost model)"
                )
        return agents


class TrainConfig(_Section):
    name: str
    seed: int = 0
    env: EnvConfig = EnvConfig()
    shapes: ShapesConfig = ShapesConfig()
    bc: BCConfig = BCConfig()
    ppo: PPOConfig = PPOConfig()
    eval: EvalConfig = EvalConfig()
    compare: CompareConfig = CompareConfig()


# ---- the policy for any cluster (kind: staged) ----------------------------------------------------------


class StagedBC(_Section):
    samples: int = Field(1500, ge=1)
    validation: float = Field(0.1, gt=0, lt=1)
    optimiser_evaluations: int = Field(400, ge=1)
    # who labels the states: the snapshot optimiser, or the robust optimiser (``optimal``: plans priced over
    # the links' history and failure risk, the yardstick the policy is measured against)
    labeller: Literal["snapshot-optimal", "optimal"] = "snapshot-optimal"
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


# ---- loading ---------------------------------------------------------------------------------------


def load_config(path: Path) -> TrainConfig | StagedConfig:
    """The validated config of either kind, its env paths anchored at the config's folder (a resolved
    config, as a run folder holds, keeps its anchor); ConfigError names the file and the field."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    staged = isinstance(data, dict) and data.get("kind") == "staged"
    try:
        cfg = (StagedConfig if staged else TrainConfig).model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(str(path), exc)) from None
    base = cfg.env.base_dir or path.parent.resolve()
    try:
        env_cfg = cfg.env.resolved(f"{path}: env", base)
        for i, dyn in enumerate(cfg.compare.dynamics if isinstance(cfg, TrainConfig) else []):
            DynamicsConfig.parse(dyn, origin=f"{path}: compare.dynamics.{i}", base_dir=base)
    except (EnvConfigError, NetworkError) as exc:
        raise ConfigError(str(exc)) from None
    return cfg.model_copy(update={"env": env_cfg})


def pin_profile(env_cfg: EnvConfig, say=print) -> EnvConfig:
    """With the profiled cost model (the default), the profile file every env of the run reads, measured
    here first if this host has none yet (not by every env process at once), and recorded in the run's
    config.yaml."""
    if env_cfg.cost != "profile" or env_cfg.profile is not None:
        return env_cfg
    graph = model_graph(env_cfg.model)
    host_profile(graph, say=say)
    return env_cfg.model_copy(update={"profile": str(profile_path(graph.name).resolve())})
