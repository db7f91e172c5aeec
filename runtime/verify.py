"""Spot checks of served results: recompute a sampled fraction of requests with the unsplit model.

Exactness is what micro-splitting promises (design.md, rule 2); the controller can hold workers to it
in production, not only in tests: ``Controller(..., verify=0.05)`` recomputes about 5% of requests
locally and reports every mismatch (``Result.verified`` is False, ``Controller.mismatches`` names it).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from runtime.exactness import ATOL, RTOL, matches

log = logging.getLogger("runtime.verify")


@dataclass(frozen=True)
class Mismatch:
    rid: int
    max_abs_error: float


class Verifier:
    """Checks a ``fraction`` of outputs against ``reference(x)`` (the unsplit model)."""

    def __init__(
        self,
        fraction: float,
        reference: Callable[[torch.Tensor], torch.Tensor],
        *,
        seed: int | None = None,
        rtol: float = RTOL,
        atol: float = ATOL,
    ):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"verify fraction must be in [0, 1], got {fraction}")
        self.fraction, self.reference, self.rtol, self.atol = fraction, reference, rtol, atol
        self.mismatches: list[Mismatch] = []
        self._rng = random.Random(seed)

    def check(self, rid: int, x: torch.Tensor, output: torch.Tensor) -> bool | None:
        """True or False if this request was sampled (output matches the reference), else None."""
        if self.fraction == 0.0 or self._rng.random() >= self.fraction:
            return None
        with torch.no_grad():
            expected = self.reference(x)
        if matches(output, expected, self.rtol, self.atol):
            return True
        error = (output - expected).abs().max().item() if expected.shape == output.shape else float("inf")
        self.mismatches.append(Mismatch(rid, error))
        log.error(
            "request %d: the cluster's output differs from the unsplit model's (max |error| %.3g)", rid, error
        )
        return False
