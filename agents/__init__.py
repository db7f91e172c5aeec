"""disnet agents layer: planners that turn a Snapshot into a Plan, and a registry to build them by name.

``make_planner("optimal")`` (the robust online optimiser, agents/robust.py; ``snapshot-optimal`` is the
optimiser that trusts the snapshot's rates, agents/optimizer.py) and friends; the references ``clairvoyant`` and
``hindsight`` are for evaluation only and need ``world=`` (the ``NetworkState`` the requests run in);
``graph`` and ``spec`` (or ``cost_model``) let the planners that score candidates share one cost model
with the caller. Other keyword options go to the class.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.base import Decision, Planner, PlannerError
from agents.baselines import DeepSlicing, DeepThings, LocalOnly, MoDNN, Neurosurgeon
from agents.clairvoyant import Clairvoyant, Hindsight
from agents.disnet import DisnetPlanner
from agents.optimizer import OptimalPlanner
from agents.robust import RobustPlanner
from env.cost_model import CostModel
from env.network import NetworkState
from runtime.graph import LayerGraph
from runtime.spec import ClusterSpec

REFERENCES = {p.name: p for p in (Clairvoyant, Hindsight)}  # evaluation only: they read the world itself
POLICY_NAME = re.compile(
    r"ppo(?:-top(?P<k>[1-9][0-9]*))?(?P<polished>-polish(?P<polish>[1-9][0-9]*)?)?:(?P<path>.+)"
)
DEFAULT_POLISH = 200  # plans scored by ``ppo-polish:PATH``'s each local search: 0.55-0.9 s for VGG-16 in all
PLANNERS: dict[str, Callable[..., Planner]] = {
    "optimal": RobustPlanner,
    "snapshot-optimal": OptimalPlanner,
    "disnet": DisnetPlanner,
    "modnn": MoDNN,
    "modnn-p2p": lambda cost_model=None, **options: MoDNN(cost_model, gather=False, **options),
    "deepslicing": DeepSlicing,
    "deepthings": DeepThings,
    "deepthings-equal": lambda cost_model=None, **options: DeepThings(cost_model, equal=True, **options),
    "neurosurgeon": Neurosurgeon,
    "local": LocalOnly,
}


def planner_label(name: str) -> str:
    """A planner name for tables: a policy's file without its folders (``ppo-top3:runs/x/policy.zip`` ->
    ``ppo-top3:policy.zip``)."""
    policy = POLICY_NAME.fullmatch(name)
    return name if policy is None else f"{name.split(':', 1)[0]}:{Path(policy['path']).name}"


def planner_labels(names: list[str]) -> dict[str, str]:
    """Each name's ``planner_label``, or the name itself where two of ``names`` would share a label (two
    runs' ``policy.zip`` must not look alike, nor overwrite each other's files)."""
    labels = [planner_label(name) for name in names]
    return {
        name: label if labels.count(label) == 1 else name for name, label in zip(names, labels, strict=True)
    }


def make_planner(
    name: str,
    *,
    graph: LayerGraph | None = None,
    spec: ClusterSpec | None = None,
    cost_model: CostModel | None = None,
    world: NetworkState | None = None,
    **options: Any,
) -> Planner:
    """The planner registered as ``name``; raises PlannerError for an unknown name or a bad option.
    ``world``: the world the requests run in, which the references (``REFERENCES``) plan on and every
    online planner ignores.
    ``ppo:PATH`` loads a trained policy file (agents/ppo.py, or agents/staged_policy.py for a policy for
    any cluster), an error if ``graph`` (and ``spec``) are given and the policy cannot plan them;
    ``ppo-topK:PATH`` lets the cost model pick the best of the policy's K most likely actions;
    ``ppo-polish:PATH`` (or ``ppo-polishN:PATH``, also after ``-topK``) improves the policy's plan by a
    local search of at most 200 (N) scored plans, the robust price choosing among the best it found
    (agents/polish.py)."""
    policy = POLICY_NAME.fullmatch(name)
    if policy is not None:
        from agents.ppo import open_policy  # torch and the env only when asked for

        named = {"top_k": int(policy["k"] or 1)}
        if policy["polished"]:
            named["polish"] = int(policy["polish"] or DEFAULT_POLISH)
        try:
            planner = open_policy(policy["path"], cost_model, **(named | options))
        except (TypeError, ValueError) as exc:
            raise PlannerError(f"planner {name!r}: {exc}") from None
        problem = planner.fits(graph, spec) if graph is not None else None
        if problem is not None:  # a policy for another model or a larger cluster: an error, not a fallback
            raise PlannerError(f"planner {name!r}: {problem}")
        return planner
    if name in REFERENCES:
        if world is None:
            raise PlannerError(f"planner {name!r} is for evaluation only: it needs the world it plans on")
        options["world"] = world
    factory = REFERENCES.get(name) or PLANNERS.get(name)
    if factory is None:
        valid = ", ".join([*PLANNERS, *REFERENCES])
        raise PlannerError(
            f"unknown planner {name!r}; valid names: {valid}, and a trained policy file as ppo:PATH "
            "(ppo-topK:PATH, ppo-polish:PATH, ppo-topK-polish:PATH)"
        )
    if cost_model is None and graph is not None and spec is not None:
        cost_model = CostModel(graph, spec)
    try:
        return factory(cost_model, **options)
    except TypeError as exc:
        raise PlannerError(f"planner {name!r}: {exc}") from None


__all__ = [
    "PLANNERS",
    "REFERENCES",
    "Clairvoyant",
    "DeepSlicing",
    "DeepThings",
    "Decision",
    "DisnetPlanner",
    "Hindsight",
    "LocalOnly",
    "MoDNN",
    "Neurosurgeon",
    "OptimalPlanner",
    "Planner",
    "PlannerError",
    "RobustPlanner",
    "make_planner",
    "planner_label",
    "planner_labels",
]
