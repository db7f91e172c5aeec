"""Flag definitions every script shares, so a flag means the same everywhere and is declared once.

Each ``add_*`` adds one group of related flags to a parser; the argparse types turn a bad value into a
one-line usage error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime import models
from runtime.cluster import NETWORKS
from runtime.limits import positive_number

positive = positive_number(float)  # an argparse type: a number > 0


def at_least_one(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    return _whole(text, least=1)


def mesh_size(text: str) -> int:
    """An argparse type: a device count a generated mesh can have (>= 2)."""
    return _whole(text, least=2)


def whole_number(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    return _whole(text, least=0)


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, not {text}")
    return value


def non_negative(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text}")
    return value


def output_file(text: str) -> Path:
    """An argparse type: a file to write, checked before any work (not a folder, under folders)."""
    return _writable(text, folder=False)


def output_folder(text: str) -> Path:
    """An argparse type: a folder to write into, checked before any work (made if missing)."""
    return _writable(text, folder=True)


def _writable(text: str, folder: bool) -> Path:
    """``text`` as a path to write a file (or into a folder) at: the wrong kind of thing there, or a
    file where a parent folder must be, is a usage error now rather than a traceback after the run."""
    path = Path(text)
    if path.exists() and path.is_dir() != folder:
        wanted = "a folder to write into" if folder else "a file to write"
        raise argparse.ArgumentTypeError(f"{text} is a {'file' if folder else 'folder'}, not {wanted}")
    if any(parent.exists() and not parent.is_dir() for parent in path.parents):
        raise argparse.ArgumentTypeError(f"cannot write {text}: a parent of it is a file")
    return path


def dilation_factor(text: str) -> float:
    """An argparse type: a finite number >= 1."""
    value = positive(text)
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 1, not {text}")
    return value


def share_or_off(text: str) -> float | None:
    """An argparse type: a share >= 0, or 'off' (None)."""
    if text == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'off'") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def add_problem(parser: argparse.ArgumentParser, *, cluster_required: bool = True) -> None:
    """What is run where: the cluster, the model and the seed of everything random."""
    parser.add_argument("--cluster", required=cluster_required, help="cluster YAML or disnet-mesh/1 JSON")
    parser.add_argument("--model", default="vgg16_bn", type=models.model_argument, help=models.MODEL_HELP)
    parser.add_argument("--seed", type=whole_number, default=0, help="seeds numpy's generators: >= 0")


def add_agents(
    parser: argparse.ArgumentParser,
    default: str,
    help: str = "comma list of planners: optimal, snapshot-optimal, disnet, modnn, ..., local, clairvoyant, hindsight, "
    "and trained policies as ppo:PATH, ppo-top3:PATH, ppo-polish:PATH, ppo-top3-polish:PATH",
) -> None:
    """The planners to run (``--agent`` is the same flag)."""
    parser.add_argument("--agents", "--agent", dest="agents", type=agent_list, default=default, help=help)


def agent_list(text: str) -> str:
    """An argparse type: a comma list of planner names, blanks around the names dropped."""
    return ",".join(name.strip() for name in text.split(",") if name.strip())


def add_requests(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--requests", type=at_least_one, default=default, help="requests per planner")


def add_rescue(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rescue",
        action="store_true",
        help="serve each request as adaptive serving does: restarted on its planner's newer plan when "
        "conditions collapse under it (the clairvoyant is never rescued), and after a device failure on "
        "its planner's plan for the devices still up",
    )


def add_links(parser: argparse.ArgumentParser, *, replay: bool = False) -> None:
    """The links: the spec's bandwidth cap and the traces they follow (``replay``: also --trace-mode and
    the replayed trace's cap)."""
    parser.add_argument(
        "--bandwidth-cap",
        "--spec-cap",
        dest="spec_cap_mbps",
        type=positive,
        default=None,
        metavar="MBPS",
        help="caps every link of the cluster file (the spec: what planners assume before measuring) at "
        "MBPS Mbit/s; traces sampled per link are rescaled to the capped bandwidth, so they may exceed it",
    )
    parser.add_argument(
        "--traces",
        default=None,
        help="trace file or folder the links follow, or 'synthetic' (every link wanders around its spec)",
    )
    if not replay:
        return
    parser.add_argument(
        "--trace-mode",
        choices=("sample", "replay"),
        default="sample",
        help="sample: each link a random piece of the traces, rescaled to its spec bandwidth; "
        "replay: the one --traces FILE on every link from t=0, as recorded",
    )
    parser.add_argument(
        "--trace-cap",
        dest="trace_cap_mbps",
        type=positive,
        default=None,
        metavar="MBPS",
        help="caps the replayed trace's rate at every instant at MBPS Mbit/s (default: --bandwidth-cap)",
    )


def add_objective(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--objective", choices=("latency", "energy", "weighted"), default="latency")
    parser.add_argument(
        "--energy-weight",
        type=non_negative,
        default=0.0,
        help="seconds a joule is worth in the weighted objective (latency + weight x energy)",
    )


def check_objective(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """An energy weight means something only to the weighted objective: anywhere else it is a usage
    error, not a setting silently ignored."""
    if args.energy_weight and args.objective != "weighted":
        parser.error(f"--energy-weight applies to --objective weighted (not {args.objective})")


def add_cost_model(parser: argparse.ArgumentParser, default: str = "profile") -> None:
    parser.add_argument(
        "--cost", choices=("profile", "flops"), default=default, help="cost model planners plan on"
    )


def add_profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=None, help="compute profile JSON (default: this host's, cached)")


def add_network(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--network",
        choices=NETWORKS,
        default="emulated",
        help="who shapes the links: each worker's radio timer (emulated), or tc on veths between one "
        "network namespace per worker (kernel; root only)",
    )


def add_dilation(
    parser: argparse.ArgumentParser, help: str = "live runs D x slower (default: automatic)"
) -> None:
    parser.add_argument("--dilation", type=dilation_factor, default=None, help=help)


def add_pacing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pacing",
        choices=("profile", "cpu"),
        default="profile",
        help="what an emulated device's compute time follows: the profile's seconds for each band (the "
        "cost model's compute, so live runs differ from the sim only by the runtime), or the CPU time the "
        "real computation took on this shared host (cpu)",
    )


def add_json(parser: argparse.ArgumentParser, help: str = "write the result as JSON here") -> None:
    parser.add_argument("--json", type=output_file, default=None, help=help)


def add_scenario(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """--scenario NAME|FILE (configs/scenarios); the returned group takes shorthands for named ones."""
    parser.set_defaults(dynamics=None, dynamics_dir=None)  # a scenario's DynamicsConfig mapping, its folder
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--scenario",
        default=None,
        metavar="NAME|FILE",
        help="take the options a scenario file sets (configs/scenarios/NAME.yaml, or FILE) as defaults; "
        "flags still win",
    )
    return group
