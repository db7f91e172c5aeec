"""Plan layout: who computes which rows from which input rows, and who sends what to whom.

This is the single statement of the execution semantics of a plan (design.md, points 1-3), used by the
in-process executor, by the workers and by the cost model, so they cannot disagree:

- the source holds the input; each stage-0 device receives its input band (halo included) from it;
- each device of stage s+1 receives, directly from each device of stage s, exactly the rows it needs
  (its input band intersected with the sender's output band); a flat stage needs the whole tensor;
- the sink receives every output band of the last stage.

A transfer whose sender and receiver are the same device is *local*: it costs nothing but is still a
dependency. Pure Python, cached per (graph, plan). The transfer rule itself is ``band_transfers``, a plain
function over arrays of bands written in the subset of Python that numba compiles: env's cost model
compiles this very function to build a plan's skeleton without Transfer objects.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

from runtime.halo import Rows
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


def band_transfers(stage_ptr, out_lo, out_hi, in_lo, in_hi, t_stage, t_src, t_dst, t_lo, t_hi) -> int:
    """Who sends which rows to whom, over bands ``b`` (tasks, in stage order; stage ``s`` holds bands
    ``stage_ptr[s]..stage_ptr[s+1]-1`` in row order) with output rows ``out_lo/out_hi`` and input rows
    (halo included) ``in_lo/in_hi``.

    Writes transfer ``i`` as (boundary stage, sender band or -1 for the source, receiver band or -1 for
    the sink, rows lo, hi) into the ``t_*`` outputs (room for ``sum k_s k_(s+1)`` plus the first and last
    stage's bands) and returns the count. Order: the source's sends to stage 0, then per stage each
    receiver's pieces sender by sender, then the last stage's outputs to the sink.
    """
    n = 0
    n_stages = len(stage_ptr) - 1
    for b in range(stage_ptr[0], stage_ptr[1]):
        t_stage[n], t_src[n], t_dst[n], t_lo[n], t_hi[n] = 0, -1, b, in_lo[b], in_hi[b]
        n += 1
    for s in range(1, n_stages):
        for r in range(stage_ptr[s], stage_ptr[s + 1]):
            for q in range(stage_ptr[s - 1], stage_ptr[s]):
                lo = max(in_lo[r], out_lo[q])
                hi = min(in_hi[r], out_hi[q])
                if hi > lo:
                    t_stage[n], t_src[n], t_dst[n], t_lo[n], t_hi[n] = s, q, r, lo, hi
                    n += 1
    for b in range(stage_ptr[n_stages - 1], stage_ptr[n_stages]):
        t_stage[n], t_src[n], t_dst[n], t_lo[n], t_hi[n] = n_stages, b, -1, out_lo[b], out_hi[b]
        n += 1
    return n


def transfer_capacity(stage_ptr) -> int:
    """Room ``band_transfers`` needs for these stages."""
    sizes = [stage_ptr[s + 1] - stage_ptr[s] for s in range(len(stage_ptr) - 1)]
    return sizes[0] + sizes[-1] + sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


@lru_cache(maxsize=64)  # the plans in service now; a long-running server sees thousands over a day
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
    flat = [task for stage in tasks for task in stage]
    stage_ptr = [0]
    for stage in tasks:
        stage_ptr.append(stage_ptr[-1] + len(stage))
    out = [[0] * transfer_capacity(stage_ptr) for _ in range(5)]
    n = band_transfers(
        stage_ptr,
        [t.out_rows[0] for t in flat],
        [t.out_rows[1] for t in flat],
        [t.in_rows[0] for t in flat],
        [t.in_rows[1] for t in flat],
        *out,
    )
    row_bytes = [graph.row_bytes(stage.start) for stage in plan.stages] + [graph.row_bytes(len(graph.units))]
    transfers = tuple(
        Transfer(
            stage,
            plan.source if src < 0 else flat[src].device,
            plan.sink if dst < 0 else flat[dst].device,
            (lo, hi),
            (hi - lo) * row_bytes[stage],
        )
        for stage, src, dst, lo, hi in zip(*(col[:n] for col in out), strict=True)
    )
    return PlanLayout(plan, tuple(tasks), transfers)
