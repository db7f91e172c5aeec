"""What both kinds of trained policy planner share (agents/ppo.py's fixed-slot one, agents/staged_policy.py's
one for any cluster): the options that turn a policy's plans into one answer, and that answer."""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from agents.base import Decision, Planner, fits_memory, within_memory
from agents.polish import polish
from env.cost_model import CostModel, Objective
from env.snapshot import Snapshot
from runtime.graph import LayerGraph
from runtime.plan import Plan


class PolicyPlanner(Planner):
    """A trained policy behind the Planner interface. ``top_k`` plans come from the policy and the cost
    model picks the best on the snapshot; ``polish=N`` instead improves them by searches of at most N plans
    each (agents/polish.py). Subclasses load ``self.meta`` (the model the policy was trained for: ``model``,
    ``n_units``, ``cut_points``) and implement ``decide``."""

    name = "ppo"

    def __init__(
        self, path: str | Path, cost_model: CostModel | None = None, top_k: int = 1, polish: int = 0
    ) -> None:
        super().__init__(cost_model)
        if not (isinstance(top_k, int) and top_k >= 1):
            raise ValueError(f"top_k must be an integer >= 1, not {top_k!r}")
        if not (isinstance(polish, int) and polish >= 0):
            raise ValueError(f"polish must be an integer >= 0 (plans scored), not {polish!r}")
        self.path, self.top_k, self.polish = Path(path), top_k, polish
        self._misfits: dict[int, str | None] = {}  # misfit's answer per graph (by id, as the observers)

    def plan(self, snapshot: Snapshot, graph: LayerGraph, objective: Objective) -> Plan:
        return self.decide(snapshot, graph, objective).plan

    def trained_for(self, graph: LayerGraph) -> str | None:
        """Why the policy cannot plan ``graph``: it was trained for another model (None if not)."""
        if len(graph.units) != self.meta.n_units or list(graph.cut_points) != self.meta.cut_points:
            return f"policy {self.path.name} was trained for {self.meta.model}, not {graph.name}"
        return None

    def misfit(self, graph: LayerGraph) -> str | None:
        """``trained_for``'s answer, or why the file's weights do not fit ``graph``'s observations and
        actions (None if they do): one forward pass over a blank observation, once per graph, so that
        another policy's weights under this one's description fail before a run, not at every decision."""
        key = id(graph)
        if key not in self._misfits:
            self._misfits[key] = self.trained_for(graph) or self._weights_misfit(graph)
        return self._misfits[key]

    def _weights_misfit(self, graph: LayerGraph) -> str | None:
        try:
            logits, n_actions = self.blank_logits(graph)
        except ValueError:
            logits, n_actions = None, 0
        if logits is None or logits.shape != (n_actions,):
            return f"policy {self.path.name}: its weights do not fit {graph.name}'s observations and actions"
        return None

    @abc.abstractmethod
    def blank_logits(self, graph: LayerGraph) -> tuple[np.ndarray, int]:
        """The action logits for an all-zero observation of ``graph``, and how many actions there are
        (a ValueError where the weights' shapes do not match the observation)."""

    def choose(
        self, plans: list[Plan], snapshot: Snapshot, graph: LayerGraph, objective: Objective
    ) -> Decision:
        """The answer from the policy's valid plans, most likely first: the polish's, or the best of
        them on the snapshot; of those that fit the devices' memory (a policy learns nothing of it), and
        when none does, a PlannerError naming the device the first overfills, never an impossible plan."""
        fitting = [plan for plan in plans if fits_memory(plan, graph, snapshot.spec)]
        if not fitting:  # raises, naming the device the first plan overfills
            within_memory(plans[0], graph, snapshot.spec, f"policy {self.path.name}")
        plans = fitting
        if self.polish:
            model = self.cost_model(graph, snapshot.spec)
            return Decision(polish(model, snapshot, graph, objective, plans, self.polish))
        if len(plans) == 1:
            return Decision(plans[0])
        return Decision(min(plans, key=lambda plan: self.score(plan, snapshot, graph, objective)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, top_k={self.top_k}, polish={self.polish})"
