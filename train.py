"""Train a MicroSplit policy: the phases are the ``training`` package; this script parses flags and runs them.

    python train.py --config configs/train/NAME.yaml [--backend sim|live] [--timesteps N] [--out runs/NAME]
                    [--init POLICY.zip] [--export PATH]

A config with ``kind: staged`` trains the policy for any cluster (training/staged.py); any other the
fixed-slot policy (training/fixed_slot.py). ``--backend`` and ``--init`` apply to the fixed-slot policy.

The run folder holds ``policy.zip`` (agents/ppo.py or agents/staged_policy.py format; ``policy_bc.zip``:
right after cloning), ``config.yaml`` (resolved, shapes included, so ``--config`` on it reproduces the
action list), ``summary.json`` (timings, cloning metrics, validation, held-out summaries overall and per
dynamics) and, for the fixed-slot policy, ``learning_curve.png``, ``bc_data.npz`` (the labels), TensorBoard
logs and a CSV of every scalar (``tb/``), SB3 checkpoints and monitor CSVs. ``--init P --timesteps 0``
re-runs only the evaluations.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from agents.ppo import PolicyFileError, PPOPlanner
from cli import flags
from cli.errors import INTERRUPTED_EXIT
from env.config import model_graph
from env.profiles import ProfileError
from training import fixed_slot, staged
from training.config import ConfigError, StagedConfig, load_config, pin_profile
from training.report import console


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a MicroSplit policy (see the module docstring).")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--backend", choices=("sim", "live"), default="sim")
    parser.add_argument(
        "--timesteps", type=flags.whole_number, default=None, help="PPO timesteps (overrides ppo.timesteps)"
    )
    parser.add_argument(
        "--out", type=flags.output_folder, default=None, help="run folder (default runs/NAME)"
    )
    parser.add_argument(
        "--init", type=Path, default=None, help="policy file to fine-tune (keeps its actions)"
    )
    parser.add_argument(
        "--export", type=flags.output_file, default=None, help="also copy the final policy file here"
    )
    return parser.parse_args(argv)


def init_problem(path: Path, model: str) -> str | None:
    """Why the policy file ``path`` cannot be fine-tuned on ``model`` (None if it can)."""
    try:
        return PPOPlanner(path).fits(model_graph(model))
    except PolicyFileError as exc:
        return str(exc)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config)
        if not isinstance(cfg, StagedConfig):
            cfg = cfg.model_copy(update={"env": pin_profile(cfg.env, say=console.print)})
    except (ConfigError, ProfileError) as exc:
        print(f"config error\n{exc}", file=sys.stderr)
        return 2
    if isinstance(cfg, StagedConfig) and (args.init is not None or args.backend != "sim"):
        print("--init and --backend apply to fixed-slot configs, not kind: staged", file=sys.stderr)
        return 2
    if args.init is not None and (problem := init_problem(args.init, cfg.env.model)):
        print(f"--init: {problem}", file=sys.stderr)
        return 2
    if args.timesteps is not None:
        cfg.ppo.timesteps = args.timesteps
    out = args.out or Path("runs") / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(1)
    try:
        if isinstance(cfg, StagedConfig):
            policy_path = staged.run(cfg, out)
        else:
            policy_path = fixed_slot.run(cfg, out, args.backend, args.init)
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/]: {out} holds what was saved so far (checkpoints, the best policy)"
        )
        return INTERRUPTED_EXIT
    if args.export is not None:
        args.export.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(policy_path, args.export)
    return 0


if __name__ == "__main__":
    sys.exit(main())
