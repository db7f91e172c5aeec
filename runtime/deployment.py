"""The deployment format: one device's part of one plan, as the controller sends it to a worker.

``deployments(graph, plan, ...)`` turns a plan's layout (``runtime/layout.py``) into one ``Deployment``
per device: its tasks, who sends it which rows, what it sends to whom along which route, and which
transfers it relays. ``to_meta`` is the DEPLOY message's payload; ``from_meta`` parses and checks one
received from the network (a ValueError names the bad field), so a worker never acts on a malformed
deployment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.fields import checked_int, checked_list, checked_rows, checked_str
from runtime.graph import LayerGraph
from runtime.halo import Rows
from runtime.layout import layout
from runtime.plan import Plan

MAX_PATH = 64  # devices on one route


@dataclass(frozen=True)
class Send:
    """A transfer this device originates: rows of the boundary in front of ``stage``.

    ``path`` is the route ``[this device, relays..., receiver]``; a path of one device is a local
    hand-over, which costs no radio time.
    """

    stage: int
    rows: Rows
    path: tuple[str, ...]


@dataclass(frozen=True)
class TaskSpec:
    """One task: compute ``out_rows`` of boundary ``end`` from ``in_rows`` of boundary ``start``."""

    stage: int
    start: int
    end: int
    in_rows: Rows
    out_rows: Rows
    flops: int
    inputs: tuple[tuple[str, Rows], ...]  # (sender, rows) pieces that make up in_rows
    sends: tuple[Send, ...]  # in the order the layout lists them: the radio sends them in this order


@dataclass(frozen=True)
class Deployment:
    """One device's part of one plan: the deployment message the controller sends (``to_meta``)."""

    plan_id: int
    device: str
    model: str
    seed: int
    input_shape: tuple[int, ...]
    source: str
    sink: str
    n_stages: int
    out_extent: int
    tasks: tuple[TaskSpec, ...]
    feed: tuple[Send, ...]  # source only: the stage-0 input bands
    collect: tuple[tuple[str, Rows], ...]  # sink only: the output pieces
    relays: tuple[Send, ...]  # the transfers this device forwards for others (path[0] is their sender)
    bounds: tuple[int, ...]  # the unit index of every stage boundary (n_stages + 1 of them)

    @property
    def expected_events(self) -> int:
        """Telemetry events this device records per request (then it reports them)."""
        sends = [s for t in self.tasks for s in t.sends] + list(self.feed)
        return (
            (self.device == self.source)
            + len(self.tasks)
            + sum(len(s.path) > 1 for s in sends)
            + len(self.relays)
            + (self.device == self.sink)
        )

    def units(self) -> set[int]:
        return {u for t in self.tasks for u in range(t.start, t.end)}

    def task_for(self, stage: int) -> TaskSpec | None:
        return next((t for t in self.tasks if t.stage == stage), None)

    def expected_pieces(self, stage: int) -> tuple[tuple[str, Rows], ...]:
        if stage == self.n_stages:
            return self.collect
        task = self.task_for(stage)
        return task.inputs if task is not None else ()

    def to_meta(self) -> dict[str, Any]:
        def send(s: Send) -> list:
            return [s.stage, list(s.rows), list(s.path)]

        return {
            "plan": self.plan_id,
            "device": self.device,
            "model": self.model,
            "seed": self.seed,
            "input_shape": list(self.input_shape),
            "source": self.source,
            "sink": self.sink,
            "n_stages": self.n_stages,
            "out_extent": self.out_extent,
            "tasks": [
                {
                    "stage": t.stage,
                    "units": [t.start, t.end],
                    "in": list(t.in_rows),
                    "out": list(t.out_rows),
                    "flops": t.flops,
                    "inputs": [[d, list(r)] for d, r in t.inputs],
                    "sends": [send(s) for s in t.sends],
                }
                for t in self.tasks
            ],
            "feed": [send(s) for s in self.feed],
            "collect": [[d, list(r)] for d, r in self.collect],
            "relays": [send(s) for s in self.relays],
            "bounds": list(self.bounds),
        }

    @classmethod
    def from_meta(cls, m: Any) -> Deployment:
        """Parse and check a deployment message; raises ValueError naming the bad field."""
        if not isinstance(m, dict):
            raise ValueError("deployment must be a map")
        n_stages = checked_int(m.get("n_stages"), "n_stages", 1)
        tasks = tuple(_parse_task(t, n_stages) for t in checked_list(m.get("tasks"), "tasks"))
        if len({t.stage for t in tasks}) != len(tasks):
            raise ValueError("two tasks in one stage")
        shape = tuple(
            checked_int(s, "input_shape", 1) for s in checked_list(m.get("input_shape"), "input_shape")
        )
        if len(shape) != 3:
            raise ValueError("input_shape must be [C, H, W]")
        feed = tuple(_parse_send(s, n_stages) for s in checked_list(m.get("feed"), "feed"))
        if any(s.stage != 0 for s in feed):
            raise ValueError("the source feeds stage 0 only")
        dep = cls(
            checked_int(m.get("plan"), "plan", 0),
            checked_str(m.get("device"), "device"),
            checked_str(m.get("model"), "model"),
            checked_int(m.get("seed"), "seed", 0),
            shape,
            checked_str(m.get("source"), "source"),
            checked_str(m.get("sink"), "sink"),
            n_stages,
            checked_int(m.get("out_extent"), "out_extent", 1),
            tasks,
            feed,
            tuple(_parse_piece(p) for p in checked_list(m.get("collect"), "collect")),
            tuple(_parse_send(s, n_stages) for s in checked_list(m.get("relays"), "relays")),
            tuple(checked_int(b, "bounds", 0) for b in checked_list(m.get("bounds"), "bounds")),
        )
        dep._check_consistency()
        return dep

    def _check_consistency(self) -> None:
        """The parsed parts agree: stage boundaries, tasks, routes through this device, roles."""
        if len(self.bounds) != self.n_stages + 1 or list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(
                "bounds must be the n_stages + 1 increasing unit indices of the stage boundaries"
            )
        if any((t.start, t.end) != self.bounds[t.stage : t.stage + 2] for t in self.tasks):
            raise ValueError("a task's units are not its stage's")
        if any(self.device not in r.path[1:-1] for r in self.relays):
            raise ValueError(f"{self.device} relays a transfer whose route does not pass through it")
        for s in [*self.feed, *(s for t in self.tasks for s in t.sends)]:
            if s.path[0] != self.device:
                raise ValueError(f"a send of {self.device} starts at {s.path[0]}")
        if self.feed and self.device != self.source:
            raise ValueError("only the source feeds stage 0")
        if self.collect and self.device != self.sink:
            raise ValueError("only the sink collects the output")


def _parse_send(v: Any, n_stages: int) -> Send:
    if not (isinstance(v, list) and len(v) == 3):
        raise ValueError("a send must be [stage, rows, path]")
    path = tuple(checked_str(d, "path device") for d in checked_list(v[2], "path"))
    if not path or len(path) > MAX_PATH:
        raise ValueError(f"a send path must hold 1 to {MAX_PATH} devices")
    return Send(checked_int(v[0], "send stage", 0, n_stages), checked_rows(v[1]), path)


def _parse_piece(v: Any) -> tuple[str, Rows]:
    if not (isinstance(v, list) and len(v) == 2):
        raise ValueError("a piece must be [device, rows]")
    return checked_str(v[0], "piece device"), checked_rows(v[1])


def _parse_task(t: Any, n_stages: int) -> TaskSpec:
    if not isinstance(t, dict):
        raise ValueError("a task must be a map")
    start, end = checked_rows(t.get("units"))
    if start == end:
        raise ValueError("a task must cover at least one unit")
    stage = checked_int(t.get("stage"), "task stage", 0, n_stages - 1)
    sends = tuple(_parse_send(s, n_stages) for s in checked_list(t.get("sends"), "sends"))
    if any(s.stage != stage + 1 for s in sends):
        raise ValueError(f"task of stage {stage} sends rows of another stage")
    return TaskSpec(
        stage,
        start,
        end,
        checked_rows(t.get("in")),
        checked_rows(t.get("out")),
        checked_int(t.get("flops"), "flops", 0),
        tuple(_parse_piece(p) for p in checked_list(t.get("inputs"), "inputs")),
        sends,
    )


def deployments(
    graph: LayerGraph,
    plan: Plan,
    plan_id: int,
    model: str,
    seed: int,
    route: Callable[[str, str], list[str]],
) -> dict[str, Deployment]:
    """Every device's deployment of ``plan`` (devices with nothing to do get none).

    ``route(a, b)`` gives the devices a transfer from a to b travels through (``ClusterSpec.route``
    of the devices that are up).
    """
    lay = layout(graph, plan)
    n = len(plan.stages)
    paths = {(t.src, t.dst): tuple(route(t.src, t.dst)) for t in lay.transfers}
    relays: dict[str, list[Send]] = {}
    for t in lay.transfers:
        path = paths[(t.src, t.dst)]
        for d in path[1:-1]:
            relays.setdefault(d, []).append(Send(t.stage, t.rows, path))
    tasks: dict[str, list[TaskSpec]] = {}
    for s, (stage, stage_tasks) in enumerate(zip(plan.stages, lay.tasks, strict=True)):
        for task in stage_tasks:
            tasks.setdefault(task.device, []).append(
                TaskSpec(
                    s,
                    stage.start,
                    stage.end,
                    task.in_rows,
                    task.out_rows,
                    task.flops,
                    tuple((t.src, t.rows) for t in lay.inputs_of(s, task.device)),
                    tuple(
                        Send(s + 1, t.rows, paths[(t.src, t.dst)]) for t in lay.outputs_of(s + 1, task.device)
                    ),
                )
            )
    devices = set(tasks) | set(relays) | {plan.source, plan.sink}
    return {
        d: Deployment(
            plan_id,
            d,
            model,
            seed,
            tuple(graph.input_shape),
            plan.source,
            plan.sink,
            n,
            graph.extent(len(graph.units)),
            tuple(tasks.get(d, ())),
            tuple(Send(0, t.rows, paths[(t.src, t.dst)]) for t in lay.outputs_of(0, d))
            if d == plan.source
            else (),
            tuple((t.src, t.rows) for t in lay.inputs_of(n, d)) if d == plan.sink else (),
            tuple(relays.get(d, ())),
            (*(s.start for s in plan.stages), plan.stages[-1].end),
        )
        for d in sorted(devices)
    }
