"""A plan as flat arrays over a cluster's devices: what the completion produces and the cost model reads.

The sim env completes two plans and costs them at every step. As ``Plan`` objects that is dozens of small
dataclasses built, walked into arrays again and hashed; as arrays it is three numpy arrays straight from
the compiled completion. ``plan`` turns them into the ``Plan`` a caller sees (built on first use), and
``PlanArrays.of`` goes the other way for plans that come from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from runtime.plan import Assignment, Plan, Stage


@dataclass(frozen=True, eq=False)
class PlanArrays:
    """Stage ``s`` covers units ``stages[s]`` and splits its output among ``devices[ptr[s]:ptr[s+1]]``
    (indices into ``names``, in row order) with ``shares`` (relative weights, as ``Assignment.share``)."""

    names: tuple[str, ...]
    source: int
    sink: int
    stages: tuple[tuple[int, int], ...]
    ptr: np.ndarray  # int64, len(stages) + 1
    devices: np.ndarray  # int64
    shares: np.ndarray  # float64

    @classmethod
    def of(cls, plan: Plan, names: tuple[str, ...], index: dict[str, int]) -> PlanArrays:
        """``plan`` over the device list ``names`` (``index``: name -> position)."""
        ptr, devices, shares = [0], [], []
        for stage in plan.stages:
            for a in stage.assignments:
                devices.append(index[a.device])
                shares.append(a.share)
            ptr.append(len(devices))
        return cls(
            names,
            index[plan.source],
            index[plan.sink],
            tuple((st.start, st.end) for st in plan.stages),
            np.array(ptr, dtype=np.int64),
            np.array(devices, dtype=np.int64),
            np.array(shares, dtype=np.float64),
        )

    @cached_property
    def key(self) -> tuple:
        """The plan's content, hashable: equal keys, equal plans over the same devices."""
        return (
            self.source,
            self.sink,
            self.stages,
            tuple(self.ptr.tolist()),
            tuple(self.devices.tolist()),
            tuple(self.shares.tolist()),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlanArrays) and self.key == other.key and self.names == other.names

    def __hash__(self) -> int:
        return hash(self.key)

    @cached_property
    def plan(self) -> Plan:
        """The Plan, its dataclasses built directly (``Plan.build``'s per-value conversions are not needed).
        Not cached beyond this object: a cache of stages kept tens of thousands of dataclasses alive, which
        every full garbage collection then walked."""
        names, ptr, devices, shares = (
            self.names,
            self.ptr.tolist(),
            self.devices.tolist(),
            self.shares.tolist(),
        )
        return Plan(
            names[self.source],
            names[self.sink],
            tuple(
                Stage(
                    start,
                    end,
                    tuple(Assignment(names[devices[j]], shares[j]) for j in range(ptr[i], ptr[i + 1])),
                )
                for i, (start, end) in enumerate(self.stages)
            ),
        )
