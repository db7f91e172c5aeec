"""A worker: one device of the cluster, running its share of every deployed plan.

``python -m runtime.worker --bind tcp://HOST:PORT [--bind ...] --device-id ID [--model-file F]
[--curve-keys DIR | --insecure]``

The worker binds one ROUTER socket. The controller (a DEALER) configures it (peers' addresses,
emulation, power profile), deploys plans to it and hands the input image to the source; peers (DEALERs
of other workers) send it row bands. Three threads share the work:

- the I/O thread owns the ROUTER: it answers control messages at once (so heartbeats are answered
  while the device computes), holds emulated arrivals until their delivery time and files bands;
- the compute thread runs tasks one at a time, in the order they become ready, paced by emulation;
- the radio thread sends hops one at a time, in the order they were queued (the device's one radio),
  peer to peer to the next device of the route: the bands never pass through the controller. In kernel
  network mode (CONFIG ``radio: kernel``, runtime/kernel_network.py) no timer shapes a hop: it holds the
  radio until the receiver acknowledges the band.

A ``Deployment`` (one per plan, built by the controller from ``layout(graph, plan)``) tells the worker
its tasks, who sends it which rows, what it sends to whom along which route, and how many hops it
relays. Telemetry (one TELEMETRY message per request per worker, once all its events for the request
are done) and results go back to the controller that deployed the plan. Transfers are also reported as
they happen (PROGRESS: start, end, or cut short, and every ``TICK_S`` of a longer one the bytes carried
so far), so the controller sees a link slow down while the request that crosses it is still running, and
knows how slow after a fraction of a second of a crawling transfer, not only once it is done.

Cancelling: a DEPLOY message may retire whole plans and cancel single attempts (``cancel``: [[plan,
request], ...], an attempt the controller restarted elsewhere). Either way the worker drops the
attempt's state, its queued computations and sends, cuts short the emulated compute or transfer it is in
the middle of, and silently drops its bands still on their way in: the abandoned attempt stops using
the device's compute and radio at once. The compute a dropped attempt did here (up to now for a computation
it cuts short) is reported with the DEPLOY's answer (PROGRESS, ``ev: compute``), so that its request's
energy includes it.

Weights: the model is built on the meta device and only the units the worker computes are loaded
from the checkpoint, which is memory-mapped, so a device never holds the weights of units it does not
run (a flat stage split by features touches only its rows of the weight). Loaded units stay cached
across plan swaps. Without ``--model-file`` the worker builds the whole seeded model itself.

Anything malformed (bad frames, wrong version, unknown plan or request, a plan naming an unknown
device) gets an ERROR reply or a log line, and the worker keeps serving.

Secure and bounded by default: a worker bound beyond loopback refuses to start without CURVE keys
unless ``--insecure`` (then it warns at start and in every PONG); under CURVE only the controller's key
configures and deploys, and a device's key only sends its own bands along the plan's routes
(``runtime.auth``). Every band is checked against the deployed plan (route, rows, shape, dtype) before
it is held or queued; received bytes count against per-sender budgets, queues, plans per client, input
size and model builds are bounded (``runtime.limits``: a named default and a flag each), and models are
built on a build thread, so the I/O thread keeps answering while a deployment's model is built.
"""

from __future__ import annotations

import argparse
import ctypes
import heapq
import itertools
import logging
import math
import os
import queue
import signal
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
import zmq
from torch import nn

from runtime import models
from runtime.auth import INSECURE_WARNING, Access, Refused, Sender, check_bind
from runtime.emulation import (
    ABORT_POLL_S,
    DeviceEmulation,
    EnergyMeter,
    emulation_from_wire,
    paced,
    sleep_until,
)
from runtime.executor import assemble, compute_band, take_rows
from runtime.graph import LayerGraph
from runtime.halo import Rows
from runtime.kernel_network import EgressCounter, egress_counter
from runtime.layout import layout
from runtime.limits import ByteBudget, Limits, builds_to_evict, weight_bytes
from runtime.limits import add_arguments as add_limit_arguments
from runtime.limits import from_arguments as limits_from_arguments
from runtime.plan import Plan
from runtime.security import CONTROLLER, KeyFileError, authorized_keys, secure_client, secure_server
from runtime.spec import PowerProfile
from runtime.transport import Header, Kind, Message, ProtocolError, encode, recv, rows_axis

log = logging.getLogger("runtime.worker")

POLL_MS = 100  # the I/O loop wakes at least this often (parent check, shutdown)
MAX_PATH = 64  # devices on one route
MAX_ENDPOINT = 256  # characters of a peer endpoint
TICK_S = 0.25  # a transfer longer than this reports the bytes carried so far at this interval


# ---------------------------------------------------------------------------------- deployment format


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
        n_stages = _int(m.get("n_stages"), "n_stages", 1)

        def send(v: Any) -> Send:
            if not (isinstance(v, list) and len(v) == 3):
                raise ValueError("a send must be [stage, rows, path]")
            path = tuple(_str(d, "path device") for d in _list(v[2], "path"))
            if not path or len(path) > MAX_PATH:
                raise ValueError(f"a send path must hold 1 to {MAX_PATH} devices")
            return Send(_int(v[0], "send stage", 0, n_stages), _rows(v[1]), path)

        def piece(v: Any) -> tuple[str, Rows]:
            if not (isinstance(v, list) and len(v) == 2):
                raise ValueError("a piece must be [device, rows]")
            return _str(v[0], "piece device"), _rows(v[1])

        tasks = []
        for t in _list(m.get("tasks"), "tasks"):
            if not isinstance(t, dict):
                raise ValueError("a task must be a map")
            start, end = _rows(t.get("units"))
            if start == end:
                raise ValueError("a task must cover at least one unit")
            stage = _int(t.get("stage"), "task stage", 0, n_stages - 1)
            sends = tuple(send(s) for s in _list(t.get("sends"), "sends"))
            if any(s.stage != stage + 1 for s in sends):
                raise ValueError(f"task of stage {stage} sends rows of another stage")
            tasks.append(
                TaskSpec(
                    stage,
                    start,
                    end,
                    _rows(t.get("in")),
                    _rows(t.get("out")),
                    _int(t.get("flops"), "flops", 0),
                    tuple(piece(p) for p in _list(t.get("inputs"), "inputs")),
                    sends,
                )
            )
        if len({t.stage for t in tasks}) != len(tasks):
            raise ValueError("two tasks in one stage")
        shape = tuple(_int(s, "input_shape", 1) for s in _list(m.get("input_shape"), "input_shape"))
        if len(shape) != 3:
            raise ValueError("input_shape must be [C, H, W]")
        feed = tuple(send(s) for s in _list(m.get("feed"), "feed"))
        if any(s.stage != 0 for s in feed):
            raise ValueError("the source feeds stage 0 only")
        dep = cls(
            _int(m.get("plan"), "plan", 0),
            _str(m.get("device"), "device"),
            _str(m.get("model"), "model"),
            _int(m.get("seed"), "seed", 0),
            shape,
            _str(m.get("source"), "source"),
            _str(m.get("sink"), "sink"),
            n_stages,
            _int(m.get("out_extent"), "out_extent", 1),
            tuple(tasks),
            feed,
            tuple(piece(p) for p in _list(m.get("collect"), "collect")),
            tuple(send(s) for s in _list(m.get("relays"), "relays")),
            tuple(_int(b, "bounds", 0) for b in _list(m.get("bounds"), "bounds")),
        )
        if len(dep.bounds) != n_stages + 1 or list(dep.bounds) != sorted(set(dep.bounds)):
            raise ValueError(
                "bounds must be the n_stages + 1 increasing unit indices of the stage boundaries"
            )
        if any((t.start, t.end) != dep.bounds[t.stage : t.stage + 2] for t in tasks):
            raise ValueError("a task's units are not its stage's")
        if any(dep.device not in r.path[1:-1] for r in dep.relays):
            raise ValueError(f"{dep.device} relays a transfer whose route does not pass through it")
        for s in [*feed, *(s for t in tasks for s in t.sends)]:
            if s.path[0] != dep.device:
                raise ValueError(f"a send of {dep.device} starts at {s.path[0]}")
        if dep.feed and dep.device != dep.source:
            raise ValueError("only the source feeds stage 0")
        if dep.collect and dep.device != dep.sink:
            raise ValueError("only the sink collects the output")
        return dep


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


def _int(v: Any, what: str, lo: int = 0, hi: int = (1 << 63) - 1) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"{what} must be an int in [{lo}, {hi}], got {repr(v)[:40]}")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v or len(v) > 200:
        raise ValueError(f"{what} must be a non-empty string, got {repr(v)[:40]}")
    return v


def _list(v: Any, what: str) -> list:
    if not isinstance(v, list):
        raise ValueError(f"{what} must be a list, got {type(v).__name__}")
    return v


def _rows(v: Any) -> Rows:
    if not (isinstance(v, list) and len(v) == 2):
        raise ValueError(f"rows must be [lo, hi], got {repr(v)[:40]}")
    lo, hi = _int(v[0], "rows"), _int(v[1], "rows")
    if hi < lo:
        raise ValueError(f"rows [{lo}, {hi}) are reversed")
    return lo, hi


def _is_endpoint(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= MAX_ENDPOINT and v.startswith(("tcp://", "ipc://"))


def _band_shape(graph: LayerGraph, boundary: int, rows: Rows) -> tuple[int, ...]:
    """Shape (without batch) of ``rows`` of a boundary's tensor, as bands carry them."""
    if rows[1] > graph.extent(boundary):
        raise ValueError(f"rows {list(rows)} beyond the {graph.extent(boundary)} of boundary {boundary}")
    shape = list(graph.boundary_shape(boundary))
    shape[rows_axis(len(shape) + 1)] = rows[1] - rows[0]
    return tuple(shape)


def _float(v: Any, what: str) -> float:
    if type(v) not in (int, float) or not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, got {repr(v)[:40]}")
    return float(v)


# ---------------------------------------------------------------------------------- weights


@dataclass
class _Model:
    module: nn.Module
    layers: list[models.Layer]
    names: dict[int, str]  # id(module) -> qualified name in the state_dict
    graph: LayerGraph
    loaded: set[int] = field(default_factory=set)


class WeightStore:
    """Model skeletons and graphs, with the weights of the units this worker has run.

    With a checkpoint (``model_file``) a model is a meta-device skeleton whose units get their tensors
    from the memory-mapped checkpoint when first needed, and the checkpoint alone defines the weights;
    without one the seeded model is built whole. One entry per (model, seed, input shape), within the
    ``limits`` on builds and on seeded weight bytes: a new one evicts the least recently used ones no
    deployed plan needs (``in_use`` names those), and is refused before it is built when the entries in
    use leave no room, so no sequence of deployments (new seeds, new input shapes) can exhaust the
    device's memory. An entry evicted is rebuilt on demand.
    """

    def __init__(self, model_file: Path | None, limits: Limits, in_use: Callable[[], set[tuple]] = set):
        self.model_file = model_file
        self.limits = limits
        self.in_use = in_use
        self._checkpoint: dict[str, torch.Tensor] | None = None
        self._models: OrderedDict[tuple, _Model] = OrderedDict()
        self._lock = threading.Lock()  # the I/O thread deploys while the compute thread computes

    def prepare(self, name: str, seed: int, shape: tuple[int, ...], units: Iterable[int] = ()) -> LayerGraph:
        """The graph of the model for this input shape, with the weights of ``units`` loaded."""
        key = self.key(name, seed, shape)
        with self._lock:
            model = self._models.get(key)
            if model is None:
                self._make_room(name)
        if model is None:  # built without the lock: the status (PONG) reads the store meanwhile
            model = self._build(name, seed, shape)
        with self._lock:
            model = self._models.setdefault(key, model)
            self._models.move_to_end(key)
            for u in sorted(set(units) - model.loaded):
                for module in model.layers[u][1]:
                    self._load_module(module, model.names)
                model.loaded.add(u)
            return model.graph

    def _build(self, name: str, seed: int, shape: tuple[int, ...]) -> _Model:
        module = models.skeleton(name) if self.model_file else models.build(name, seed=seed)
        layers = models.layers(module)
        graph = LayerGraph.from_model(module, shape, name)
        model = _Model(module, layers, {id(m): n for n, m in module.named_modules()}, graph)
        if not self.model_file:
            model.loaded.update(range(len(layers)))
        return model

    def key(self, name: str, seed: int, shape: tuple[int, ...]) -> tuple:
        """What tells two builds apart (with a checkpoint the seed does not matter)."""
        return name, None if self.model_file else seed, tuple(shape)

    def _make_room(self, name: str) -> None:
        """Evict builds no plan needs until one of ``name`` fits, or refuse it (caller holds the lock)."""
        held = {key: self._allocated(m.module) for key, m in self._models.items()}
        new, limits = self._allocated(models.skeleton(name)), self.limits
        for key in builds_to_evict(held, self.in_use(), new, limits.max_models, limits.max_model_bytes):
            del self._models[key]

    def _allocated(self, module: nn.Module) -> int:
        """The memory a build of ``module`` holds: its weights when seeded; none with a checkpoint, whose
        loaded units view the one memory-mapped file that every build shares (the OS can drop its pages)."""
        return 0 if self.model_file else weight_bytes(module)

    def _load_module(self, module: nn.Module, names: dict[int, str]) -> None:
        wanted = module.state_dict()
        if not wanted:
            return
        if self._checkpoint is None:
            try:
                self._checkpoint = torch.load(self.model_file, mmap=True, weights_only=True)
            except Exception as exc:  # torch raises several unrelated types for unreadable files
                raise models.ModelError(f"cannot read checkpoint {self.model_file}: {exc}") from None
            if not isinstance(self._checkpoint, dict):
                raise models.ModelError(f"checkpoint {self.model_file} is not a state_dict")
        prefix = names.get(id(module))
        if prefix is None:
            raise models.ModelError(f"{type(module).__name__} with weights is not part of the model")
        state = {}
        for key, meta in wanted.items():
            tensor = self._checkpoint.get(f"{prefix}.{key}")
            if not isinstance(tensor, torch.Tensor) or tensor.shape != meta.shape:
                raise models.ModelError(
                    f"checkpoint {self.model_file} lacks {prefix}.{key} {tuple(meta.shape)}"
                )
            state[key] = tensor
        module.load_state_dict(state, assign=True)

    def loaded(self) -> dict[str, list[int]]:
        """Loaded units per model, keyed ``name:CxHxW`` (plus ``:seed`` without a checkpoint)."""
        with self._lock:
            return {
                ":".join([name, "x".join(map(str, shape))] + ([] if seed is None else [str(seed)])): sorted(
                    m.loaded
                )
                for (name, seed, shape), m in self._models.items()
            }

    def loaded_bytes(self) -> int:
        with self._lock:
            return sum(
                t.numel() * t.element_size()
                for m in self._models.values()
                for u in m.loaded
                for module in m.layers[u][1]
                for t in module.state_dict().values()
            )


# ---------------------------------------------------------------------------------- worker


@dataclass
class _Request:
    """One request's state on this worker, dropped once its events are all recorded."""

    pending: int
    pieces: dict[int, list[tuple[str, Rows, torch.Tensor]]] = field(default_factory=dict)
    ready_at: dict[int, float] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Band:
    """A band checked against its plan, delivered now or held until its emulated arrival."""

    dep: Deployment
    rid: int
    stage: int
    rows: Rows
    path: tuple[str, ...]
    hop: int
    tensor: torch.Tensor
    peer: bytes | None
    deliver_at: float | None


@dataclass
class _Hop:
    """A hop waiting for the radio: send ``tensor`` (rows of stage ``stage``) to ``path[hop + 1]``."""

    plan_id: int
    rid: int
    stage: int
    rows: Rows
    path: tuple[str, ...]
    hop: int
    tensor: torch.Tensor
    queued: float


class Worker:
    """One device's worker process (see the module docstring)."""

    def __init__(
        self,
        bind: str | list[str],
        device: str,
        *,
        model_file: Path | None = None,
        curve_keys: Path | None = None,
        controller_key: str = CONTROLLER,
        insecure: bool = False,
        parent_pid: int | None = None,
        limits: Limits | None = None,
    ):
        binds = [bind] if isinstance(bind, str) else list(bind)
        for endpoint in binds:
            check_bind(endpoint, curve_keys is not None, insecure)
        self.device = device
        self.boot = uuid.uuid4().hex[:12]
        self.limits = limits = limits or Limits()
        self.parent_pid = parent_pid
        self.curve_keys = curve_keys
        self.insecure = insecure
        self.access = Access(None if curve_keys is None else authorized_keys(curve_keys), controller_key)
        self.weights = WeightStore(model_file, limits, self._models_in_use)
        self.budget = ByteBudget(limits.peer_budget_bytes, limits.total_budget_bytes)
        self.ctx = zmq.Context()
        self._auth = None
        try:
            self.router = self.ctx.socket(zmq.ROUTER)
            self.router.linger = 0
            self.router.router_mandatory = 1
            self.router.router_handover = 1
            self.router.maxmsgsize = limits.max_message_bytes  # per frame: libzmq drops a bigger one unread
            if curve_keys is not None:
                self._auth = secure_server(self.router, curve_keys, self.ctx, device)
            for i, endpoint in enumerate(binds):  # the first is reported (READY): the controller's
                self.router.bind(endpoint)
                if i == 0:
                    self.endpoint = self.router.last_endpoint.decode()
        except BaseException:  # a missing key or a bad endpoint: leave no socket behind
            self.ctx.destroy(linger=0)
            raise
        self._outbox = self.ctx.socket(zmq.PULL)
        self._outbox.bind(f"inproc://outbox-{id(self)}")
        self._io_thread = threading.get_ident()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._plans: dict[int, Deployment] = {}
        self._owners: dict[int, bytes] = {}  # plan -> the connection its results and reports go to
        self._bound: dict[int, object] = {}  # plan (deployed or being built) -> the sender it is bound to
        self._graphs: dict[int, LayerGraph] = {}
        self._requests: dict[tuple[int, int], _Request] = {}
        self._finished: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._cancelled: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._computing: tuple[int, int, float] | None = None  # (plan, request, start) of the task running
        self._transfers = itertools.count()  # ids of this radio's transfers in PROGRESS messages
        self._held: list[tuple[float, int, Message]] = []
        self._seq = itertools.count()
        self._peers: dict[str, str] = {}
        self._emulation: DeviceEmulation | None = None
        # kernel network mode: the kernel shapes the links, no radio timer; a hop ends on the receiver's ACK
        self._kernel_radio = False
        self.meter = EnergyMeter()
        self.computed = 0
        self._compute_q: queue.SimpleQueue = queue.SimpleQueue()
        self._radio_q: queue.SimpleQueue = queue.SimpleQueue()
        self._build_q: queue.SimpleQueue = queue.SimpleQueue()  # deployments whose model is being built
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._compute_loop, name="compute", daemon=True),
            threading.Thread(target=self._radio_loop, name="radio", daemon=True),
            threading.Thread(target=self._build_loop, name="build", daemon=True),
        ]
        if insecure:
            log.warning(INSECURE_WARNING.format(endpoint=self.endpoint))

    # ---- I/O thread ----------------------------------------------------------------------------
    def serve(self) -> None:
        """Run until SHUTDOWN, SIGTERM or the death of the parent process."""
        for t in self._threads:
            t.start()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self._outbox, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                try:
                    self._serve_once(poller)
                except Exception:  # a bug must not take the device down: log it and keep serving
                    log.exception("%s: I/O loop error", self.device)
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.warning("%s: parent process %d is gone, exiting", self.device, self.parent_pid)
                    break
        finally:
            self.close()

    def _serve_once(self, poller: zmq.Poller) -> None:
        wait = POLL_MS
        if self._held:
            wait = min(wait, max(0, math.ceil((self._held[0][0] - time.time()) * 1000)))
        events = dict(poller.poll(wait))
        if self._outbox in events:
            self._flush_outbox()
        if self.router in events:
            for _ in range(64):  # bounded, so held deliveries and the outbox are not starved
                if not self._handle_one():
                    break
        self._release_held()

    def close(self) -> None:
        self._stop.set()
        for q in (self._compute_q, self._radio_q, self._build_q):
            q.put(None)
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=2.0)
        if self._auth is not None:
            self._auth.stop()
        self.ctx.destroy(linger=200)  # long enough to flush the last replies (e.g. the SHUTDOWN ack)

    def _flush_outbox(self) -> None:
        while True:
            try:
                frames = self._outbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._send_router(frames)

    def _send_router(self, frames: list) -> None:
        try:
            self.router.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the controller went away, or its queue is full
            log.warning("%s: cannot reach %r: %s", self.device, bytes(frames[0])[:32], exc)

    def _emit(self, peer: bytes | None, header: Header, tensors: list[torch.Tensor] = (), rows=None) -> None:
        """Send a message to a controller (``peer``) from any thread."""
        if peer is None:
            return
        frames = [peer, *encode(header, tensors, rows=rows)]
        if threading.get_ident() == self._io_thread:
            self._send_router(frames)
            return
        push = getattr(self._local, "push", None)
        if push is None:
            push = self._local.push = self.ctx.socket(zmq.PUSH)
            push.linger = 0
            push.connect(f"inproc://outbox-{id(self)}")
        push.send_multipart(frames, copy=False)

    def _error(
        self, peer: bytes | None, rid: int, message: str, kind: str | None = None, **extra: Any
    ) -> None:
        """Tell ``peer`` what went wrong; ``extra`` may name the ``plan`` and say it is ``transient``."""
        log.warning("%s: %s", self.device, message)
        meta = {"message": message[:2000], "kind": kind, "device": self.device} | extra
        self._emit(peer, Header(Kind.ERROR, rid, meta))

    def _handle_one(self) -> bool:
        try:
            msg = recv(
                self.router,
                flags=zmq.NOBLOCK,
                max_bytes=self.limits.max_message_bytes,
                authenticated=self.access.secure,
            )
        except zmq.Again:
            return False
        except ProtocolError as exc:
            self._error(exc.peer, exc.rid or 0, f"bad message: {exc}")
            return True
        kind, plan = msg.header.kind.value, msg.header.meta.get("plan")
        plan = plan if type(plan) is int else None
        try:
            sender = self.access.sender(msg)
            sender.check(msg.header.kind)
            self._dispatch(msg, sender)
        except (ValueError, KeyError, TypeError, IndexError, models.ModelError) as exc:
            self._error(msg.peer, msg.header.rid, f"{kind}: {exc}", kind, plan=plan)
        except Exception as exc:  # keep serving whatever a message does
            log.exception("%s: handling %s failed", self.device, kind)
            self._error(msg.peer, msg.header.rid, f"{kind}: internal error {exc!r}", kind, plan=plan)
        return True

    def _dispatch(self, msg: Message, sender: Sender) -> None:
        kind = msg.header.kind
        if kind == Kind.PING:  # the ping's number comes back with this clock: the controller times it
            status = (self.status() | {"clock": time.time()}) if sender.controls else {}
            if self.insecure:
                status["warning"] = INSECURE_WARNING.format(endpoint=self.endpoint)
            self._emit(msg.peer, Header(Kind.PONG, msg.header.rid, status))
        elif kind == Kind.BAND:
            band = self._check_band(msg, sender)
            self.budget.charge(sender.owner, msg.tensors)  # checked first: nothing unwanted is held
            if "ack" in msg.header.meta:  # kernel-shaped link: the sender's radio waits for this
                ack = {"ack": _int(msg.header.meta["ack"], "ack")}
                self._emit(msg.peer, Header(Kind.ACK, msg.header.rid, ack))
            if band.deliver_at is not None and band.deliver_at > time.time():
                if len(self._held) >= self.limits.max_open_requests:
                    raise ValueError(f"cannot hold a band: {len(self._held)} held")
                heapq.heappush(self._held, (band.deliver_at, next(self._seq), band))
            else:
                self._on_band(band)
        elif kind == Kind.INPUT:
            self._on_input(msg, sender)
        elif kind == Kind.DEPLOY:
            self._on_deploy(msg, sender)
        elif kind == Kind.CONFIG:
            self._on_config(msg, sender)
        elif kind == Kind.SHUTDOWN:
            self._emit(msg.peer, Header(Kind.ACK, msg.header.rid, {"device": self.device}))
            self._stop.set()
        else:
            raise ValueError(f"a worker does not accept {kind.value} messages")

    def status(self) -> dict[str, Any]:
        """What PONG reports to the controller: identity, load and meters."""
        with self._lock:
            plans, open_requests = sorted(self._plans), len(self._requests)
        return {
            "device": self.device,
            "boot": self.boot,
            "plans": plans,
            "open_requests": open_requests,
            "computed": self.computed,
            "loaded_units": self.weights.loaded(),
            "loaded_bytes": self.weights.loaded_bytes(),
            "buffered_bytes": self.budget.used(),
            "rss_bytes": psutil.Process().memory_info().rss,
            "busy_s": dict(self.meter.seconds),
            "energy_j": self.meter.joules,
        }

    def _release_held(self) -> None:
        now = time.time()
        while self._held and self._held[0][0] <= now:
            band = heapq.heappop(self._held)[2]
            try:
                self._on_band(band)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                self._error(band.peer, band.rid, f"band: {exc}", "band", plan=band.dep.plan_id)

    # ---- control ---------------------------------------------------------------------------------
    def _on_config(self, msg: Message, sender: Sender) -> None:
        meta = msg.header.meta
        if meta.get("device") != self.device:
            raise ValueError(f"configuration for device {meta.get('device')!r} sent to {self.device!r}")
        peers = meta.get("peers")
        if not isinstance(peers, dict) or not all(map(_is_endpoint, peers.values())):
            raise ValueError("peers must map device ids to tcp:// or ipc:// endpoints")
        power = [_float(p, "power") for p in _list(meta.get("power"), "power")]
        if len(power) != 4:
            raise ValueError("power must be [compute, transmit, receive, idle] watts")
        radio = meta.get("radio", "timer")
        if radio not in ("timer", "kernel"):
            raise ValueError(f"radio must be 'timer' or 'kernel', got {repr(radio)[:40]}")
        emulation = meta.get("emulation")
        emulation = None if emulation is None else emulation_from_wire(emulation, msg.tensors)
        if emulation is not None and set(emulation.links) - set(peers):
            raise ValueError("emulated links name devices without an endpoint")
        with self._lock:
            self._peers = dict(peers)
            self._emulation = emulation
            self._kernel_radio = radio == "kernel"
            self.meter.power = PowerProfile(*power)
            if meta.get("reset"):  # the sender's own plans only
                self._drop_plans([pid for pid, owner in self._bound.items() if owner == sender.owner])
        self._emit(msg.peer, Header(Kind.ACK, msg.header.rid, {"device": self.device, "boot": self.boot}))

    def _drop_plans(self, plan_ids: Iterable[int]) -> list[tuple[tuple[int, int], _Request]]:
        """Forget plans (deployed or being built) and their requests (caller holds the lock); returns the
        dropped requests."""
        plan_ids = set(plan_ids)
        dropped = [(k, self._requests.pop(k)) for k in [k for k in self._requests if k[0] in plan_ids]]
        for pid in plan_ids:
            for table in (self._plans, self._owners, self._bound, self._graphs):
                table.pop(pid, None)
        return dropped

    def _on_deploy(self, msg: Message, sender: Sender) -> None:
        """Retire plans and cancel attempts at once; a new plan is checked here and built on the build
        thread (a model build takes seconds: the I/O thread keeps answering meanwhile)."""
        meta = msg.header.meta
        retire = [_int(p, "retire") for p in _list(meta.get("retire", []), "retire")]
        cancel = []
        for c in _list(meta.get("cancel", []), "cancel"):
            if not (isinstance(c, list) and len(c) == 2):
                raise ValueError("a cancelled attempt must be [plan, request]")
            cancel.append((_int(c[0], "cancel plan"), _int(c[1], "cancel request")))
        dep = None if meta.get("deploy") is None else self._check_deployment(meta["deploy"], sender)
        with self._lock:
            if foreign := {
                p for p in retire + [c[0] for c in cancel] if self._bound.get(p, sender.owner) != sender.owner
            }:
                raise Refused(f"plan(s) {sorted(foreign)} belong to another client")
            if dep is not None:
                if self._bound.get(dep.plan_id, sender.owner) != sender.owner:
                    raise Refused(f"plan {dep.plan_id} belongs to another client")
                mine = sum(owner == sender.owner for pid, owner in self._bound.items() if pid not in retire)
                if dep.plan_id not in self._bound and mine >= self.limits.max_plans_per_client:
                    raise ValueError(f"{mine} plans deployed (limit {self.limits.max_plans_per_client})")
                if self._build_q.qsize() >= self.limits.max_queued:
                    raise ValueError(f"{self._build_q.qsize()} deployments are being built: try later")
            # compute that attempts dropped here did, not yet reported (no request still open under a
            # retired plan is wanted: the controller retires a plan once nothing it awaits uses it)
            dropped = self._drop_plans(retire)
            for key in cancel:
                if (req := self._requests.pop(key, None)) is not None:
                    dropped.append((key, req))
                self._finished[key] = self._cancelled[key] = None
                if len(self._cancelled) > 4 * self.limits.max_open_requests:
                    self._cancelled.popitem(last=False)
            spent = [
                (key, e["start"], e["end"])
                for key, req in dropped
                for e in req.events
                if e["ev"] == "compute"
            ]
            if self._computing is not None and (
                self._computing[0] in retire or self._computing[:2] in cancel
            ):  # the computation in progress stops at the next abort check, ~now
                spent.append((self._computing[:2], self._computing[2], time.time()))
            if dep is not None:
                self._bound[dep.plan_id] = sender.owner
                self._plans.pop(dep.plan_id, None)  # a re-deployment replaces the plan once built
        for (plan_id, rid), start, end in spent:  # before DEPLOY_OK: the controller has them when it acts
            self._report_abandoned_compute(msg.peer, plan_id, rid, start, end)
        if dep is not None:
            self._build_q.put((dep, msg.peer, msg.header.rid, sender.owner))
            return
        reply = {"plan": None, "device": self.device, "boot": self.boot}
        self._emit(msg.peer, Header(Kind.DEPLOY_OK, msg.header.rid, reply))

    def _check_deployment(self, meta: Any, sender: Sender) -> Deployment:
        """Everything about a new deployment that needs no model build."""
        dep = Deployment.from_meta(meta)
        if dep.device != self.device:
            raise ValueError(f"deployment for {dep.device!r} sent to {self.device!r}")
        if math.prod(dep.input_shape) > self.limits.max_input_elements:
            raise ValueError(
                f"input shape {list(dep.input_shape)} exceeds {self.limits.max_input_elements} elements "
                "(--max-input-elements)"
            )
        with self._lock:
            peers = set(self._peers)
        sends = [*dep.feed, *(s for t in dep.tasks for s in t.sends), *dep.relays]
        hops = {s.path[s.path.index(self.device) + 1] for s in sends if s.path[-1] != self.device}
        if unknown := hops - peers:
            raise ValueError(f"plan {dep.plan_id} sends to unknown device(s) {sorted(unknown)}")
        return dep

    def _build_loop(self) -> None:
        """Build the models of new deployments, then make them live and confirm (DEPLOY_OK)."""
        torch.set_num_threads(1)
        while (job := self._build_q.get()) is not None:
            dep, peer, rid, owner = job
            try:
                graph = self._build(dep)
            except (ValueError, models.ModelError) as exc:
                with self._lock:
                    if self._bound.get(dep.plan_id) == owner and dep.plan_id not in self._plans:
                        del self._bound[dep.plan_id]
                self._error(peer, rid, f"deploy: {exc}", "deploy", plan=dep.plan_id)
                continue
            except Exception as exc:  # a broken model must not take the build thread down
                log.exception("%s: building plan %d failed", self.device, dep.plan_id)
                self._error(peer, rid, f"deploy: internal error {exc!r}", "deploy", plan=dep.plan_id)
                continue
            with self._lock:
                if self._bound.get(dep.plan_id) != owner:
                    continue  # retired (or reset) while it was built
                self._plans[dep.plan_id], self._owners[dep.plan_id] = dep, peer
                self._graphs[dep.plan_id] = graph
            reply = {"plan": dep.plan_id, "device": self.device, "boot": self.boot}
            self._emit(peer, Header(Kind.DEPLOY_OK, rid, reply))

    def _build(self, dep: Deployment) -> LayerGraph:
        graph = self.weights.prepare(dep.model, dep.seed, dep.input_shape)
        if dep.bounds[-1] > len(graph.units):
            raise ValueError(f"plan units up to {dep.bounds[-1]} beyond the model's {len(graph.units)}")
        self.weights.prepare(dep.model, dep.seed, dep.input_shape, dep.units())
        return graph

    def _models_in_use(self) -> set[tuple]:
        """The model builds deployed plans (and plans being built) need: the weight store keeps them."""
        with self._lock:
            plans = list(self._plans.values())
        return {self.weights.key(d.model, d.seed, d.input_shape) for d in plans}

    # ---- request flow ----------------------------------------------------------------------------
    def _live(self, dep: Deployment, rid: int) -> bool:
        """Whether attempt ``rid`` of ``dep`` still matters: its plan is deployed, it is not cancelled."""
        with self._lock:
            return self._plans.get(dep.plan_id) is dep and (dep.plan_id, rid) not in self._cancelled

    def _request(self, dep: Deployment, rid: int, create: bool) -> _Request | None:
        """The state of request ``rid`` under ``dep`` (caller holds the lock)."""
        key = (dep.plan_id, rid)
        req = self._requests.get(key)
        if req is None and create:
            if key in self._finished:
                raise ValueError(f"request {rid} of plan {dep.plan_id} is already finished here")
            if len(self._requests) >= self.limits.max_open_requests:
                raise ValueError(f"too many open requests ({self.limits.max_open_requests})")
            req = self._requests[key] = _Request(dep.expected_events)
        return req

    def _record(self, dep: Deployment, rid: int, event: dict[str, Any]) -> None:
        """Add one telemetry event; the last one expected flushes them to the controller."""
        with self._lock:
            if self._plans.get(dep.plan_id) is not dep or (dep.plan_id, rid) in self._cancelled:
                return  # retired or cancelled meanwhile
            req = self._request(dep, rid, create=True)
            req.events.append(event)
            req.pending -= 1
            if req.pending > 0:
                return
            del self._requests[(dep.plan_id, rid)]
            self._finished[(dep.plan_id, rid)] = None
            if len(self._finished) > 4 * self.limits.max_open_requests:
                self._finished.popitem(last=False)
            owner = self._owners.get(dep.plan_id)
        meta = {"plan": dep.plan_id, "device": self.device, "events": req.events}
        self._emit(owner, Header(Kind.TELEMETRY, rid, meta))

    def _report_abandoned_compute(self, owner, plan_id: int, rid: int, start: float, end: float) -> None:
        """Report compute an abandoned attempt used (its telemetry never will): its request pays for it."""
        meta = {"ev": "compute", "plan": plan_id, "from": self.device, "start": start, "end": end}
        self._emit(owner, Header(Kind.PROGRESS, rid, meta))

    def _deployment(self, meta: dict[str, Any], sender: Sender | None = None) -> Deployment:
        """The plan a message names; with ``sender``, only if that sender deployed it."""
        pid = _int(meta.get("plan"), "plan")
        with self._lock:
            dep = self._plans.get(pid)
            owner = self._bound.get(pid)
        if dep is None:
            raise ValueError(f"unknown plan {pid}")
        if sender is not None and owner != sender.owner:
            raise Refused(f"plan {pid} belongs to another client")
        return dep

    def _on_input(self, msg: Message, sender: Sender) -> None:
        now = time.time()
        dep = self._deployment(msg.header.meta, sender)
        rid = msg.header.rid
        if dep.device != dep.source:
            raise ValueError(f"{self.device} is not the source of plan {dep.plan_id}")
        if (
            len(msg.tensors) != 1
            or msg.tensors[0].dim() != 4
            or tuple(msg.tensors[0].shape[1:]) != dep.input_shape
            or not 1 <= len(msg.tensors[0]) <= self.limits.max_batch
        ):
            raise ValueError(
                f"input must be one float tensor of shape (N, {', '.join(map(str, dep.input_shape))}), "
                f"N <= {self.limits.max_batch}"
            )
        x = msg.tensors[0]
        if x.dtype != torch.float32:
            raise ValueError("input must be float32")
        with self._lock:
            if (dep.plan_id, msg.header.rid) in self._requests or (dep.plan_id, rid) in self._finished:
                raise ValueError(f"request {rid} of plan {dep.plan_id} was already started")
        self.budget.charge(sender.owner, msg.tensors)
        self._record(dep, rid, {"ev": "input", "t": now})
        full = (0, x.shape[-2])
        for s in dep.feed:
            self._send(dep, rid, s, take_rows(x, full, s.rows), now)

    def _send(self, dep: Deployment, rid: int, s: Send, tensor: torch.Tensor, now: float) -> None:
        if len(s.path) == 1:
            self._deliver(dep, rid, s.stage, self.device, s.rows, tensor, now)
        else:
            self._radio_q.put(_Hop(dep.plan_id, rid, s.stage, s.rows, s.path, 0, tensor, now))

    def _check_band(self, msg: Message, sender: Sender) -> _Band:
        """A band the deployed plan expects here, from the device it names: its route, rows, shape and
        dtype are the plan's (ValueError otherwise), checked before anything is held or queued."""
        meta = msg.header.meta
        dep = self._deployment(meta)
        path = tuple(_str(d, "path device") for d in _list(meta.get("path"), "path"))
        hop = _int(meta.get("hop"), "hop", 1, max(1, len(path) - 1))
        if len(path) < 2 or path[hop] != self.device:
            raise ValueError(f"band routed along {list(path)} reached {self.device} at hop {hop}")
        if sender.name is not None and sender.name != path[hop - 1]:
            raise Refused(f"key {sender.name!r} sends a band as {path[hop - 1]!r}")
        stage = _int(meta.get("stage"), "stage", 0, dep.n_stages)
        if len(msg.tensors) != 1 or msg.specs[0].rows is None:
            raise ValueError("a band carries exactly one tensor with its rows")
        rows, tensor = msg.specs[0].rows, msg.tensors[0]
        if hop < len(path) - 1:  # a relay: only along a route of the plan
            if Send(stage, rows, path) not in dep.relays:
                raise ValueError(
                    f"{self.device} relays no rows {list(rows)} along {list(path)} in plan {dep.plan_id}"
                )
        elif (path[0], rows) not in dep.expected_pieces(stage):
            raise ValueError(f"{self.device} expects no rows {list(rows)} of stage {stage} from {path[0]!r}")
        with self._lock:
            graph = self._graphs[dep.plan_id]
        want = _band_shape(graph, dep.bounds[stage], rows)
        if tensor.dtype != torch.float32 or tuple(tensor.shape[1:]) != want:
            raise ValueError(
                f"rows {list(rows)} of stage {stage} must be float32 (N, {', '.join(map(str, want))})"
            )
        if not 1 <= len(tensor) <= self.limits.max_batch:
            raise ValueError(f"a band holds 1 to {self.limits.max_batch} images")
        deliver_at = meta.get("deliver_at")
        if deliver_at is not None:
            deliver_at = _float(deliver_at, "deliver_at")
            if deliver_at > time.time() + self.limits.max_hold_s:
                raise ValueError(f"cannot hold a band for more than {self.limits.max_hold_s} s")
        return _Band(dep, msg.header.rid, stage, rows, path, hop, tensor, msg.peer, deliver_at)

    def _on_band(self, band: _Band) -> None:
        now = time.time()
        if band.hop < len(band.path) - 1:  # relay: store and forward on this device's radio
            if self._radio_q.qsize() >= self.limits.max_queued:
                raise ValueError(f"{self._radio_q.qsize()} hops wait for the radio")
            hop = _Hop(
                band.dep.plan_id, band.rid, band.stage, band.rows, band.path, band.hop, band.tensor, now
            )
            self._radio_q.put(hop)
            return
        self._deliver(band.dep, band.rid, band.stage, band.path[0], band.rows, band.tensor, now)

    def _deliver(
        self, dep: Deployment, rid: int, stage: int, src: str, rows: Rows, tensor: torch.Tensor, now: float
    ):
        """File one piece; queue the task it completes, or assemble the output at the sink."""
        expected = dep.expected_pieces(stage)
        if (src, rows) not in expected:
            raise ValueError(f"{self.device} expects no rows {list(rows)} of stage {stage} from {src!r}")
        if stage < dep.n_stages and self._compute_q.qsize() >= self.limits.max_queued:
            raise ValueError(f"{self._compute_q.qsize()} tasks wait for the compute thread")
        with self._lock:
            if self._plans.get(dep.plan_id) is not dep or (dep.plan_id, rid) in self._cancelled:
                return
            req = self._request(dep, rid, create=True)
            got = req.pieces.setdefault(stage, [])
            if any(p[0] == src and p[1] == rows for p in got):
                raise ValueError(f"rows {list(rows)} of stage {stage} from {src!r} arrived twice")
            got.append((src, rows, tensor))
            if len(got) < len(expected):
                return
            pieces = req.pieces.pop(stage)
        if stage < dep.n_stages:
            self._compute_q.put((dep, rid, dep.task_for(stage), pieces, now))
            return
        output = assemble([(r, t) for _, r, t in pieces], (0, dep.out_extent))
        self._emit(
            self._owners.get(dep.plan_id),
            Header(Kind.RESULT, rid, {"plan": dep.plan_id, "done": now}),
            [output],
        )
        self._record(dep, rid, {"ev": "done", "t": now})

    # ---- compute thread --------------------------------------------------------------------------
    def _compute_loop(self) -> None:
        torch.set_num_threads(1)
        while (item := self._compute_q.get()) is not None:
            dep, rid, task, pieces, ready = item
            with self._lock:
                emulation = self._emulation
            if not self._live(dep, rid):
                continue
            try:
                units = range(task.start, task.end)
                graph = self.weights.prepare(dep.model, dep.seed, dep.input_shape, units)

                def run(task=task, pieces=pieces, graph=graph):
                    band = assemble([(r, t) for _, r, t in pieces], task.in_rows)
                    return compute_band(graph, task.start, task.end, band, task.in_rows, task.out_rows)

                with self._lock:
                    self._computing = (dep.plan_id, rid, time.time())
                try:
                    out, p = paced(run, emulation, abort=lambda dep=dep, rid=rid: not self._live(dep, rid))
                finally:
                    with self._lock:
                        self._computing = None
            except Exception as exc:  # a bad band or a broken model: report, keep serving
                log.exception("%s: task of stage %d failed", self.device, task.stage)
                with self._lock:
                    self._requests.pop((dep.plan_id, rid), None)
                    self._finished[(dep.plan_id, rid)] = None
                self._error(
                    self._owners.get(dep.plan_id), rid, f"compute failed: {exc!r}", "band", plan=dep.plan_id
                )
                continue
            self.computed += 1
            self.meter.add("compute", p.end - p.start)
            if not self._live(dep, rid):
                continue  # cancelled while it computed (and reported as such): the output is not wanted
            event = {"ev": "compute", "stage": task.stage, "ready": ready, "start": p.start, "end": p.end}
            self._record(dep, rid, event | {"cpu": p.cpu_s, "target": p.target_s, "flops": task.flops})
            for s in task.sends:
                try:
                    self._send(dep, rid, s, take_rows(out, task.out_rows, s.rows), p.end)
                except ValueError as exc:
                    self._error(
                        self._owners.get(dep.plan_id), rid, f"local hand-over failed: {exc}", plan=dep.plan_id
                    )

    # ---- radio thread ----------------------------------------------------------------------------
    def _radio_loop(self) -> None:
        sockets: dict[str, tuple[str, zmq.Socket]] = {}
        while (job := self._radio_q.get()) is not None:
            with self._lock:
                dep = self._plans.get(job.plan_id)
                emulation, peers, kernel = self._emulation, dict(self._peers), self._kernel_radio
            if dep is None or not self._live(dep, job.rid):
                continue
            timer = None if kernel else emulation  # on kernel-shaped links no timer holds the radio
            nxt = job.path[job.hop + 1]
            owner = self._owners.get(job.plan_id)
            transfer = next(self._transfers)
            try:
                sock = self._peer_socket(sockets, nxt, peers.get(nxt))
                nbytes = job.tensor.numel() * job.tensor.element_size()
                start = time.time()
                radio = timer.radio_time(nxt, nbytes, start) if timer else 0.0
                meta = {"plan": job.plan_id, "stage": job.stage, "path": list(job.path), "hop": job.hop + 1}
                if timer is not None:
                    meta["deliver_at"] = start + radio + timer.latency(nxt)
                if kernel:
                    meta["ack"] = transfer
                frames = encode(Header(Kind.BAND, job.rid, meta), [job.tensor], rows=[job.rows])
                sock.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
            except (zmq.ZMQError, ValueError, KeyError, KeyFileError) as exc:  # e.g. the next device is down
                self._error(owner, job.rid, f"send to {nxt} failed: {exc}", plan=job.plan_id, transient=True)
                continue
            progress = {"plan": job.plan_id, "id": transfer, "from": self.device, "to": nxt}
            progress |= {"src": job.path[0], "bytes": nbytes, "start": start}
            self._emit(owner, Header(Kind.PROGRESS, job.rid, progress | {"ev": "start"}))
            if kernel:
                done = self._await_ack(sock, job.rid, owner, progress, egress_counter(peers[nxt]), dep)
            else:
                done = self._on_air(job.rid, owner, progress, start + radio, timer, dep)
            end = time.time()
            self.meter.add("send", end - start)
            if not done:  # cancelled: the band's receiver drops it, the radio is free for what replaced it
                self._emit(owner, Header(Kind.PROGRESS, job.rid, progress | {"ev": "cut", "end": end}))
                continue
            self._emit(owner, Header(Kind.PROGRESS, job.rid, progress | {"ev": "end", "end": end}))
            event = {"ev": "tx", "stage": job.stage, "from": self.device, "to": nxt, "src": job.path[0]}
            event |= {"dst": job.path[-1], "bytes": nbytes, "queued": job.queued, "start": start, "end": end}
            event["arrive"] = meta.get("deliver_at", end)
            self._record(dep, job.rid, event)
        for _, sock in sockets.values():
            sock.close(linger=0)

    def _on_air(
        self, rid: int, owner, progress: dict, end: float, emulation: DeviceEmulation | None, dep
    ) -> bool:
        """Hold the radio until ``end``, reporting the bytes carried every ``TICK_S`` (a crawling
        transfer tells the controller its link's present rate at once); False if the attempt was
        cancelled meanwhile."""

        def cancelled() -> bool:
            return not self._live(dep, rid)

        start, tick = progress["start"], progress["start"] + TICK_S
        while tick < end and emulation is not None:
            if not sleep_until(tick, cancelled):
                return False
            sent = min(progress["bytes"], int(emulation.radio_bytes(progress["to"], start, tick)))
            self._emit(owner, Header(Kind.PROGRESS, rid, progress | {"ev": "tick", "sent": sent, "at": tick}))
            tick += TICK_S
        return sleep_until(end, cancelled)

    def _await_ack(
        self, sock: zmq.Socket, rid: int, owner, progress: dict, counter: EgressCounter | None, dep
    ) -> bool:
        """Hold the radio until the receiver has the whole band (its ACK of this transfer, or its ERROR
        about request ``rid``: it refused the band but holds it), reporting every ``TICK_S`` the bytes
        the link's interface has sent meanwhile; False if the attempt was cancelled meanwhile. Replies to
        earlier, cancelled transfers are dropped on the way."""
        base = counter.sent() if counter is not None else 0
        tick = progress["start"] + TICK_S
        while self._live(dep, rid) and not self._stop.is_set():
            if sock.poll(ABORT_POLL_S * 1000):
                try:
                    reply = recv(sock, flags=zmq.NOBLOCK, max_bytes=self.limits.max_message_bytes)
                except (zmq.Again, ProtocolError):
                    continue
                kind, meta = reply.header.kind, reply.header.meta
                if (kind == Kind.ACK and meta.get("ack") == progress["id"]) or (
                    kind == Kind.ERROR and reply.header.rid == rid
                ):
                    return True
            if counter is not None and (now := time.time()) >= tick:
                sent = min(progress["bytes"], max(0, counter.sent() - base))
                self._emit(
                    owner, Header(Kind.PROGRESS, rid, progress | {"ev": "tick", "sent": sent, "at": now})
                )
                tick = now + TICK_S
        return False

    def _peer_socket(
        self, sockets: dict[str, tuple[str, zmq.Socket]], device: str, endpoint: str | None
    ) -> zmq.Socket:
        if endpoint is None:
            raise ValueError(f"no endpoint for device {device!r}")
        known = sockets.get(device)
        if known is not None and known[0] == endpoint:
            return known[1]
        if known is not None:
            known[1].close(linger=0)
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.rcvhwm = 16  # peers only ever answer bad bands: never let replies pile up
        sock.maxmsgsize = 1 << 20  # ...and answers are small
        try:
            if self.curve_keys is not None:
                secure_client(sock, self.curve_keys, self.device, device)
            sock.connect(endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        sockets[device] = (endpoint, sock)
        return sock


def keep_freed_memory() -> None:
    """Make glibc keep freed activation buffers for reuse instead of returning them to the OS.

    By default buffers of more than a few MB are mmapped and unmapped on every request, so each
    request page-faults its activations in again (measured: ~20k faults and 15-25% more CPU time per
    VGG-16 stage than the same computation in a warm process). No-op where glibc is absent.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 << 20)  # the largest value glibc accepts
    libc.mallopt(m_trim_threshold, 1 << 30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.worker", description="Run one device's worker.")
    parser.add_argument(
        "--bind",
        required=True,
        action="append",
        help="endpoint to bind, e.g. tcp://0.0.0.0:5555 (port * = any); repeat to bind more (READY names the first)",
    )
    parser.add_argument("--device-id", required=True, help="this device's id in the cluster spec")
    parser.add_argument(
        "--model-file", type=Path, help="state_dict checkpoint (loaded memory-mapped, per unit)"
    )
    parser.add_argument(
        "--curve-keys",
        type=Path,
        help="CurveZMQ key directory holding DEVICE_ID.key_secret and authorized/ (runtime.security keygen)",
    )
    parser.add_argument(
        "--controller-key",
        default=CONTROLLER,
        help="name of the key (in authorized/) that controls this worker",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve a non-loopback endpoint without CURVE: anyone who reaches it controls the worker",
    )
    parser.add_argument("--parent-pid", type=int, help="exit when this process is no longer the parent")
    parser.add_argument("--log-level", default="WARNING")
    add_limit_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format=f"%(asctime)s worker {args.device_id} %(levelname)s %(message)s"
    )
    torch.set_num_threads(1)
    keep_freed_memory()
    if args.model_file is not None and not args.model_file.is_file():
        parser.exit(2, f"worker: error: model file {args.model_file} does not exist\n")
    try:
        worker = Worker(
            args.bind,
            args.device_id,
            model_file=args.model_file,
            curve_keys=args.curve_keys,
            controller_key=args.controller_key,
            insecure=args.insecure,
            parent_pid=args.parent_pid,
            limits=limits_from_arguments(args),
        )
    except (zmq.ZMQError, OSError, ValueError) as exc:  # a bad endpoint, a missing key, an insecure bind
        parser.exit(2, f"worker: error: cannot serve on {' '.join(args.bind)}: {exc}\n")
    # Shape inference on the meta device imports torch's meta kernels (seconds on a busy host): do it
    # now, or the first deployment would stall the I/O thread and the worker would look dead.
    LayerGraph.from_model(models.skeleton("tiny"), models.input_shape("tiny"))
    signal.signal(signal.SIGTERM, lambda *_: worker._stop.set())
    print(f"READY {worker.endpoint}", flush=True)  # the only line on stdout: LocalCluster waits for it
    worker.serve()


if __name__ == "__main__":
    main()
