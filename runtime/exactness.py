"""What "exact" means for a live result: equal to the unsplit model's output within float32 rounding.

Every live run checks its outputs this way (the env's live backend, evaluation, serving, streams, the
benches), so the tolerance is stated once here. The references are computed before serving starts, on
seeded inputs, so checking costs the cluster nothing while it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the env's sim backend imports this module without the runtime's networking
    from runtime.controller import Controller, Result
    from runtime.plan import Plan

# partitioned and unsplit convolutions sum in different orders: float32 rounding, never more
RTOL = 1e-4
ATOL = 1e-5

Reference = Callable[[torch.Tensor], torch.Tensor]  # the unsplit model


def matches(output: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, atol: float = ATOL) -> bool:
    """Whether a cluster's ``output`` equals the unsplit model's ``expected`` output: every element within
    ``atol + rtol`` x the largest expected magnitude.

    Rounding error grows with the output's scale, not with each element's: VGG-16's logits (largest 1.5)
    carry 1.6e-5 of float32 error in the unsplit model itself (against float64), and a plan splitting its
    first layers ten ways 1.2e-5; an element-wise rule would call that plan wrong on every small logit. A
    wrong row or band is off by the signal's own size, far beyond ``rtol`` of the scale."""
    if output.shape != expected.shape:
        return False
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return bool(((output - expected).abs() <= atol + rtol * scale).all())


def reference_pool(
    reference: Reference, input_shape: Sequence[int], count: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` seeded inputs (one batch each) with the unsplit model's outputs for them."""
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(1, *input_shape, generator=gen) for _ in range(count)]
    with torch.no_grad():
        return [(x, reference(x)) for x in inputs]


@dataclass(frozen=True)
class Checked:
    """One live request: its result, when it started on the controller's clock (after any deployment),
    and whether its output is exact."""

    result: Result
    start_s: float
    exact: bool


def run_checked(controller: Controller, plan: Plan, x: torch.Tensor, expected: torch.Tensor) -> Checked:
    """Run one request live on ``plan`` (deployed first unless it is in force) and check its output."""
    if controller.plan != plan:
        controller.deploy(plan)
    start_s = controller.now()
    result = controller.infer(x)
    return Checked(result, start_s, matches(result.output, expected))
