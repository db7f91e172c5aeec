"""A trained stage-by-stage policy as a planner, for any cluster (format ``disnet-staged/1``).

A policy file (training/staged.py writes it) is a zip with ``policy.pth`` (the MaskablePPO state dict,
tensors only, loaded with ``weights_only=True``) and ``disnet.json`` (``StagedMeta``: the model and its
cut points, K, the stage limit, the activation, the completion). Deciding walks the request's sub-steps
as the env does (env/staged_env.py): observe the device tokens and context on the snapshot and the plan so
far, one numpy forward pass of the device-set network, the most likely valid (cut, factor), until a stage
ends the model; the analytic completion then places devices and shares, counting work as the env the
policy was trained in did (``completion``: on the cost model's profile, or FLOPs). No device count limit:
the network pools over whatever devices the cluster has.

``top_k > 1``: the greedy sequence and, for each of the k - 1 next most likely first stages, the greedy
rest; the cost model picks the best of those k plans on the snapshot. ``polish=N`` then improves the best
by local searches on the cost model of at most N plans each on the snapshot and on the latest second,
on the devices the policy's plans touch, and lets the robust price choose among the best each found
(agents/polish.py, as for the fixed-slot policy: about 0.55 s for VGG-16 on this host).
A policy for another model is an error when the planner is built for a graph (``fits``) and when asked to
plan (``PlannerError``), never a quiet fallback. The only fallback left is a plan that fails to validate
(it would be a bug), answered with the single best device and named in the Decision.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agents.base import Decision, PlannerError
from agents.device_set import DeviceSetNet
from agents.policy_planner import PolicyPlanner
from agents.ppo import save_policy
from env.actions import single_device_shape
from env.completion import complete
from env.cost_model import CostModel, Objective, Profile
from env.net_view import NetView, net_view
from env.shapes import Shape
from env.snapshot import Snapshot
from env.staged_env import TOKEN_FEATURES, PartialPlan, StageActions, context_size, observe
from runtime.graph import LayerGraph
from runtime.plan import PlanError
from runtime.spec import ClusterSpec

STAGED_FORMAT = "disnet-staged/1"
COMPLETIONS = ("profile", "flops")  # files written before the field existed completed on FLOPs


class StagedPolicyError(ValueError):
    """A staged policy file is unreadable, or does not fit the model it is asked to plan."""


@dataclass(frozen=True)
class StagedMeta:
    """The ``disnet.json`` of a staged policy file."""

    model: str
    n_units: int
    cut_points: list[int]
    max_factor: int
    max_stages: int
    activation: str
    objective: dict
    completion: str = "flops"  # what the env counted as a stage's work: "profile" (its cost model's) or FLOPs
    format: str = STAGED_FORMAT


def save_staged(path: str | Path, policy: torch.nn.Module, meta: StagedMeta) -> Path:
    """Write a staged policy file: the zip layout of ``agents.ppo.save_policy`` with a staged ``meta``."""
    return save_policy(path, policy, meta)


def load_staged(path: str | Path) -> tuple[dict[str, torch.Tensor], StagedMeta]:
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read("disnet.json"))
            state = torch.load(io.BytesIO(archive.read("policy.pth")), weights_only=True)
        if meta.get("format") != STAGED_FORMAT:
            raise StagedPolicyError(f"{path}: format {meta.get('format')!r}, expected {STAGED_FORMAT!r}")
        parsed = StagedMeta(**meta)
        if parsed.completion not in COMPLETIONS:
            raise StagedPolicyError(
                f"{path}: completion {parsed.completion!r}, expected one of {COMPLETIONS}"
            )
        return state, parsed
    except (OSError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError, RuntimeError) as exc:
        raise StagedPolicyError(f"{path}: not a disnet staged policy ({type(exc).__name__}: {exc})") from None


class StagedPlanner(PolicyPlanner):
    """A trained StagedSplit policy behind the Planner interface (module docstring)."""

    def __init__(
        self, path: str | Path, cost_model: CostModel | None = None, top_k: int = 1, polish: int = 0
    ) -> None:
        super().__init__(path, cost_model, top_k, polish)
        state, self.meta = load_staged(self.path)
        try:
            self.net = DeviceSetNet(state, self.meta.activation)
        except KeyError as exc:
            raise StagedPolicyError(f"{self.path}: policy.pth lacks {exc.args[0]}") from None
        self._actions: dict[int, StageActions] = {}

    def fits(self, graph: LayerGraph, spec: ClusterSpec | None = None) -> str | None:
        """Why this policy cannot plan ``graph`` (None if it can; any cluster fits)."""
        return self.misfit(graph)

    def blank_logits(self, graph: LayerGraph) -> tuple[np.ndarray, int]:
        actions = self._actions_for(graph)
        return self.net.logits(np.zeros((1, TOKEN_FEATURES)), np.zeros(context_size(actions))), actions.n

    def decide(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Decision:
        problem = self.fits(graph)
        if problem is not None:
            raise PlannerError(problem)
        view = net_view(snapshot)
        model = self.cost_model(graph, snapshot.spec)
        profile = self._work_profile(model)
        shapes = self.shapes(snapshot, graph, view)
        try:
            plans = [
                complete(graph, view, s, profile).validate(graph, snapshot.spec.device_ids) for s in shapes
            ]
        except (ValueError, PlanError) as exc:
            single = complete(graph, view, single_device_shape(graph))
            return Decision(single, fallback=f"policy's plan is invalid ({exc}): single best device")
        return self.choose(plans, snapshot, graph, objective)

    def shapes(self, snapshot: Snapshot, graph: LayerGraph, view: NetView | None = None) -> list[Shape]:
        """The greedy shape, then (``top_k``) greedy continuations of the next most likely first stages."""
        view = view or net_view(snapshot)
        actions = self._actions_for(graph)
        profile = self._work_profile(self.cost_model(graph, snapshot.spec))
        first = self._ranked(graph, snapshot, view, PartialPlan(), actions, profile)
        return [self._greedy(graph, snapshot, view, actions, a, profile) for a in first[: self.top_k]]

    def _greedy(
        self,
        graph: LayerGraph,
        snapshot: Snapshot,
        view: NetView,
        actions: StageActions,
        first: int,
        profile: Profile | None,
    ) -> Shape:
        partial, action = PartialPlan(), first
        while True:
            cut, factor = actions.decode(action)
            partial.bounds.append(cut)
            partial.factors.append(factor)
            if cut == len(graph.units):
                return partial.shape()
            action = self._ranked(graph, snapshot, view, partial, actions, profile)[0]

    def _ranked(
        self,
        graph: LayerGraph,
        snapshot: Snapshot,
        view: NetView,
        partial: PartialPlan,
        actions: StageActions,
        profile: Profile | None,
    ) -> list[int]:
        tokens, context = observe(graph, snapshot, view, partial, actions, profile)
        mask = actions.mask(partial.start, len(partial.factors), view.n_usable)
        logits = np.where(mask, self.net.logits(tokens, context), -np.inf)
        return [int(a) for a in np.argsort(-logits, kind="stable")[: int(mask.sum())]]

    def _work_profile(self, model: CostModel) -> Profile | None:
        """The profile the completion and the observation count work on: the cost model's, for a policy
        trained so (``meta.completion``), else None (FLOPs)."""
        return model.profile if self.meta.completion == "profile" else None

    def _actions_for(self, graph: LayerGraph) -> StageActions:
        actions = self._actions.get(id(graph))
        if actions is None:
            actions = StageActions.of(graph, self.meta.max_factor, self.meta.max_stages)
            self._actions[id(graph)] = actions
        return actions
