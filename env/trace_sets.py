"""Recorded trace sets for an evaluation: the folders of traces it may use, and the ones training reads.

An evaluation on "traces nobody trained on" must not rest on folder names: a user brings their own
recordings, in folders named as they like. A set is a folder of trace files (``trace_files``); a folder
given for evaluation holds sets as subfolders, or is one set itself. Training configs name the traces
they read (``kind: dir`` or ``kind: file`` specs, paths relative to the config's folder), so the sets an
evaluation must leave out are found from the configs, not from a list kept by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

from env.trace_files import trace_files


def _trace_paths(node) -> Iterator[str]:
    """The ``path`` of every file or folder trace spec anywhere in a parsed config."""
    if isinstance(node, dict):
        if node.get("kind") in ("dir", "file") and isinstance(node.get("path"), str):
            yield node["path"]
        for value in node.values():
            yield from _trace_paths(value)
    elif isinstance(node, list):
        for value in node:
            yield from _trace_paths(value)


def training_trace_paths(config_dir: Path) -> dict[Path, str]:
    """Every trace file or folder the env of a training config in ``config_dir`` reads (resolved: what
    its policy trains on; a ``compare`` section is evaluation), with the first config that reads it."""
    used: dict[Path, str] = {}
    for config in sorted(config_dir.glob("*.yaml")):
        env = yaml.safe_load(config.read_text()).get("env") or {}
        anchor = Path(env.get("base_dir") or config.parent)
        for path in _trace_paths(env):
            used.setdefault((anchor / path).resolve(), config.name)
    return used


def recorded_sets(folder: Path) -> dict[str, Path]:
    """The trace sets in ``folder``: each subfolder holding trace files, by its name (hidden ones
    skipped, as a ``.git`` is no set), and the folder itself (by its name) when it holds trace files
    directly."""
    subfolders = (sub for sub in sorted(folder.iterdir()) if sub.is_dir() and not sub.name.startswith("."))
    sets = {sub.name: sub for sub in subfolders if trace_files(sub)}
    if trace_files(folder):
        sets[folder.name] = folder
    return sets


def trained_on(path: Path, used: dict[Path, str]) -> str | None:
    """The training config that reads ``path``, a file in it, or a folder holding it; None if none does."""
    path = path.resolve()
    for trained, config in used.items():
        if trained == path or trained.is_relative_to(path) or path.is_relative_to(trained):
            return config
    return None


def held_out_sets(folder: Path, used: dict[Path, str]) -> tuple[dict[str, Path], dict[str, str]]:
    """The sets of ``folder`` that no training config reads, and the others with the config that
    reads each."""
    held_out, left_out = {}, {}
    for name, path in recorded_sets(folder).items():
        config = trained_on(path, used)
        if config is None:
            held_out[name] = path
        else:
            left_out[name] = config
    return held_out, left_out
