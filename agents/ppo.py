"""The trained PPO policy as a planner: a snapshot in, a plan out, in well under 2 ms.

``PPOPlanner(path)`` reads a policy file written by ``save_policy`` (training/fixed_slot.py does that):
a zip with

- ``disnet.json``: what the policy sees and chooses (format ``disnet-ppo/1``): the model and its cut
  points, the observation layout (``max_devices``, ``history``), the candidate shapes (its actions),
  the objective it was trained for and the actor's layer sizes;
- ``policy.pth``: the SB3 ``MaskableActorCriticPolicy`` state dict (tensors only, loaded with
  ``weights_only=True``; nothing is unpickled).

Deciding = the env's own ``Observer`` and action mask rule (env/actions.py) on the snapshot, one
forward pass of the actor (numpy, no torch dispatch: ~30 us instead of ~200 us), the most likely valid
action (deterministic), and the env's analytic completion (env/completion.py) of that shape. So the planner
chooses exactly what the environment's policy would, on the same observation.

``top_k > 1`` (``ppo:PATH`` with ``top_k=3``, or ``ppo-top3:PATH`` by name) lets the policy propose and
the cost model verify: the completions of the k most likely valid actions are scored on the snapshot and
the best is chosen — k cost-model evaluations (a few hundred microseconds each) instead of the
optimiser's thousands. It trims the policy's own mistakes (a shape ranked second that the cost model
sees is better); the price is that the cost model, like the optimiser, sees only the snapshot, not
the risk the policy learned (a device that may leave mid-request).

``polish=N`` (``ppo-polish:PATH``, N = 200; ``ppo-polishN:PATH``; the staged policy takes it too) keeps the
policy's choice of devices and lets searches on the cost model (agents/polish.py: a descent over the
shapes of its plans, then two local searches of at most N plans scored each, on the snapshot and on
the latest second, the robust price choosing among the best of each; 0.55-0.9 s in the median for
VGG-16 on 10-32 devices on this host) improve it beyond what the policy's shapes and the analytic
completion express: cut points and split factors, shares, band order, a device dropped from a stage
or moved between stages. The completion prices transfers without contention on a device's radio, so
when every link collapses it spreads stages over more devices than pays; the polish takes the surplus back. It never
computes on or relays through a device the policy's plan does not touch: which devices to trust is the
part of the decision where the policy knows what the cost model cannot (devices that may leave
mid-request).

Safe fallback (``plan`` never raises for a policy problem): if the graph is not the one the policy was
trained for, the cluster has more devices than the observation holds, or the plan fails to validate,
the planner returns the completion of shape 0 — the whole model on the single best
device for the snapshot (the env's reference plan) — and counts it in ``self.fallbacks``.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from agents.base import Decision, Planner
from agents.policy_planner import PolicyPlanner
from env.actions import action_mask, single_device_shape
from env.completion import complete
from env.cost_model import CostModel, Objective
from env.net_view import net_view
from env.observation import Observer
from env.partition_env import MicroSplitEnv
from env.shapes import Shape
from env.snapshot import Snapshot
from runtime.graph import LayerGraph
from runtime.plan import PlanError
from runtime.spec import ClusterSpec

POLICY_FORMAT = "disnet-ppo/1"
ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}


class PolicyFileError(ValueError):
    """A policy file is missing, unreadable or does not describe a disnet PPO policy."""


@dataclass(frozen=True)
class PolicyMeta:
    """The ``disnet.json`` of a policy file: everything needed to rebuild its inputs and outputs."""

    model: str
    n_units: int
    cut_points: list[int]
    max_devices: int
    history: int
    shapes: list[list[list[int]]]
    n_actions: int
    objective: dict
    activation: str
    clusters: list[str]
    format: str = POLICY_FORMAT

    @classmethod
    def of_env(cls, env: MicroSplitEnv, activation: str) -> PolicyMeta:
        return cls(
            model=env.graph.name,
            n_units=len(env.graph.units),
            cut_points=list(env.graph.cut_points),
            max_devices=env.max_devices,
            history=env.config.history,
            shapes=[s.to_list() for s in env.shapes],
            n_actions=env.n_actions,
            objective=env.config.objective.model_dump(),
            activation=activation,
            clusters=[c.spec.name for c in env.sim.clusters],
        )


def save_policy(path: str | Path, policy: torch.nn.Module, meta: PolicyMeta) -> Path:
    """Write a policy file: ``policy.pth`` (the policy's state dict) and ``disnet.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in policy.state_dict().items()}, buffer)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("policy.pth", buffer.getvalue())
        archive.writestr("disnet.json", json.dumps(asdict(meta), indent=1))
    return path


def load_policy(path: str | Path) -> tuple[dict[str, torch.Tensor], PolicyMeta]:
    """Read a policy file written by ``save_policy``; raise PolicyFileError naming the problem."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read("disnet.json"))
            state = torch.load(io.BytesIO(archive.read("policy.pth")), weights_only=True)
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, RuntimeError) as exc:
        raise PolicyFileError(f"{path}: not a disnet policy file ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != POLICY_FORMAT:
        raise PolicyFileError(f"{path}: format {meta.get('format')!r}, expected {POLICY_FORMAT!r}")
    try:
        return state, PolicyMeta(**meta)
    except TypeError as exc:
        raise PolicyFileError(f"{path}: disnet.json: {exc}") from None


def open_policy(path: str | Path, cost_model: CostModel | None = None, **options) -> Planner:
    """The planner of a policy file of either format: ``disnet-ppo/1`` (this module's fixed action list)
    or ``disnet-staged/1`` (agents/staged_policy.py, any cluster); both take ``top_k`` and ``polish``."""
    from agents.staged_policy import STAGED_FORMAT, StagedPlanner

    try:
        with zipfile.ZipFile(path) as archive:
            kind = json.loads(archive.read("disnet.json")).get("format")
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, AttributeError) as exc:
        raise PolicyFileError(f"{path}: not a disnet policy file ({type(exc).__name__}: {exc})") from None
    if kind != STAGED_FORMAT:
        return PPOPlanner(path, cost_model, **options)
    return StagedPlanner(path, cost_model, **options)


class PPOPlanner(PolicyPlanner):
    """A trained MicroSplit policy behind the Planner interface (module docstring)."""

    def __init__(
        self, path: str | Path, cost_model: CostModel | None = None, top_k: int = 1, polish: int = 0
    ) -> None:
        super().__init__(path, cost_model, top_k, polish)
        state, self.meta = load_policy(self.path)
        self.shapes = [Shape.from_list(s) for s in self.meta.shapes]
        self._layers = _actor_layers(state, self.path)
        self._act = ACTIVATIONS[self.meta.activation]
        self._observers: dict[int, Observer] = {}
        self._masks: dict[tuple[int, int], np.ndarray] = {}
        self.fallbacks = 0

    def decide(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Decision:
        """The policy's plan for ``snapshot`` (``objective`` is the one it was trained for; see
        ``self.meta.objective``), or the single best device, with the reason, when it cannot answer."""
        view = net_view(snapshot)
        try:
            plans = [
                complete(graph, view, self.shapes[a]).validate(graph, snapshot.spec.device_ids)
                for a in self.ranked(snapshot, graph, view)[: self.top_k]
            ]
        except (ValueError, PlanError, IndexError) as exc:
            self.fallbacks += 1
            single = complete(graph, view, single_device_shape(graph))
            return Decision(single, fallback=f"policy cannot plan here ({exc}): single best device")
        return self.choose(plans, snapshot, graph, objective)

    def fits(self, graph: LayerGraph, spec: ClusterSpec | None = None) -> str | None:
        """Why this policy cannot plan ``graph`` on ``spec`` (None if it can)."""
        if (problem := self.misfit(graph)) is not None:
            return problem
        if spec is not None and len(spec.devices) > self.meta.max_devices:
            return (
                f"policy {self.path.name} sees at most {self.meta.max_devices} devices, "
                f"cluster {spec.name!r} has {len(spec.devices)}"
            )
        return None

    def blank_logits(self, graph: LayerGraph) -> tuple[np.ndarray, int]:
        return self.logits(np.zeros(self._observer(graph).size)), self.meta.n_actions

    def act(self, snapshot: Snapshot, graph: LayerGraph, view=None) -> int:
        """The policy's deterministic action (index into ``self.shapes``); ValueError for a foreign graph."""
        return self.ranked(snapshot, graph, view)[0]

    def ranked(self, snapshot: Snapshot, graph: LayerGraph, view=None) -> list[int]:
        """The valid actions, most likely first (action 0, the single device, is always among them);
        ValueError for a graph the policy was not trained for."""
        if (problem := self.trained_for(graph)) is not None:
            raise ValueError(problem)
        view = view or net_view(snapshot)
        obs = self._observer(graph).encode(snapshot, view)
        logits = self.logits(obs)
        mask = self._mask(graph, view)
        order = np.argsort(-np.where(mask, logits, -np.inf), kind="stable")
        return [int(a) for a in order[: int(mask.sum())]]

    def logits(self, obs: np.ndarray) -> np.ndarray:
        """The actor's action logits for one observation."""
        x = obs.astype(np.float64)
        for i, (w, b) in enumerate(self._layers):
            x = w @ x + b
            if i + 1 < len(self._layers):
                x = self._act(x)
        return x

    def _observer(self, graph: LayerGraph) -> Observer:
        obs = self._observers.get(id(graph))
        if obs is None:
            obs = self._observers[id(graph)] = Observer(graph, self.meta.max_devices, self.meta.history)
        return obs

    def _mask(self, graph: LayerGraph, view) -> np.ndarray:
        key = (id(graph), view.n_usable)
        mask = self._masks.get(key)
        if mask is None:
            mask = self._masks[key] = action_mask(graph, view, self.shapes, self.meta.n_actions)
        return mask


def _actor_layers(state: dict[str, torch.Tensor], path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of the actor's hidden layers, then of the action head, as float64 arrays."""
    prefix = "mlp_extractor.policy_net."
    hidden = sorted({int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)})
    names = [f"{prefix}{i}" for i in hidden] + ["action_net"]
    try:
        return [(state[f"{n}.weight"].double().numpy(), state[f"{n}.bias"].double().numpy()) for n in names]
    except KeyError as exc:
        raise PolicyFileError(f"{path}: policy.pth lacks {exc.args[0]}") from None
