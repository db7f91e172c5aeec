"""The learning problem as a config: what ``env:`` of a training YAML says, validated, and the names in it
resolved (bundled cluster names, cluster paths and patterns, the model's graph).

Every environment and the simulator they share are built from an ``EnvConfig``; errors name the file (or
origin) and the field, never a traceback.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from env.cost_model import Objective
from env.dynamics import DynamicsConfig
from env.meshes import EVAL_SEED_BASE, mesh_spec
from runtime import models
from runtime.config import describe_validation_error
from runtime.graph import LayerGraph
from runtime.spec import ClusterSpec, SpecError, load_cluster

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "configs" / "clusters"


class EnvConfigError(ValueError):
    """An environment config is invalid; the message names the file (or origin) and the field."""


class ObjectiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["latency", "energy", "weighted"] = "latency"
    energy_weight: float = Field(0.0, ge=0)

    def build(self) -> Objective:
        return Objective(self.kind, self.energy_weight)


class MeshFamilyConfig(BaseModel):
    """Training clusters drawn from the DISNET generator family (env/meshes.py): ``count`` meshes of
    ``devices`` = [lo, hi] devices (uniform), mesh seeds ``seed .. seed + count - 1``, all below
    ``EVAL_SEED_BASE`` (the evaluation seeds are never trained on)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    devices: tuple[int, int] = (4, 24)
    count: int = Field(64, ge=1)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> MeshFamilyConfig:
        lo, hi = self.devices
        if not 2 <= lo <= hi:
            raise ValueError(f"devices must be [lo, hi] with 2 <= lo <= hi, got {list(self.devices)}")
        if self.seed + self.count > EVAL_SEED_BASE:
            raise ValueError(f"mesh seeds must stay below {EVAL_SEED_BASE} (evaluation seeds)")
        return self

    def specs(self, bandwidth_cap: float | None) -> list[ClusterSpec]:
        sizes = np.random.default_rng(self.seed).integers(self.devices[0], self.devices[1] + 1, self.count)
        return [mesh_spec(int(n), self.seed + i, bandwidth_cap=bandwidth_cap) for i, n in enumerate(sizes)]


class EnvConfig(BaseModel):
    """Everything that defines the learning problem (the ``env:`` section of a training config).

    ``clusters``: bundled names (``mesh0``, ``tiny3``: configs/clusters/NAME.yaml), or paths and glob
    patterns relative to ``base_dir`` (a pattern that matches nothing is skipped, so optional shared
    scenarios can be listed); ``meshes`` adds generated meshes of the DISNET family. ``spec_cap_mbps``
    caps every link of those clusters (what planners assume before they measure). ``dynamics``: one
    DynamicsConfig mapping per entry, one drawn per episode (its ``trace_cap_mbps`` caps the link traces
    at every instant). ``shapes``: the action list as ``[[bounds...], [factors...]]`` pairs (None: the
    structured shapes of the graph); ``n_actions`` pads it so that a policy can be trained with room to
    spare.
    ``cost``: the cost model requests are priced on, ``profile`` (default: this host's per-unit compute
    profile of the model, from the file ``profile`` or else the cache, env/profiles.py) or ``flops``.
    """

    model_config = ConfigDict(extra="forbid")
    model: str = "tiny"
    clusters: list[str] = Field(default_factory=lambda: ["tiny3"])
    meshes: MeshFamilyConfig | None = None
    gflops_per_rate: float | None = Field(None, gt=0)
    spec_cap_mbps: float | None = Field(None, gt=0)
    dynamics: list[dict[str, Any]] = Field(default_factory=lambda: [{}], min_length=1)
    random_endpoints: bool = False
    requests_per_episode: int = Field(64, ge=1)
    gap_s: tuple[float, float] = (0.0, 1.0)
    start_s: float = Field(8.0, ge=0)
    window_s: float = Field(5.0, ge=0)
    history: int = Field(8, ge=1)
    max_devices: int | None = Field(None, ge=1)
    max_stages: int = Field(4, ge=1)
    max_split: int = Field(6, ge=1)
    shapes: list[list[list[int]]] | None = None
    n_actions: int | None = Field(None, ge=1)
    objective: ObjectiveConfig = ObjectiveConfig()
    cost: Literal["profile", "flops"] = "profile"
    profile: str | None = None
    base_dir: str | None = None

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        models.input_shape(model)  # a zoo name or an importable model of the user's, else ModelError
        return model

    @model_validator(mode="after")
    def _gaps(self) -> EnvConfig:
        lo, hi = self.gap_s
        if not 0 <= lo <= hi:
            raise ValueError(f"gap_s must be [lo, hi] with 0 <= lo <= hi, got {list(self.gap_s)}")
        if not self.clusters and self.meshes is None:
            raise ValueError("clusters: list at least one cluster, or set meshes")
        return self

    @classmethod
    def parse(
        cls, data: Any, *, origin: str = "<env config>", base_dir: str | Path | None = None
    ) -> EnvConfig:
        """Validate a mapping; errors name ``origin`` and the field. Also checks the dynamics entries."""
        try:
            cfg = cls.model_validate(data or {})
        except ValidationError as exc:
            raise EnvConfigError(describe_validation_error(origin, exc)) from None
        return cfg.resolved(origin, base_dir)

    def resolved(self, origin: str, base_dir: str | Path | None = None) -> EnvConfig:
        """This config with relative paths anchored at ``base_dir``, after loading every dynamics entry
        (trace folders included) so that a bad one fails now, named ``origin: dynamics.i: field``."""
        cfg = self if base_dir is None else self.model_copy(update={"base_dir": str(base_dir)})
        for path in cluster_paths(cfg.clusters, cfg.base_dir):  # a missing or bad cluster fails now
            try:
                load_cluster(path)
            except SpecError as exc:
                raise EnvConfigError(f"{origin}: clusters: {exc}") from None
        for i, dyn in enumerate(cfg.dynamics):
            try:
                DynamicsConfig.parse(dyn, origin=f"{origin}: dynamics.{i}", base_dir=cfg.base_dir)
            except ValueError as exc:
                raise EnvConfigError(str(exc)) from None
        return cfg


def cluster_paths(entries: Sequence[str], base_dir: str | Path | None) -> list[Path]:
    """Resolve cluster entries: bundled names, paths, or glob patterns (empty matches are skipped)."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    out: list[Path] = []
    for entry in entries:
        if "/" not in entry and "." not in entry:
            out.append(CLUSTER_DIR / f"{entry}.yaml")
        elif glob.has_magic(entry):
            out.extend(Path(p) for p in sorted(glob.glob(str(base / entry))))
        else:
            out.append(base / entry)
    return out


@lru_cache(maxsize=8)
def model_graph(name: str) -> LayerGraph:
    """The LayerGraph of a zoo model, traced on a weightless (meta) skeleton: fast, no memory."""
    return LayerGraph.from_model(models.skeleton(name), models.input_shape(name), name)


def cluster_specs(cfg: EnvConfig) -> list[ClusterSpec]:
    """The clusters a config names (files first, then generated meshes), one per name, in order."""
    specs: dict[str, ClusterSpec] = {}
    for path in cluster_paths(cfg.clusters, cfg.base_dir):
        spec = load_cluster(path, gflops_per_rate=cfg.gflops_per_rate, bandwidth_cap=cfg.spec_cap_mbps)
        specs.setdefault(spec.name, spec)
    if cfg.meshes is not None:
        for spec in cfg.meshes.specs(cfg.spec_cap_mbps):
            specs.setdefault(spec.name, spec)
    if not specs:
        raise EnvConfigError(f"clusters: no cluster file found for {cfg.clusters}")
    return list(specs.values())
