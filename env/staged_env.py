"""StagedSplit: a plan chosen stage by stage, so one policy works on any cluster and any plan shape.

**One request = one episode of a few sub-steps.** At each sub-step the policy closes the current stage:
the action is a pair (cut point where the stage ends, split factor k of the stage), ``Discrete(C * K)`` for
the graph's C cut points after 0 and factors 1..K. The request is served when a stage ends at the last
unit. Every plan shape with at most ``max_stages`` stages and factors up to K is reachable, and the mask is
exact: the cut must lie after the current start, k at most the usable devices and the stage's output
rows, and the last allowed stage must end the model. Which devices, in which order and with which shares
follows from the analytic completion (env/completion.py), as for the optimiser's search space W, on the
work the env's cost model prices (its profile, or FLOPs): the optimisers' completion, so a label's shape
completes to the plan it names.

Why sub-steps rather than one joint action: a shape is up to 20 cuts and factors (VGG-16), a factorised
MultiDiscrete cannot mask the joint constraints, while a pair per stage masks exactly and a request takes
one to four sub-steps in practice. The reward (``-score / reference``, the MicroSplit reward) comes at the
last sub-step; ``gamma = 1`` inside the short episode credits every sub-step with the request's outcome.
Consecutive requests walk along the same world (time advances by the request's latency and a gap) for
``requests_per_episode`` requests before a new world is drawn: an "episode" in SB3's sense is one request.

**Observation: a set of device tokens and a context vector.** Every device is a token of
``TOKEN_FEATURES`` features computed from the snapshot (availability, effective and relative speed, role,
route bandwidth from the source, to the sink and on average to the other usable devices, link variability, degree) and
from the plan so far (its share of the previous stage, the route bandwidth from the previous stage, whether
it already holds weights, its estimated time for the rest of the model alone). Link features enter the
tokens as route aggregates: routes are what the completion and the cost model price. No feature depends
on a device's name or position, so a policy that pools tokens symmetrically (agents/device_set.py) is
invariant to the order of devices and handles any count. The context is the plan so far (start cut
one-hot, stage count, last factor), the usable device count and the model's size at the current cut.
For SB3 the tokens are padded to ``max_devices`` rows (a presence flag first) and flattened before the
context; planners call ``observe`` on the exact device set, with no padding and no limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import gymnasium as gym
import numpy as np

from env.completion import complete_arrays, stage_info
from env.config import EnvConfig
from env.cost_model import Profile
from env.net_view import NetView
from env.partition_env import request_info
from env.plan_arrays import PlanArrays
from env.shapes import Shape
from env.simulator import Simulator
from env.snapshot import Snapshot
from runtime.graph import LayerGraph
from runtime.spec import ClusterSpec

TOKEN_FEATURES = 16
OBS_LIMIT = 16.0


@dataclass(frozen=True)
class StageActions:
    """The action space of one graph: action ``a`` ends the stage at ``cuts[a // K]`` split ``a % K + 1`` ways."""

    cuts: tuple[int, ...]  # the graph's cut points after 0 (the last is the number of units)
    extents: tuple[int, ...]  # output rows (features, for flat stages) at each cut
    max_factor: int
    max_stages: int

    @classmethod
    def of(cls, graph: LayerGraph, max_factor: int, max_stages: int) -> StageActions:
        cuts = tuple(graph.cut_points[1:])
        return cls(cuts, tuple(graph.extent(c) for c in cuts), max_factor, max_stages)

    @property
    def n(self) -> int:
        return len(self.cuts) * self.max_factor

    def encode(self, cut: int, factor: int) -> int:
        return self.cuts.index(cut) * self.max_factor + factor - 1

    def decode(self, action: int) -> tuple[int, int]:
        return self.cuts[action // self.max_factor], action % self.max_factor + 1

    def mask(self, start: int, stages: int, usable: int) -> np.ndarray:
        """Valid (cut, factor) pairs after ``stages`` stages ending at unit ``start``."""
        mask = np.zeros((len(self.cuts), self.max_factor), dtype=bool)
        last = stages + 1 >= self.max_stages
        for i, (cut, extent) in enumerate(zip(self.cuts, self.extents, strict=True)):
            if cut > start and (not last or i == len(self.cuts) - 1):
                mask[i, : max(1, min(self.max_factor, usable, extent))] = True
        return mask.ravel()


@dataclass
class PartialPlan:
    """The stages chosen so far for one request (bounds start at 0) and their completion's last stage."""

    bounds: list[int] = field(default_factory=lambda: [0])
    factors: list[int] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.bounds[-1]

    def shape(self) -> Shape:
        return Shape(tuple(self.bounds), tuple(self.factors))


@dataclass(frozen=True)
class _Topology:
    """Per cluster: each device's incident links (spec order) and degree, for the token features."""

    incidence: np.ndarray  # (D, L) 1 where link l touches device d
    degree: np.ndarray


_TOPOLOGY: dict[int, tuple[ClusterSpec, _Topology]] = {}


def _topology(spec: ClusterSpec) -> _Topology:
    hit = _TOPOLOGY.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    index = {d: i for i, d in enumerate(spec.device_ids)}
    incidence = np.zeros((len(index), len(spec.links)))
    for j, ln in enumerate(spec.links):
        incidence[index[ln.a], j] = incidence[index[ln.b], j] = 1.0
    topo = _Topology(incidence, incidence.sum(axis=1))
    if len(_TOPOLOGY) > 256:
        _TOPOLOGY.clear()
    _TOPOLOGY[id(spec)] = (spec, topo)
    return topo


def _bw(sec_per_byte: np.ndarray) -> np.ndarray:
    """Route bandwidth feature log2(1 + Mbit/s) / 6 from seconds per byte (a device to itself: 10 Gbit/s;
    unreachable: 0)."""
    mbps = np.where(sec_per_byte > 0, 8e-6 / np.maximum(sec_per_byte, 1e-300), 1e4)
    return np.log2(1.0 + np.where(np.isfinite(sec_per_byte), mbps, 0.0)) / 6.0


def _log_seconds(t: np.ndarray | float) -> np.ndarray:
    """Seconds on a log scale around 1 ms .. 1000 s -> 0 .. 2."""
    return np.log10(np.maximum(t, 1e-3)) / 3.0 + 1.0


@lru_cache(maxsize=16)
def _cut_table(graph: LayerGraph, profile: Profile | None) -> dict[int, tuple[float, float]]:
    """Per cut point: the work from there to the end (FLOPs, or the profile's, as the completion counts
    it), and the bytes of the tensor there."""
    n = len(graph.units)
    return {
        c: (stage_info(graph, c, n, 1, profile).flops if c < n else 0.0,
            float(graph.extent(c) * graph.row_bytes(c)))
        for c in graph.cut_points
    }  # fmt: skip


def context_size(actions: StageActions) -> int:
    return len(actions.cuts) + 9


def observe(
    graph: LayerGraph,
    snapshot: Snapshot,
    view: NetView,
    partial: PartialPlan,
    actions: StageActions,
    profile: Profile | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The device tokens ``(devices, TOKEN_FEATURES)`` and the context vector (module docstring), with
    work counted as the completion counts it (``profile``: the cost model's)."""
    prev_dev, prev_w, holds = _stage_input(graph, view, partial, profile)
    spb_in = prev_w @ view.sec_per_byte[prev_dev]
    alone = _time_alone(graph, view, partial.start, spb_in, profile)
    fastest = alone.min() if np.isfinite(alone).any() else 1.0
    tokens = _device_tokens(snapshot, view, prev_dev, prev_w, spb_in, holds, alone, fastest)
    context = _context(graph, snapshot, view, partial, actions, fastest, profile)
    return np.clip(tokens, -OBS_LIMIT, OBS_LIMIT), np.clip(context, -OBS_LIMIT, OBS_LIMIT)


def _stage_input(
    graph: LayerGraph, view: NetView, partial: PartialPlan, profile: Profile | None
) -> tuple[np.ndarray, ...]:
    """Where the next stage's input is: the previous stage's devices and their shares of it (the source
    alone before the first stage), and which devices hold weights of the plan so far (0/1 per device)."""
    n = len(view.devices)
    if not partial.factors:
        return np.array([view.index[view.source]]), np.ones(1), np.zeros(n)
    arrays = complete_arrays(graph, view, partial.shape(), profile)
    last = slice(arrays.ptr[-2], arrays.ptr[-1])
    holds = np.zeros(n)
    holds[arrays.devices] = 1.0
    return arrays.devices[last], arrays.shares[last] / arrays.shares[last].sum(), holds


def _time_alone(
    graph: LayerGraph, view: NetView, start: int, spb_in: np.ndarray, profile: Profile | None
) -> np.ndarray:
    """Each device's estimated time for the rest of the model alone from cut ``start``: fetch the input,
    compute, send the output to the sink (inf for an unusable or unreachable device)."""
    gflops = np.asarray(view.gflops)
    table = _cut_table(graph, profile)
    rest_work, in_bytes = table[start]
    out_bytes = table[len(graph.units)][1]
    sink_spb = view.sec_per_byte[:, view.index[view.sink]]
    with np.errstate(divide="ignore", invalid="ignore"):
        alone = rest_work / (np.maximum(gflops, 1e-9) * 1e9) + in_bytes * spb_in + out_bytes * sink_spb
    return np.where(view.usable_mask & np.isfinite(alone), alone, np.inf)


def _device_tokens(
    snapshot: Snapshot,
    view: NetView,
    prev_dev: np.ndarray,
    prev_w: np.ndarray,
    spb_in: np.ndarray,
    holds: np.ndarray,
    alone: np.ndarray,
    fastest: float,
) -> np.ndarray:
    """The ``TOKEN_FEATURES`` of every device (module docstring), unclipped."""
    n = len(view.devices)
    usable = view.usable_mask
    gflops = np.asarray(view.gflops)
    spb = view.sec_per_byte
    source, sink = view.index[view.source], view.index[view.sink]
    prev_share = np.zeros(n)
    prev_share[prev_dev] = prev_w
    others = usable[None, :] & ~np.eye(n, dtype=bool)
    central = (_bw(spb) * others).sum(axis=1) / np.maximum(others.sum(axis=1), 1)
    windows = snapshot.link_windows
    topo = _topology(snapshot.spec)
    steady = np.clip(windows.min(axis=1) / np.maximum(windows[:, 0], 1e-9), 0.0, 1.0)
    tokens = np.zeros((n, TOKEN_FEATURES))
    tokens[:, 0] = 1.0
    tokens[:, 1] = usable
    tokens[:, 2] = np.log2(1.0 + gflops) / 4.0
    tokens[:, 3] = [snapshot.speed[d] for d in view.devices]
    tokens[source, 4] = 1.0
    tokens[sink, 5] = 1.0
    tokens[:, 6] = _bw(spb[source])
    tokens[:, 7] = _bw(spb[:, sink])
    tokens[:, 8] = prev_share
    tokens[:, 9] = _bw(spb_in)
    tokens[:, 10] = holds
    tokens[:, 11] = central
    tokens[:, 12] = topo.incidence @ steady / np.maximum(topo.degree, 1.0)
    tokens[:, 13] = gflops / max(gflops.max(), 1e-9)
    tokens[:, 14] = np.where(np.isfinite(alone), np.log2(alone / fastest) / 4.0, OBS_LIMIT / 4)
    tokens[:, 15] = topo.degree / 8.0
    return tokens


def _context(
    graph: LayerGraph,
    snapshot: Snapshot,
    view: NetView,
    partial: PartialPlan,
    actions: StageActions,
    fastest: float,
    profile: Profile | None,
) -> np.ndarray:
    """The plan so far, the usable devices and the model's size at the current cut (module docstring),
    unclipped."""
    start, n_units = partial.start, len(graph.units)
    table = _cut_table(graph, profile)
    rest_work, in_bytes = table[start]
    best = max(np.asarray(view.gflops).max(), 1e-9)
    position = np.zeros(len(actions.cuts))
    if start > 0:
        position[actions.cuts.index(start)] = 1.0
    n_usable = int(view.usable_mask.sum())
    windows = snapshot.link_windows
    mbps = np.median(windows[:, 0]) if windows.size else 0.0
    return np.concatenate(
        [
            position,
            [
                start / n_units,
                len(partial.factors) / actions.max_stages,
                (partial.factors[-1] if partial.factors else 0) / actions.max_factor,
                n_usable / 32.0,
                math.log2(max(n_usable, 1)) / 5.0,
                rest_work / max(table[0][0], 1),
                float(_log_seconds(rest_work / (best * 1e9))),
                float(_log_seconds(in_bytes * 8e-6 / max(mbps, 1e-3))),
                float(_log_seconds(fastest)) if np.isfinite(fastest) else 2.0,
            ],
        ]
    )


class StagedSplitEnv(gym.Env):
    """See the module docstring. ``config`` is an EnvConfig (or a mapping for ``EnvConfig.parse``): its
    ``max_split`` is K, ``max_stages`` the stage limit and ``max_devices`` the token rows (default: the
    largest training cluster). The world, cost model, reference and failures are the ``Simulator``'s
    (``self.sim``), and a request's reward and info are MicroSplitEnv's."""

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig | dict | None = None, backend: str = "sim", **backend_options):
        super().__init__()
        self.config = config if isinstance(config, EnvConfig) else EnvConfig.parse(config or {})
        self.sim = Simulator(self.config, backend, **backend_options)
        self.graph = self.sim.graph
        self.actions = StageActions.of(self.graph, self.config.max_split, self.config.max_stages)
        self.max_devices = self.sim.max_devices
        size = self.max_devices * TOKEN_FEATURES + context_size(self.actions)
        self.observation_space = gym.spaces.Box(-OBS_LIMIT, OBS_LIMIT, (size,), np.float32)
        self.action_space = gym.spaces.Discrete(self.actions.n)
        self.partial = PartialPlan()
        self._served = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """A new request; a new world when seeded, given ``options`` (MicroSplitEnv's), at the start, or
        after ``requests_per_episode`` requests in the current one."""
        super().reset(seed=seed)
        if (
            seed is not None
            or options
            or self.sim.world is None
            or self._served >= self.config.requests_per_episode
        ):
            options = options or {}
            world = options.get("world")
            if world is None:
                world = self.sim.sample_world(self.np_random)
            self.sim.enter(world, float(options.get("time", self.config.start_s)))
            self._served = 0
        self.partial = PartialPlan()
        return self.observation(), {"cluster": self.sim.cluster_spec.name, "time_s": self.sim.time}

    def action_masks(self) -> np.ndarray:
        return self.actions.mask(self.partial.start, len(self.partial.factors), self.sim.view.n_usable)

    def step(self, action):
        action = int(action)
        valid = 0 <= action < self.actions.n and self.action_masks()[action]
        if not valid:  # served on the reference plan, flagged (MaskablePPO never gets here)
            return self._serve(self.sim.reference_plan(), None, True)
        cut, factor = self.actions.decode(action)
        self.partial.bounds.append(cut)
        self.partial.factors.append(factor)
        if cut < len(self.graph.units):
            return self.observation(), 0.0, False, False, {}
        shape = self.partial.shape()
        return self._serve(complete_arrays(self.graph, self.sim.view, shape, self.sim.profile), shape, False)

    def _serve(self, plan: PlanArrays, shape: Shape | None, invalid: bool):
        lo, hi = self.config.gap_s
        served = self.sim.serve(plan, float(self.np_random.uniform(lo, hi)))
        info = request_info(
            served, plan, shape.describe() if shape else None, invalid, self.sim.cluster_spec.name
        )
        self._served += 1
        self.partial = PartialPlan()
        reward = float(served.reward(self.sim.objective))
        return np.zeros(self.observation_space.shape, np.float32), reward, True, False, info

    def observation(self) -> np.ndarray:
        """The current sub-step's observation (tokens padded to ``max_devices``, then the context)."""
        spec = self.sim.cluster_spec
        if len(spec.devices) > self.max_devices:
            raise ValueError(
                f"cluster {spec.name!r} has {len(spec.devices)} devices; max_devices is {self.max_devices}"
            )
        tokens, context = observe(
            self.graph, self.sim.snapshot, self.sim.view, self.partial, self.actions, self.sim.profile
        )
        padded = np.zeros((self.max_devices, TOKEN_FEATURES))
        padded[: len(tokens)] = tokens
        return np.concatenate([padded.ravel(), context]).astype(np.float32)

    def close(self) -> None:
        self.sim.close()
