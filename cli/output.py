"""A script's JSON result, written where ``--json`` says."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

PIPED_WIDTH = 160  # columns of a script's tables when its output goes to a file or a pipe


def script_console() -> Console:
    """A script's console: the terminal's width, or ``PIPED_WIDTH`` when piped (rich's 80 columns would
    cut the tables' numbers to ellipses in logs)."""
    return Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)


class OutputError(Exception):
    """A result the script could not write where the user asked."""


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Writes to ``path`` in this block: the system's refusal (no permission, a read-only or full disk), which
    the flag's checks before the run cannot foresee, as one line naming the path instead of a traceback."""
    try:
        yield
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


def write_json(path: Path, result: Any, console: Console, indent: int = 2) -> None:
    """Write ``result`` to ``path`` (its folder made if missing) and say so."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=indent))
    console.print(f"wrote {path}")
