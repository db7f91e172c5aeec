"""Checked fields of untrusted messages: each raises ValueError naming the field and showing the bad value.

A worker reads its deployments, configurations and bands from the network; these checks are the one
place that says what a well-formed int, string, list, row range or number is on the wire.
"""

from __future__ import annotations

import math
from typing import Any

from runtime.halo import Rows

MAX_ENDPOINT = 256  # characters of a peer endpoint


def checked_int(v: Any, what: str, lo: int = 0, hi: int = (1 << 63) - 1) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"{what} must be an int in [{lo}, {hi}], got {repr(v)[:40]}")
    return v


def checked_str(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v or len(v) > 200:
        raise ValueError(f"{what} must be a non-empty string, got {repr(v)[:40]}")
    return v


def checked_list(v: Any, what: str) -> list:
    if not isinstance(v, list):
        raise ValueError(f"{what} must be a list, got {type(v).__name__}")
    return v


def checked_rows(v: Any) -> Rows:
    if not (isinstance(v, list) and len(v) == 2):
        raise ValueError(f"rows must be [lo, hi], got {repr(v)[:40]}")
    lo, hi = checked_int(v[0], "rows"), checked_int(v[1], "rows")
    if hi < lo:
        raise ValueError(f"rows [{lo}, {hi}) are reversed")
    return lo, hi


def checked_float(v: Any, what: str) -> float:
    if type(v) not in (int, float) or not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, got {repr(v)[:40]}")
    return float(v)


def is_endpoint(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= MAX_ENDPOINT and v.startswith(("tcp://", "ipc://"))
