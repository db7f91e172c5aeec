"""A script's JSON result, written where ``--json`` says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console


def write_json(path: Path, result: Any, console: Console, indent: int = 2) -> None:
    """Write ``result`` to ``path`` (its folder made if missing) and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent))
    console.print(f"wrote {path}")
