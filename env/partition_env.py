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
conditions, see training/actions.py, plus structured ones: one stage split k ways, cuts at downsampling points) is
small (tens), masks exactly, and makes behaviour cloning a plain classification. Index 0 is always
"the whole model on one device", always valid (env/actions.py). ``action_masks()`` hides shapes whose
factors exceed the usable devices or a stage's extent and the padding; an unmasked invalid action is
still run safely (factors clamped by the completion, a padding index replaced by action 0) and flagged
with ``info["invalid_action"] = True``.

**Observation**: ``Box(0, 4, (d,), float32)`` from ``Observer`` (env/observation.py): per device slot
the device's state and routes, per device pair the link's measured bandwidth and history, the model's size.

**Reward**: ``-score(request) / score(reference)``, where score is the configured ``Objective`` (latency,
energy or weighted) and the reference is the best single-device plan (the completion of shape 0 on the
snapshot) run under the same conditions at the same ``t``. The ratio keeps the scale near 1 for any
model or cluster; a policy that beats offloading to the best device earns more than -1.

**Failures**: a request during which a device it touches goes down is restarted on the reference plan
once the failure is found, and charged the attempt up to then plus the retry (``info["failed"] = True``;
env/simulator.py).

**Info** per step: ``latency_s``, ``energy_j`` (what the request cost), ``reference_latency_s``,
``reference_energy_j``, ``plan`` (the request's plan as ``PlanArrays``; its ``.plan`` is the ``Plan``,
built when first asked for, as building ~50 dataclasses at every step cost 13% of the step), ``shape``,
``invalid_action``, ``failed``, ``outputs_match`` (live backend), ``time_s`` and ``cluster``.

The world, its clock, the cost model, the completion and the pricing of requests are the ``Simulator``'s
(env/simulator.py, ``env.sim``), shared with env/staged_env.py, training and its oracle; the env turns
actions into plans and requests into rewards. **Backends** (env/backends.py): ``sim`` predicts each
request with the cost model on the world; ``live`` executes it on a cluster through the runtime's
controller and rewards measured latency and energy. The reference is always predicted.

Domain randomisation per episode (``reset``): a cluster from ``clusters``, a dynamics config from
``dynamics`` (traces, load, failures), optionally random source/sink, and a fresh world sampled from the
episode's seed. ``reset(options={"world": NetworkState, "time": t})`` replays a given world instead
(evaluation on identical conditions).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from env.actions import action_list, action_mask
from env.config import EnvConfig, EnvConfigError
from env.observation import Observer
from env.plan_arrays import PlanArrays
from env.shapes import Shape, structured_shapes
from env.simulator import ServedRequest, Simulator
from runtime.plan import Plan


class MicroSplitEnv(gym.Env):
    """See the module docstring. ``config`` is an EnvConfig or a mapping for ``EnvConfig.parse``."""

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig | dict | None = None, backend: str = "sim", **backend_options: Any):
        super().__init__()
        self.config = config if isinstance(config, EnvConfig) else EnvConfig.parse(config or {})
        cfg = self.config
        self.sim = Simulator(cfg, backend, **backend_options)
        self.graph = self.sim.graph
        self.max_devices = self.sim.max_devices
        if cfg.shapes is None:
            shapes = structured_shapes(self.graph, cfg.max_stages, cfg.max_split)
        else:
            shapes = [Shape.from_list(s) for s in cfg.shapes]
        try:
            self.shapes = action_list(self.graph, shapes)
        except ValueError as exc:
            raise EnvConfigError(str(exc)) from None
        self._shape_names = [shape.describe() for shape in self.shapes]  # for info, once (5 us a step)
        self.n_actions = max(cfg.n_actions or 0, len(self.shapes))
        self.observer = Observer(self.graph, self.max_devices, cfg.history)
        self.observation_space = self.observer.space
        self.action_space = gym.spaces.Discrete(self.n_actions)
        self._requests = 0
        self._masks: dict[int, np.ndarray] = {}  # per usable device count

    def action_masks(self) -> np.ndarray:
        """Valid actions under the current snapshot (MaskablePPO calls this; env/actions.py's rule)."""
        return self._mask().copy()

    def _mask(self) -> np.ndarray:
        """The cached mask for the current snapshot: validity depends only on the usable device count."""
        n = self.sim.view.n_usable
        mask = self._masks.get(n)
        if mask is None:
            mask = self._masks[n] = action_mask(self.graph, self.sim.view, self.shapes, self.n_actions)
        return mask

    def plan_for(self, action: int) -> tuple[Plan, bool]:
        """The plan an action stands for under the current snapshot, and whether the action was invalid."""
        arrays, invalid = self._action_plan(action)
        return arrays.plan, invalid

    def _action_plan(self, action: int) -> tuple[PlanArrays, bool]:
        """``plan_for`` as arrays, what the step costs (an action outside the list: the reference plan)."""
        if not 0 <= action < len(self.shapes):
            return self.sim.reference_plan(), True
        return self.sim.completed(self.shapes[action]), not self._mask()[action]

    # ---- gymnasium API --------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        world = options.get("world")
        if world is None:
            world = self.sim.sample_world(self.np_random)
        self.sim.enter(world, float(options.get("time", self.config.start_s)))
        self._requests = 0
        return self._observation(), {"cluster": world.spec.name, "time_s": self.sim.time}

    def step(self, action):
        if self.sim.world is None:
            raise RuntimeError("call reset() before step()")
        action = int(action)
        plan, invalid = self._action_plan(action)
        shape = self._shape_names[action] if 0 <= action < len(self.shapes) else None
        lo, hi = self.config.gap_s
        served = self.sim.serve(plan, float(self.np_random.uniform(lo, hi)))
        self._requests += 1
        truncated = self._requests >= self.config.requests_per_episode
        info = request_info(served, plan, shape, invalid, self.sim.cluster_spec.name)
        return self._observation(), float(served.reward(self.sim.objective)), False, truncated, info

    def close(self) -> None:
        self.sim.close()

    def _observation(self) -> np.ndarray:
        return self.observer.encode(self.sim.snapshot, self.sim.view)


def request_info(
    served: ServedRequest, plan: PlanArrays, shape: str | None, invalid: bool, cluster: str
) -> dict:
    """A step's ``info`` (module docstring) for a request served with ``plan``."""
    return {
        "latency_s": served.charged.latency_s,
        "energy_j": served.charged.energy_j,
        "reference_latency_s": served.reference.latency_s,
        "reference_energy_j": served.reference.energy_j,
        "plan": plan,  # PlanArrays: ``.plan`` builds the Plan (module docstring, Info)
        "shape": shape,
        "invalid_action": invalid,
        "failed": served.outcome.failed,
        "outputs_match": served.outcome.outputs_match,
        "time_s": served.time_s,
        "cluster": cluster,
    }
