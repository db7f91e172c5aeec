"""Named scenarios: a YAML file under ``configs/scenarios/`` that fixes some of a script's options.

A scenario's fields are the scripts' option names; a script takes them as its defaults, so a flag given
on the command line still wins. ``dynamics`` is a ``DynamicsConfig`` mapping (env/network.py) for worlds
no flag can describe, such as every link collapsing at once. Relative paths in ``cluster``, ``traces`` and
a policy's ``ppo:PATH`` are read from the scenario file's folder, and so are trace paths in ``dynamics``
(scripts pass ``dynamics_dir`` on to the world).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from agents import POLICY_NAME
from env.dynamics import DynamicsConfig
from env.snapshot import NetworkError
from runtime.config import describe_validation_error
from runtime.spec import ClusterSpec, load_cluster

SCENARIOS = Path(__file__).resolve().parents[1] / "configs" / "scenarios"


class ScenarioError(ValueError):
    """A scenario is missing or invalid; the message names the file and the field."""


class Scenario(BaseModel):
    """The options a scenario may fix (None: the script's own default)."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    cluster: str | None = None
    model: str | None = None
    agents: list[str] | None = None
    requests: PositiveInt | None = None
    spec_cap_mbps: PositiveFloat | None = None
    traces: str | None = None
    dynamics: dict[str, Any] | None = None
    _folder: Path | None = PrivateAttr(default=None)  # where the file was: relative paths start there

    @model_validator(mode="after")
    def _one_source_of_links(self) -> Scenario:
        if self.traces is not None and self.dynamics is not None:
            raise ValueError("traces and dynamics both set the links: choose one")
        return self

    def cluster_spec(self) -> ClusterSpec:
        """The scenario's cluster, its links capped at ``spec_cap_mbps``."""
        if self.cluster is None:
            raise ScenarioError("this scenario names no cluster")
        return load_cluster(self.cluster, bandwidth_cap=self.spec_cap_mbps)

    def defaults(self) -> dict[str, Any]:
        """The fields this scenario sets, as argparse defaults (``agents`` as the comma list flags take)."""
        fixed = self.model_dump(exclude_none=True, exclude={"description"})
        if self.agents is not None:
            fixed["agents"] = ",".join(self.agents)
        if self.dynamics is not None:
            fixed["dynamics_dir"] = self._folder
        return fixed


def scenario_path(name: str) -> Path:
    """A scenario's file: ``name`` itself if it is a file, else ``configs/scenarios/NAME.yaml``."""
    given = Path(name)
    return given if given.is_file() else SCENARIOS / f"{name}.yaml"


def load_scenario(name: str) -> Scenario:
    """The validated scenario ``name`` (a name under configs/scenarios or a YAML file), paths resolved."""
    path = scenario_path(name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SCENARIOS.glob("*.yaml")))
        raise ScenarioError(f"no scenario {name!r}: neither a file nor one of {known}")
    try:
        scenario = Scenario.model_validate(yaml.safe_load(path.read_text()) or {})
        if scenario.dynamics is not None:
            DynamicsConfig.parse(scenario.dynamics, origin=f"{path}: dynamics", base_dir=path.parent)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not YAML ({exc})") from None
    except ValidationError as exc:
        raise ScenarioError(describe_validation_error(str(path), exc)) from None
    except NetworkError as exc:
        raise ScenarioError(str(exc)) from None
    return _anchored(scenario, path.parent)


def _anchored(scenario: Scenario, folder: Path) -> Scenario:
    """``scenario`` with its cluster, trace and policy files read from ``folder`` when relative."""

    def anchor(path: str) -> str:
        return str((folder / path).resolve()) if not Path(path).is_absolute() else path

    def agent(name: str) -> str:
        policy = POLICY_NAME.fullmatch(name)
        return name if policy is None else f"{name.split(':', 1)[0]}:{anchor(policy['path'])}"

    update: dict[str, Any] = {}
    if scenario.cluster is not None:
        update["cluster"] = anchor(scenario.cluster)
    if scenario.traces not in (None, "synthetic"):
        update["traces"] = anchor(scenario.traces)
    if scenario.agents is not None:
        update["agents"] = [agent(a) for a in scenario.agents]
    anchored = scenario.model_copy(update=update)
    anchored._folder = folder
    return anchored


def timed_drop(dynamics: dict[str, Any], at: float | None, length: float | None = None) -> dict[str, Any]:
    """``dynamics`` with its links' default ``step_drop`` trace dropping at ``at`` s for ``length`` s
    (None: as written); any other dynamics unchanged."""
    default = dynamics.get("links", {}).get("default")
    if not isinstance(default, dict) or default.get("kind") != "step_drop":
        return dynamics
    timing = {k: v for k, v in (("t_drop", at), ("drop_len", length)) if v is not None}
    return dynamics | {"links": dynamics["links"] | {"default": default | timing}}
