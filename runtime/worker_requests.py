"""A request's way through a worker: its input at the source, bands filed until a task's input is
complete, the compute thread that runs tasks one at a time in the order they become ready (paced by
emulation), and the output assembled at the sink.

Each piece is checked against the deployed plan before it is filed (``runtime/inbound.py``); a piece
for this device is filed at once, one that goes on is queued on the device's radio (``runtime/radio.py``).
An attempt dropped meanwhile (its plan retired, or cancelled) is skipped wherever it is, and its
computation in progress is cut short.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable

import torch

from runtime.auth import Sender
from runtime.deployment import Deployment, Send, TaskSpec
from runtime.emulation import EnergyMeter, paced
from runtime.executor import assemble, compute_band, take_rows
from runtime.halo import Rows
from runtime.inbound import Band, check_band, check_input
from runtime.limits import ByteBudget, Limits
from runtime.radio import Hop, Radio
from runtime.transport import Header, Kind, Message
from runtime.weights import WeightStore
from runtime.worker_state import Piece, WorkerState

log = logging.getLogger("runtime.worker")


class RequestFlow:
    """INPUT and BAND messages and the compute thread of one worker (see the module docstring).

    ``record(dep, rid, event)`` adds one telemetry event; ``emit`` and ``error`` answer the controller.
    """

    def __init__(
        self,
        device: str,
        state: WorkerState,
        weights: WeightStore,
        limits: Limits,
        budget: ByteBudget,
        meter: EnergyMeter,
        radio: Radio,
        record: Callable[..., None],
        emit: Callable[..., None],
        error: Callable[..., None],
    ):
        self.device, self.state, self.weights, self.limits = device, state, weights, limits
        self.budget, self.meter, self.radio = budget, meter, radio
        self.record, self.emit, self.error = record, emit, error
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()  # ready for the compute thread
        self.computed = 0

    def on_input(self, msg: Message, sender: Sender) -> None:
        now = time.time()
        dep = self.state.deployment(msg.header.meta, sender)
        rid = msg.header.rid
        x = check_input(msg, dep, self.device, self.limits)
        self.state.check_not_started(dep, rid)
        self.budget.charge(sender.owner, msg.tensors)
        self.record(dep, rid, {"ev": "input", "t": now})
        full = (0, x.shape[-2])
        for s in dep.feed:
            self._send(dep, rid, s, take_rows(x, full, s.rows), now)

    def check_band(self, msg: Message, sender: Sender) -> Band:
        """A band the deployed plan it names expects here (``runtime.inbound.check_band``)."""
        dep = self.state.deployment(msg.header.meta)
        graph = self.state.graph_of(dep.plan_id)
        return check_band(msg, sender, dep, graph, self.device, self.limits)

    def on_band(self, band: Band) -> None:
        now = time.time()
        if band.hop < len(band.path) - 1:  # relay: store and forward on this device's radio
            if self.radio.waiting() >= self.limits.max_queued:
                raise ValueError(f"{self.radio.waiting()} hops wait for the radio")
            hop = Hop(
                band.dep.plan_id, band.rid, band.stage, band.rows, band.path, band.hop, band.tensor, now
            )
            self.radio.put(hop)
            return
        self._deliver(band.dep, band.rid, band.stage, band.path[0], band.rows, band.tensor, now)

    def _send(self, dep: Deployment, rid: int, s: Send, tensor: torch.Tensor, now: float) -> None:
        if len(s.path) == 1:
            self._deliver(dep, rid, s.stage, self.device, s.rows, tensor, now)
        else:
            self.radio.put(Hop(dep.plan_id, rid, s.stage, s.rows, s.path, 0, tensor, now))

    def _deliver(
        self, dep: Deployment, rid: int, stage: int, src: str, rows: Rows, tensor: torch.Tensor, now: float
    ):
        """File one piece; queue the task it completes, or assemble the output at the sink."""
        expected = dep.expected_pieces(stage)
        if (src, rows) not in expected:
            raise ValueError(f"{self.device} expects no rows {list(rows)} of stage {stage} from {src!r}")
        if stage < dep.n_stages and self.tasks.qsize() >= self.limits.max_queued:
            raise ValueError(f"{self.tasks.qsize()} tasks wait for the compute thread")
        pieces = self.state.file_piece(dep, rid, stage, (src, rows, tensor), len(expected))
        if pieces is None:
            return
        if stage < dep.n_stages:
            self.tasks.put((dep, rid, dep.task_for(stage), pieces, now))
            return
        output = assemble([(r, t) for _, r, t in pieces], (0, dep.out_extent))
        self.emit(
            self.state.owner_of(dep.plan_id),
            Header(Kind.RESULT, rid, {"plan": dep.plan_id, "done": now}),
            [output],
        )
        self.record(dep, rid, {"ev": "done", "t": now})

    # ---- compute thread --------------------------------------------------------------------------
    def compute_loop(self) -> None:
        torch.set_num_threads(1)
        while (item := self.tasks.get()) is not None:
            self._compute(*item)
            del item  # let go of its input before waiting for the next task (``_compute``)

    def _compute(self, dep: Deployment, rid: int, task: TaskSpec, pieces: list[Piece], ready: float) -> None:
        """Run one ready task and hand its output on. What it received (the bands in ``pieces``) counts
        against their senders' budgets while alive: it is let go of on return, not kept until the next
        task, which a plan rescued off this device never sends."""
        emulation = self.state.emulation()
        if not self.state.live(dep, rid):
            return
        try:
            units = range(task.start, task.end)
            graph = self.weights.prepare(dep.model, dep.seed, dep.input_shape, units)

            def run():
                band = assemble([(r, t) for _, r, t in pieces], task.in_rows)
                return compute_band(graph, task.start, task.end, band, task.in_rows, task.out_rows)

            work_s = None
            if emulation is not None:
                work_s = emulation.band_work(graph, task.start, task.end, task.out_rows)
            with self.state.computing(dep, rid):
                out, p = paced(run, emulation, abort=lambda: not self.state.live(dep, rid), work_s=work_s)
        except Exception as exc:  # a bad band or a broken model: report, keep serving
            log.exception("%s: task of stage %d failed", self.device, task.stage)
            self.state.fail(dep, rid)
            owner = self.state.owner_of(dep.plan_id)
            self.error(owner, rid, f"compute failed: {exc!r}", "band", plan=dep.plan_id)
            return
        self.computed += 1
        self.meter.add("compute", p.end - p.start)
        if not self.state.live(dep, rid):
            return  # cancelled while it computed (and reported as such): the output is not wanted
        event = {"ev": "compute", "stage": task.stage, "ready": ready, "start": p.start, "end": p.end}
        event |= {"cpu": p.cpu_s, "target": p.target_s, "flops": task.flops}
        if p.nominal_s is not None:  # what the band takes at the device's nominal speed (telemetry)
            event["nominal"] = p.nominal_s
        self.record(dep, rid, event)
        for s in task.sends:
            try:
                self._send(dep, rid, s, take_rows(out, task.out_rows, s.rows), p.end)
            except ValueError as exc:
                owner = self.state.owner_of(dep.plan_id)
                self.error(owner, rid, f"local hand-over failed: {exc}", plan=dep.plan_id)

    def stop(self) -> None:
        self.tasks.put(None)
