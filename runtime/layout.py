"""Plan layout: who computes which rows from which input rows, and who sends what to whom.

This is the single statement of the execution semantics of a plan (design.md, points 1-3), used by the
in-process executor, by the workers and by the cost model, so they cannot disagree:

- the source holds the input; each stage-0 device receives its input band (halo included) from it;
- each device of stage s+1 receives, directly from each device of stage s, exactly the rows it needs
  (its input band intersected with the sender's output band); a flat stage needs the whole tensor;
- the sink receives every output band of the last stage.

A transfer whose sender and receiver are the same device is *local*: it costs nothing but is still a
dependency. Pure Python, cached per (graph, plan).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

from runtime.halo import Rows, intersect
from runtime.plan import Plan


@dataclass(frozen=True)
class Task:
    """One device's work in one stage."""

    stage: int
    device: str
    out_rows: Rows
    in_rows: Rows
    flops: int


@dataclass(frozen=True)
class Transfer:
    """Rows of the boundary tensor in front of ``stage`` sent from ``src`` to ``dst``.

    ``stage == len(plan.stages)`` means the final output going to the sink.
    """

    stage: int
    src: str
    dst: str
    rows: Rows
    nbytes: int

    @property
    def local(self) -> bool:
        return self.src == self.dst


@dataclass(frozen=True)
class PlanLayout:
    plan: Plan
    tasks: tuple[tuple[Task, ...], ...]
    transfers: tuple[Transfer, ...]

    def inputs_of(self, stage: int, device: str) -> list[Transfer]:
        """Transfers a device waits for before it can run its task in ``stage`` (or, at the end, the sink)."""
        return [t for t in self.transfers if t.stage == stage and t.dst == device]

    def outputs_of(self, stage: int, device: str) -> list[Transfer]:
        """Transfers a device sends after finishing its task in ``stage - 1`` (stage 0: the source)."""
        return [t for t in self.transfers if t.stage == stage and t.src == device]

    def flops_by_device(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for stage in self.tasks:
            for task in stage:
                totals[task.device] += task.flops
        return dict(totals)

    def bytes_between(self) -> dict[tuple[str, str], int]:
        """Bytes received per (sender, receiver) pair, local hand-overs excluded."""
        totals: dict[tuple[str, str], int] = defaultdict(int)
        for t in self.transfers:
            if not t.local:
                totals[(t.src, t.dst)] += t.nbytes
        return dict(totals)


@lru_cache(maxsize=4096)
def layout(graph, plan: Plan) -> PlanLayout:
    """Lay out a (valid) plan on a graph."""
    bands = plan.bands(graph)
    tasks = []
    for s, (stage, stage_bands) in enumerate(zip(plan.stages, bands, strict=True)):
        tasks.append(
            tuple(
                Task(
                    s,
                    b.device,
                    b.rows,
                    graph.input_rows(stage.start, stage.end, b.rows),
                    graph.band_flops(stage.start, stage.end, b.rows),
                )
                for b in stage_bands
            )
        )
    transfers = []
    row_bytes = graph.row_bytes(0)
    for task in tasks[0]:
        transfers.append(Transfer(0, plan.source, task.device, task.in_rows, _n(task.in_rows) * row_bytes))
    for s in range(1, len(tasks)):
        row_bytes = graph.row_bytes(plan.stages[s].start)
        for receiver in tasks[s]:
            for sender in tasks[s - 1]:
                rows = intersect(receiver.in_rows, sender.out_rows)
                if rows[1] > rows[0]:
                    transfers.append(Transfer(s, sender.device, receiver.device, rows, _n(rows) * row_bytes))
    row_bytes = graph.row_bytes(len(graph.units))
    for sender in tasks[-1]:
        transfers.append(
            Transfer(
                len(tasks),
                sender.device,
                plan.sink,
                sender.out_rows,
                _n(sender.out_rows) * row_bytes,
            )
        )
    return PlanLayout(plan, tuple(tasks), tuple(transfers))


def _n(rows: Rows) -> int:
    return rows[1] - rows[0]
