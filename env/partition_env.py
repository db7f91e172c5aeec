"""MicroSplit: the Gymnasium environment in which a policy learns where to cut a CNN and how widely to split.

**One step = one inference request** at the current time ``t`` of a trace-driven world (``NetworkState``:
link traces, device load, failures). The agent sees a normalised encoding of the ``Snapshot`` at ``t``
(what monitors measured up to ``t``, never the future), picks a plan *shape*, the env completes it into a
full ``Plan`` (env/completion.py) and runs it; ``t`` then advances by the request's latency plus an
inter-arrival gap, so an episode walks along the traces while devices slow down, leave and come back.

**Action**: ``Discrete(n_actions)``, an index into a fixed list of candidate shapes (cut points + a split
factor per stage). Why not one "cut here?" bit per group boundary plus a factor per stage: VGG-16 would
need 20 bits and up to 21 factors, almost all combinations are poor, and a factorised MultiDiscrete
cannot mask joint constraints (a factor only matters for the stages a segmentation has). A list of
shapes that are good somewhere in the condition space (found by the cost-model oracle under sampled
conditions, see train.py, plus structured ones: one stage split k ways, cuts at downsampling points) is
small (tens), masks exactly, and makes behaviour cloning a plain classification. Index 0 is always
"the whole model on one device" so at least one action is valid. ``action_masks()`` hides shapes whose
factors exceed the usable devices or a stage's extent and the padding; an unmasked invalid action is
still run safely (factors clamped by the completion, a padding index replaced by action 0) and flagged
with ``info["invalid_action"] = True``.

**Observation**: ``Box(0, 4, (d,), float32)`` from ``Observer``: per device slot (cluster declaration
order, padded to ``max_devices``) presence, availability, log nominal speed, measured speed factor,
source/sink one-hot, log route bandwidth from the source and to the sink; per device pair a link flag,
its windowed bandwidth and its per-second history (log-scaled); global model size features. Bandwidths
map through ``log2(1 + Mbit/s) / 6``, so 0 -> 0 and 63 Mbit/s -> 1.

**Reward**: ``-score(request) / score(reference)``, where score is the configured ``Objective`` (latency,
energy or weighted) and the reference is the best single-device plan (the completion of shape 0 on the
snapshot) run under the same conditions at the same ``t``. The ratio keeps the scale near 1 for any
model or cluster; a policy that beats offloading to the best device earns more than -1.

**Failures**: a request fails when a device it touches (computing, source, sink or relay) is down at
any moment of ``[t, t + latency]``; it is then retried on the reference plan, so its latency and energy
are the failed attempt's plus the reference's (``info["failed"] = True``).

**Info** per step: ``latency_s``, ``energy_j`` (what the request cost), ``reference_latency_s``,
``reference_energy_j``, ``plan`` (the request's plan as ``PlanArrays``; its ``.plan`` is the ``Plan``,
built when first asked for, as building ~50 dataclasses at every step cost 13% of the step), ``shape``,
``invalid_action``, ``failed``, ``outputs_match`` (live backend), ``time_s`` and ``cluster``.

**Backends** behind the same API: ``sim`` predicts each request with the cost model on the world;
``live`` executes it on a cluster through the runtime's controller, with links shaped by the world's
traces (``LiveBackend``), and rewards measured latency and energy. The reference is always predicted.

Domain randomisation per episode (``reset``): a cluster from ``clusters``, a dynamics config from
``dynamics`` (traces, load, failures), optionally random source/sink, and a fresh world sampled from the
episode's seed. ``reset(options={"world": NetworkState, "time": t})`` replays a given world instead
(evaluation on identical conditions).
"""

from __future__ import annotations

import glob
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from numba import njit
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from env.completion import NetView, Shape, complete_arrays, net_view, shape_valid, structured_shapes
from env.cost_model import Cost, CostModel, Objective, Prediction
from env.meshes import EVAL_SEED_BASE, mesh_spec
from env.network import DynamicsConfig, NetworkState, Snapshot, link_key
from env.plan_arrays import PlanArrays
from env.profiles import ProfileError, pacing_gflops, resolve_profile
from runtime import models
from runtime.config import describe_validation_error
from runtime.exactness import reference_pool, run_checked
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.spec import ClusterSpec, load_cluster

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "configs" / "clusters"
OBS_HIGH = 4.0


class EnvConfigError(ValueError):
    """An environment config is invalid; the message names the file (or origin) and the field."""


# ------------------------------------------------------------------------------------------ config


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
    scenarios can be listed); ``meshes`` adds generated meshes of the DISNET family. ``dynamics``: one DynamicsConfig mapping per entry, one drawn per
    episode. ``shapes``: the action list as ``[[bounds...], [factors...]]`` pairs (None: the structured
    shapes of the graph); ``n_actions`` pads it so that a policy can be trained with room to spare.
    ``cost``: the cost model requests are priced on, ``profile`` (default: this host's per-unit compute
    profile of the model, from the file ``profile`` or else the cache, env/profiles.py) or ``flops``.
    """

    model_config = ConfigDict(extra="forbid")
    model: str = "tiny"
    clusters: list[str] = Field(default_factory=lambda: ["tiny3"])
    meshes: MeshFamilyConfig | None = None
    gflops_per_rate: float | None = Field(None, gt=0)
    bandwidth_cap_mbps: float | None = Field(None, gt=0)
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


# ------------------------------------------------------------------------------------- observation


def bw_feature(mbps: float) -> float:
    """Bandwidth feature: log2(1 + Mbit/s) / 6 (0 -> 0, 63 Mbit/s -> 1)."""
    return math.log2(1.0 + max(mbps, 0.0)) / 6.0


def route_mbps(sec_per_byte: float) -> float:
    """A route's effective Mbit/s; the device itself (0 s/B) counts as 10 Gbit/s."""
    return 8e-6 / sec_per_byte if sec_per_byte > 0 else 1e4


class _Slots:
    """Per cluster topology: where each device and link goes in the observation vector."""

    def __init__(self, spec: ClusterSpec, max_devices: int, history: int):
        ids = spec.device_ids
        if len(ids) > max_devices:
            raise ValueError(
                f"cluster {spec.name!r} has {len(ids)} devices; the policy handles {max_devices}"
            )
        self.devices = ids
        self.index = {d: i for i, d in enumerate(ids)}
        pair_base = max_devices * Observer.DEVICE_FEATURES
        per_pair = 2 + history
        self.links = [link_key(ln.a, ln.b) for ln in spec.links]
        offsets = []
        for ln in spec.links:
            i, j = sorted((self.index[ln.a], self.index[ln.b]))
            pair = i * max_devices - i * (i + 1) // 2 + (j - i - 1)  # upper-triangle index
            offsets.append(pair_base + pair * per_pair)
        self.link_flags = np.array(offsets, dtype=np.int64)
        self.link_values = self.link_flags[:, None] + 1 + np.arange(1 + history)  # mean, then history
        self.nominal = np.array([math.log2(1.0 + spec.devices[d].gflops) / 4.0 for d in ids])


class Observer:
    """Turns a Snapshot (and its NetView) into the policy's observation vector (module docstring)."""

    DEVICE_FEATURES = 8
    GLOBAL_FEATURES = 3

    def __init__(self, graph: LayerGraph, max_devices: int, history: int):
        self.max_devices = max_devices
        self.history = history
        pairs = max_devices * (max_devices - 1) // 2
        self.size = max_devices * self.DEVICE_FEATURES + pairs * (2 + history) + self.GLOBAL_FEATURES
        input_bytes = graph.extent(0) * graph.row_bytes(0)
        self._model = np.array([math.log10(max(graph.total_flops, 1)) / 10, math.log10(input_bytes) / 6])
        self._slots: dict[tuple, _Slots] = {}
        self._last: tuple[ClusterSpec | None, _Slots | None] = (None, None)

    @property
    def space(self) -> gym.spaces.Box:
        return gym.spaces.Box(0.0, OBS_HIGH, (self.size,), np.float32)

    def slots(self, spec: ClusterSpec) -> _Slots:
        if spec is self._last[0]:  # hashing a spec's devices costs more than encoding
            return self._last[1]
        key = (tuple(spec.devices.values()), spec.links)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = _Slots(spec, self.max_devices, self.history)
        self._last = (spec, slots)
        return slots

    def encode(self, snapshot: Snapshot, view: NetView) -> np.ndarray:
        slots = self.slots(snapshot.spec)
        return _encode(
            self.size, self.DEVICE_FEATURES, self.history, view.usable_mask, slots.nominal,
            snapshot.rates.speed, slots.index[snapshot.source], slots.index[snapshot.sink], view.sec_per_byte,
            snapshot.link_windows, slots.link_flags, slots.link_values, self._model, self.max_devices,
        )  # fmt: skip


_bw_feature = njit(bw_feature)  # compiled into _encode
_route_mbps = njit(route_mbps)


@njit(cache=True)
def _encode(
    size, f, h, usable, nominal, speed, source, sink, sec_per_byte, windows, link_flags, link_values, model,
    max_devices,
):  # fmt: skip
    """The observation vector (module docstring), in one pass: per device (spec order) its ``f`` features,
    per link (spec order) a flag, its mean and its last ``h`` one-second means (a shorter history padded
    with the mean), then the model's two features and the usable share; clipped to [0, OBS_HIGH]."""
    obs = np.zeros(size)
    n = nominal.size
    for i in range(n):
        row = obs[i * f : (i + 1) * f]
        row[0], row[1], row[2], row[3] = 1.0, usable[i], nominal[i], speed[i]
        row[6] = _bw_feature(_route_mbps(sec_per_byte[source, i]))
        row[7] = _bw_feature(_route_mbps(sec_per_byte[i, sink]))
    obs[source * f + 4] = 1.0
    obs[sink * f + 5] = 1.0
    width = windows.shape[1]
    for k in range(windows.shape[0]):
        obs[link_flags[k]] = 1.0
        obs[link_values[k, 0]] = _bw_feature(windows[k, 0])
        for j in range(1, h + 1):
            column = width - h + j - 1  # history right-aligned; before its start, the mean
            obs[link_values[k, j]] = _bw_feature(windows[k, column] if column >= 1 else windows[k, 0])
    obs[size - 3], obs[size - 2] = model[0], model[1]
    obs[size - 1] = usable.sum() / max_devices
    return np.clip(obs, 0.0, OBS_HIGH).astype(np.float32)


# ------------------------------------------------------------------------------------------ env


@dataclass(frozen=True)
class Outcome:
    """What one request cost, as a backend measured or predicted it."""

    latency_s: float
    energy_j: float
    failed: bool = False
    outputs_match: bool | None = None


@dataclass
class _Cluster:
    spec: ClusterSpec
    cost: CostModel


class SimBackend:
    """Requests predicted by the cost model in the trace-driven world."""

    name = "sim"

    def run(self, env: MicroSplitEnv, plan: PlanArrays, t: float) -> Outcome:
        return env.predicted_outcome(plan, t)

    def reset(self, env: MicroSplitEnv) -> None:
        """Nothing to prepare: the world is all the simulator needs."""

    def advance(self, env: MicroSplitEnv, t: float) -> float:
        """Simulated time jumps to the next request."""
        return t

    def close(self) -> None:
        """Nothing to release."""


class LiveBackend:
    """Requests executed for real on a ``LocalCluster`` through the runtime's controller.

    One cluster of worker processes per cluster spec, started on first use and kept across episodes;
    on every reset its emulation is reconfigured so that the links follow the new world's bandwidth
    traces and the devices its speed schedules, aligned so that world time ``t`` is "now" on the
    controller's clock. Each step deploys the plan (if it changed), infers one seeded input, and
    reports the measured latency and energy; ``outputs_match`` compares the output with the unsplit
    model's (``runtime.exactness``). Time advances with the wall clock (the gap is slept).
    The world's failure schedule is not enacted: it only shapes what the snapshot says; workers fail
    only for real, in which case the controller retries the request (its latency includes that).
    """

    name = "live"

    def __init__(self, host_gflops: float | None = None, seed: int = 0, start_timeout_s: float = 120.0):
        self.host_gflops = host_gflops
        self.seed = seed
        self.start_timeout_s = start_timeout_s
        self._clusters: dict[str, Any] = {}
        self._cluster = None
        self._offset = 0.0
        self._input: torch.Tensor | None = None
        self._expected: torch.Tensor | None = None

    def reset(self, env: MicroSplitEnv) -> None:
        from runtime.cluster import LocalCluster
        from runtime.emulation import Emulation

        spec = env.world.spec
        cluster = self._clusters.get(spec.name)
        if cluster is None:
            cluster = LocalCluster(
                spec,
                model=env.config.model,
                seed=self.seed,
                host_gflops=self.host_gflops or pacing_gflops(env.profile),  # paced as the env predicts
                start_timeout_s=self.start_timeout_s,
            )
            cluster.start()
            self.host_gflops = cluster.host_gflops
            self._clusters[spec.name] = cluster
        self._cluster = cluster
        ctl = cluster.controller
        self._offset = env.time - ctl.now()
        world = env.world
        links = {
            link_key(ln.a, ln.b): world.link_schedule(ln.a, ln.b).shifted(self._offset) for ln in spec.links
        }
        speeds = {d: world.speed_schedule(d).shifted(self._offset) for d in spec.devices}
        ctl.configure(Emulation(cluster.host_gflops, links, speeds))
        if self._input is None:
            unsplit = models.build(env.config.model, seed=self.seed)
            shape = models.input_shape(env.config.model)
            ((self._input, self._expected),) = reference_pool(unsplit, shape, 1, self.seed)

    def run(self, env: MicroSplitEnv, plan: PlanArrays, t: float) -> Outcome:
        done = run_checked(self._cluster.controller, plan.plan, self._input, self._expected)
        return Outcome(done.result.latency_s, done.result.energy_j, False, done.exact)

    def advance(self, env: MicroSplitEnv, t: float) -> float:
        """Sleep until world time ``t`` (the next request's arrival) and return the world time."""
        ctl = self._cluster.controller
        wait = t - (ctl.now() + self._offset)
        if wait > 0:
            time.sleep(wait)
        return ctl.now() + self._offset

    def close(self) -> None:
        for cluster in self._clusters.values():
            cluster.close()
        self._clusters.clear()


class MicroSplitEnv(gym.Env):
    """See the module docstring. ``config`` is an EnvConfig or a mapping for ``EnvConfig.parse``."""

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig | dict | None = None, backend: str = "sim", **backend_options: Any):
        super().__init__()
        self.config = config if isinstance(config, EnvConfig) else EnvConfig.parse(config or {})
        cfg = self.config
        self.graph = model_graph(cfg.model)
        self.objective = cfg.objective.build()
        self.dynamics = [DynamicsConfig.parse(d, base_dir=cfg.base_dir) for d in cfg.dynamics]
        paths = cluster_paths(cfg.clusters, cfg.base_dir)
        specs = {}
        for path in paths:
            spec = load_cluster(
                path, gflops_per_rate=cfg.gflops_per_rate, bandwidth_cap=cfg.bandwidth_cap_mbps
            )
            specs.setdefault(spec.name, spec)
        if cfg.meshes is not None:
            for spec in cfg.meshes.specs(cfg.bandwidth_cap_mbps):
                specs.setdefault(spec.name, spec)
        if not specs:
            raise EnvConfigError(f"clusters: no cluster file found for {cfg.clusters}")
        profile = None if cfg.profile is None else Path(cfg.base_dir or ".") / cfg.profile
        try:
            self.profile = resolve_profile(self.graph, cfg.cost, profile)
        except ProfileError as exc:
            raise EnvConfigError(f"profile: {exc}") from None
        self.clusters = [_Cluster(spec, CostModel(self.graph, spec, self.profile)) for spec in specs.values()]
        self.max_devices = cfg.max_devices or max(len(c.spec.devices) for c in self.clusters)
        self.shapes = self._shapes()
        self._shape_names = [shape.describe() for shape in self.shapes]  # for info, once (5 us a step)
        self.n_actions = max(cfg.n_actions or 0, len(self.shapes))
        self.observer = Observer(self.graph, self.max_devices, cfg.history)
        self.observation_space = self.observer.space
        self.action_space = gym.spaces.Discrete(self.n_actions)
        self.backend = _make_backend(backend, **backend_options)
        self._cluster = self.clusters[0]
        self.world: NetworkState | None = None
        self.time = 0.0
        self.snapshot: Snapshot | None = None
        self.view: NetView | None = None
        self._requests = 0
        self._masks: dict[int, np.ndarray] = {}
        self._plans: dict[int, PlanArrays] = {}  # per shape index, for the current view
        self._costs: dict[int, tuple[Plan | PlanArrays, float, Cost]] = {}  # per plan object, current view

    def _shapes(self) -> list[Shape]:
        cfg, n = self.config, len(self.graph.units)
        if cfg.shapes is None:
            shapes = structured_shapes(self.graph, cfg.max_stages, cfg.max_split)
        else:
            shapes = [Shape.from_list(s) for s in cfg.shapes]
        for s in shapes:
            if not s.fits(self.graph):
                raise EnvConfigError(
                    f"shapes: {s.describe()} does not fit the cut points of {self.graph.name}"
                )
        single = Shape((0, n), (1,))
        return [single, *(s for s in dict.fromkeys(shapes) if s != single)]

    # ---- what tools (training, evaluation, the planner) use ------------------------------------
    @property
    def cluster_spec(self) -> ClusterSpec:
        return self.world.spec if self.world is not None else self._cluster.spec

    @property
    def cost_model(self) -> CostModel:
        return self._cluster.cost

    def action_masks(self) -> np.ndarray:
        """Valid actions under the current snapshot (MaskablePPO calls this). Validity depends only on
        how many devices are usable, so masks are cached per count."""
        n = self.view.n_usable
        mask = self._masks.get(n)
        if mask is None:
            mask = np.zeros(self.n_actions, dtype=bool)
            mask[: len(self.shapes)] = [shape_valid(self.graph, self.view, s) for s in self.shapes]
            mask[0] = True
            self._masks[n] = mask
        return mask.copy()

    def plan_for(self, action: int) -> tuple[Plan, bool]:
        """The plan an action stands for under the current snapshot, and whether the action was invalid."""
        arrays, invalid = self._action_plan(action)
        return arrays.plan, invalid

    def reference_plan(self) -> Plan:
        return self._completed(0).plan

    def _action_plan(self, action: int) -> tuple[PlanArrays, bool]:
        """``plan_for`` as arrays, what the step costs (an action outside the list: the reference plan)."""
        valid = 0 <= action < len(self.shapes) and shape_valid(self.graph, self.view, self.shapes[action])
        return self._completed(action if 0 <= action < len(self.shapes) else 0), not valid

    def _completed(self, index: int) -> PlanArrays:
        """``complete`` of shape ``index`` under the current view, memoised until the next observation
        (the reference is also action 0's plan, and callers ask about a step's plan more than once)."""
        plan = self._plans.get(index)
        if plan is None:
            plan = self._plans[index] = complete_arrays(self.graph, self.view, self.shapes[index])
        return plan

    def _world_cost(self, plan: Plan | PlanArrays, t: float) -> Cost:
        """``cost_model.cost`` in the world, memoised per plan object and time until the next observation."""
        hit = self._costs.get(id(plan))
        if hit is not None and hit[0] is plan and hit[1] == t:
            return hit[2]
        cost = self.cost_model.cost(plan, self.world, t)
        self._costs[id(plan)] = (plan, t, cost)
        return cost

    def score(self, prediction: Prediction | Cost | Outcome) -> float:
        return self.objective.score(prediction)  # type: ignore[arg-type]

    def touches_outage(self, plan: Plan | PlanArrays, t0: float, t1: float) -> bool:
        """Whether a device the plan uses (relays included) is down at some moment of [t0, t1]."""
        return self.world.down_during(self.cost_model.skeleton(plan).devices, t0, t1)

    def predicted_outcome(self, plan: Plan | PlanArrays, t: float) -> Outcome:
        """The cost model's prediction of a request in the world at ``t``, failure check included."""
        cost = self._world_cost(plan, t)
        failed = self.touches_outage(plan, t, t + cost.latency_s)
        return Outcome(cost.latency_s, cost.energy_j, failed)

    @staticmethod
    def charged(outcome: Outcome, reference: Prediction | Cost) -> tuple[float, float]:
        """Latency and energy a request costs: a failed attempt is retried on the reference plan."""
        if outcome.failed:
            return outcome.latency_s + reference.latency_s, outcome.energy_j + reference.energy_j
        return outcome.latency_s, outcome.energy_j

    def action_costs(self, world: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Per action, relative to the reference (lower is better; inf for masked actions): the objective
        under the snapshot (what an analytic optimiser over the action list sees) and, with ``world``,
        minus the reward the action would earn now in the world (what actually happens). For labels,
        oracles and diagnostics; the sim backend's semantics, whatever the env's backend."""
        t = self.time
        reference = self._completed(0)
        ref_snap = self.score(self.cost_model.cost(reference, self.snapshot, t))
        ref_world = self._world_cost(reference, t) if world else None
        snap = np.full(self.n_actions, np.inf)
        real = np.full(self.n_actions, np.inf) if world else None
        for a in np.flatnonzero(self.action_masks()):
            plan = self._completed(a)
            snap[a] = self.score(self.cost_model.cost(plan, self.snapshot, t)) / ref_snap
            if world:
                latency, energy = self.charged(self.predicted_outcome(plan, t), ref_world)
                real[a] = self.objective.score(Cost(latency, energy)) / self.score(ref_world)
        return snap, real

    # ---- gymnasium API --------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        rng = self.np_random
        world = options.get("world")
        if world is None:
            cluster = self.clusters[int(rng.integers(len(self.clusters)))]
            spec = cluster.spec
            if self.config.random_endpoints:
                source, sink = rng.choice(spec.device_ids, size=2, replace=True)
                spec = spec.with_source_sink(str(source), str(sink))
            dynamics = self.dynamics[int(rng.integers(len(self.dynamics)))]
            world = NetworkState.sample(spec, dynamics, np.random.default_rng(int(rng.integers(2**63))))
        else:
            cluster = self._cluster_for(world.spec)
        self._cluster = cluster
        self.world = world
        self.time = float(options.get("time", self.config.start_s))
        self._requests = 0
        self.backend.reset(self)
        return self._observe(), {"cluster": world.spec.name, "time_s": self.time}

    def step(self, action):
        if self.world is None:
            raise RuntimeError("call reset() before step()")
        action = int(action)
        plan, invalid = self._action_plan(action)
        shape = self._shape_names[action] if 0 <= action < len(self.shapes) else None
        return self.request(plan, shape, invalid)

    def request(self, plan: PlanArrays, shape: str | None = None, invalid: bool = False):
        """Serve one request with ``plan`` at the current time and advance: ``step``'s work once the
        action is a plan (planners and environments with other action spaces call it directly)."""
        t = self.time
        outcome = self.backend.run(self, plan, t)
        reference = self._world_cost(self._completed(0), t)
        latency, energy = self.charged(outcome, reference)
        reward = -self.objective.score(Cost(latency, energy)) / max(self.score(reference), 1e-12)
        info = {
            "latency_s": latency,
            "energy_j": energy,
            "reference_latency_s": reference.latency_s,
            "reference_energy_j": reference.energy_j,
            "plan": plan,  # PlanArrays: ``.plan`` builds the Plan (module docstring, Info)
            "shape": shape,
            "invalid_action": invalid,
            "failed": outcome.failed,
            "outputs_match": outcome.outputs_match,
            "time_s": t,
            "cluster": self.cluster_spec.name,
        }
        lo, hi = self.config.gap_s
        self.time = self.backend.advance(self, t + latency + float(self.np_random.uniform(lo, hi)))
        self._requests += 1
        truncated = self._requests >= self.config.requests_per_episode
        return self._observe(), float(reward), False, truncated, info

    def close(self) -> None:
        self.backend.close()

    # ---- internals ------------------------------------------------------------------------------
    def _observe(self) -> np.ndarray:
        self.snapshot = self.world.snapshot(self.time, self.config.window_s, self.config.history)
        self.view = net_view(self.snapshot)
        self._plans.clear()
        self._costs.clear()
        return self.observer.encode(self.snapshot, self.view)

    def _cluster_for(self, spec: ClusterSpec) -> _Cluster:
        for c in self.clusters:
            if c.spec.name == spec.name and c.spec.links == spec.links:
                return c
        cluster = _Cluster(spec, CostModel(self.graph, spec, self.profile))
        self.clusters.append(cluster)
        return cluster


def _make_backend(name: str, **options: Any):
    if name == "sim":
        if options:
            raise ValueError(f"the sim backend takes no options, got {sorted(options)}")
        return SimBackend()
    if name == "live":
        return LiveBackend(**options)
    raise ValueError(f"backend must be 'sim' or 'live', not {name!r}")
