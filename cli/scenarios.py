"""Scenario files: a YAML file (a named one: ``configs/scenarios/NAME.yaml``) that sets a script's options.

A scenario's fields are the options of the script that reads it, named by their ``dest`` (the model is
built from the script's own flags: ``cli/options.py``), plus a ``description`` and ``dynamics``, a
``DynamicsConfig`` mapping (env/dynamics.py) for worlds no flag can describe, such as every link
collapsing at once. A script takes them as its defaults, so a flag given on the command line still wins.
Relative paths of the files a run reads (``cluster``, ``traces``, ``profile``, ``streams``, a policy's
``ppo:PATH``) are read from the scenario file's folder, and so are trace paths in ``dynamics`` (scripts
pass ``dynamics_dir`` on to the world); paths a run writes (``json``, ``out``, ``plots``) are, like the
flags', relative to the working directory.

Read without a script (``load_scenario(name)``, as the benches read one), a scenario may set the options
of the problem and its world that the scripts share (``problem_parser``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_validator

from agents import POLICY_NAME
from cli import flags
from cli.options import options_model
from env.dynamics import DynamicsConfig
from env.snapshot import NetworkError
from runtime.config import describe_validation_error
from runtime.spec import ClusterSpec, load_cluster

SCENARIOS = Path(__file__).resolve().parents[1] / "configs" / "scenarios"
COMMA_LISTS = ("agents",)  # options whose flag takes a comma list: a YAML list in a scenario
INPUT_FILES = ("cluster", "traces", "profile", "streams")  # read from the scenario's folder when relative


class ScenarioError(ValueError):
    """A scenario is missing or invalid; the message names the file and the field."""


class Scenario(BaseModel):
    """What a scenario holds besides a script's options (the base of every scenario's model)."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    dynamics: dict[str, Any] | None = None
    _folder: Path | None = PrivateAttr(default=None)  # where the file was: relative paths start there

    @model_validator(mode="after")
    def _one_source_of_links(self) -> Scenario:
        if getattr(self, "traces", None) is not None and self.dynamics is not None:
            raise ValueError("traces and dynamics both set the links: choose one")
        return self

    def cluster_spec(self) -> ClusterSpec:
        """The scenario's cluster, its links capped at ``spec_cap_mbps``."""
        cluster = getattr(self, "cluster", None)
        if cluster is None:
            raise ScenarioError("this scenario names no cluster")
        return load_cluster(cluster, bandwidth_cap=getattr(self, "spec_cap_mbps", None))

    def defaults(self) -> dict[str, Any]:
        """The options this scenario sets, as argparse defaults (a comma list as the flag takes it)."""
        fixed = self.model_dump(by_alias=True, exclude_unset=True, exclude={"description"})
        for name in COMMA_LISTS:
            if isinstance(fixed.get(name), list):
                fixed[name] = ",".join(fixed[name])
        if self.dynamics is not None:
            fixed["dynamics_dir"] = self._folder
        return fixed


def problem_parser() -> argparse.ArgumentParser:
    """The options of the problem and its world that the scripts share (``cli/flags.py``)."""
    parser = argparse.ArgumentParser(add_help=False)
    flags.add_problem(parser, cluster_required=False)
    flags.add_agents(parser, default="")
    flags.add_requests(parser, default=1)
    flags.add_links(parser, replay=True)
    return parser


def scenario_path(name: str) -> Path:
    """A scenario's file: ``name`` itself if it is a file, else ``configs/scenarios/NAME.yaml``."""
    given = Path(name)
    return given if given.is_file() else SCENARIOS / f"{name}.yaml"


def load_scenario(name: str, parser: argparse.ArgumentParser | None = None) -> Scenario:
    """The scenario ``name`` (a name under configs/scenarios or a YAML file), validated as options of
    ``parser`` (None: ``problem_parser``'s), its paths resolved."""
    path = scenario_path(name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SCENARIOS.glob("*.yaml")))
        raise ScenarioError(f"no scenario {name!r}: neither a file nor one of {known}")
    model = options_model(parser or problem_parser(), "ScenarioOptions", Scenario, COMMA_LISTS)
    try:
        scenario = model.model_validate(yaml.safe_load(path.read_text()) or {})
        if scenario.dynamics is not None:
            DynamicsConfig.parse(scenario.dynamics, origin=f"{path}: dynamics", base_dir=path.parent)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not YAML ({exc})") from None
    except ValidationError as exc:
        raise ScenarioError(describe_validation_error(str(path), exc)) from None
    except NetworkError as exc:
        raise ScenarioError(str(exc)) from None
    return _anchored(scenario, path.parent)


def parse_with_scenario(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    subcommands: argparse._SubParsersAction | None = None,
) -> argparse.Namespace:
    """Parse ``argv`` on top of the defaults its ``--scenario`` sets (a bad scenario is a usage error).
    With ``subcommands`` the scenario holds options of the chosen subcommand (``args.command``), and its
    defaults go to that subcommand's parser."""
    args = parser.parse_args(argv)
    if getattr(args, "scenario", None) is None:
        return args
    target = parser if subcommands is None else subcommands.choices[args.command]
    try:
        scenario = load_scenario(args.scenario, target)
    except ScenarioError as exc:
        parser.error(str(exc))
    target.set_defaults(**scenario.defaults())
    return parser.parse_args(argv)


def _anchored(scenario: Scenario, folder: Path) -> Scenario:
    """``scenario`` with the files it names read from ``folder`` when relative."""

    def anchor(path: str) -> str:
        return str((folder / path).resolve()) if not Path(path).is_absolute() else path

    def agent(name: str) -> str:
        policy = POLICY_NAME.fullmatch(name)
        return name if policy is None else f"{name.split(':', 1)[0]}:{anchor(policy['path'])}"

    update: dict[str, Any] = {}
    for name in INPUT_FILES:
        if getattr(scenario, name, None) not in (None, "synthetic"):
            update[name] = anchor(getattr(scenario, name))
    if getattr(scenario, "agents", None) is not None:
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
