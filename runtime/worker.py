"""A worker: one device of the cluster, running its share of every deployed plan.

``python -m runtime.worker --bind tcp://HOST:PORT [--bind ...] --device-id ID [--model-file F]
[--curve-keys DIR | --insecure] [--allow-model package.module:Class ...]``

The worker binds one ROUTER socket. The controller (a DEALER) configures it (peers' addresses,
emulation, power profile), deploys plans to it and hands the input image to the source; peers (DEALERs
of other workers) send it row bands. Four threads share the work:

- the I/O thread (this module) owns the ROUTER: it answers control messages at once (so heartbeats are
  answered while the device computes), holds emulated arrivals until their delivery time and files bands;
- the compute thread (``runtime/worker_requests.py``, with the rest of a request's way through the
  worker) runs tasks one at a time, in the order they become ready, paced by emulation;
- the radio thread (``runtime/radio.py``) sends hops one at a time, peer to peer, in the order they
  were queued (the device's one radio), and reports each transfer as it goes;
- the build thread (``runtime/worker_control.py``, with the CONFIG and DEPLOY handlers) builds the
  models of new deployments (``runtime/weights.py``: only the weights of the units this device runs are
  loaded), so the I/O thread keeps answering meanwhile.

What they share (plans, open requests, configuration) is ``runtime/worker_state.py``'s, under one lock.

A ``Deployment`` (``runtime/deployment.py``: one per plan) tells the worker its tasks, who sends it
which rows, what it sends to whom along which route, and which transfers it relays. Telemetry (one
TELEMETRY message per request per worker, once all its events for the request are done) and results go
back to the controller that deployed the plan.

Cancelling: a DEPLOY message may retire whole plans and cancel single attempts (``cancel``: [[plan,
request], ...], an attempt the controller restarted elsewhere). Either way the worker drops the
attempt's state, its queued computations and sends, cuts short the emulated compute or transfer it is in
the middle of, lets go of its bands held for their emulated arrival, and silently drops those still on
their way in: the abandoned attempt stops using the device's compute, radio and buffers at once. The
compute a dropped attempt did here (up to now for a computation it cuts short) is reported with the
DEPLOY's answer (PROGRESS, ``ev: compute``), so that its request's energy includes it.

Anything malformed (bad frames, wrong version, unknown plan or request, a plan naming an unknown
device) gets an ERROR reply or a log line (``runtime/inbound.py`` checks every message before it is
used), and the worker keeps serving.

Secure and bounded by default: a worker bound beyond loopback refuses to start without CURVE keys
unless ``--insecure`` (then it warns at start and in every PONG); under CURVE only the controller's key
configures and deploys, and a device's key only sends its own bands along the plan's routes
(``runtime.auth``). Every band is checked against the deployed plan (route, rows, shape, dtype) before
it is held or queued; received bytes count against per-sender budgets, queues, plans per client, input
size and model builds are bounded (``runtime.limits``: a named default and a flag each).
"""

from __future__ import annotations

import argparse
import ctypes
import heapq
import itertools
import logging
import math
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import torch
import zmq

from runtime import models
from runtime.auth import INSECURE_WARNING, Access, Sender, check_bind
from runtime.deployment import Deployment
from runtime.emulation import EnergyMeter
from runtime.fields import checked_int
from runtime.graph import LayerGraph
from runtime.inbound import Band
from runtime.limits import ByteBudget, Limits
from runtime.limits import add_arguments as add_limit_arguments
from runtime.limits import from_arguments as limits_from_arguments
from runtime.radio import Radio
from runtime.security import CONTROLLER, authorized_keys, secure_server
from runtime.transport import Header, Kind, Message, ProtocolError, encode, recv
from runtime.weights import WeightStore
from runtime.worker_control import WorkerControl
from runtime.worker_requests import RequestFlow
from runtime.worker_state import WorkerState

log = logging.getLogger("runtime.worker")

POLL_MS = 100  # the I/O loop wakes at least this often (parent check, shutdown)


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
        allowed_models: frozenset[str] = frozenset(),
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
        self.state = WorkerState(limits)
        self.weights = WeightStore(model_file, limits, self._models_in_use, allowed_models)
        self.budget = ByteBudget(limits.peer_budget_bytes, limits.total_budget_bytes)
        self.ctx = zmq.Context()
        self._auth = None
        self._bind_router(binds)
        self._outbox = self.ctx.socket(zmq.PULL)
        self._outbox.bind(f"inproc://outbox-{id(self)}")
        self._io_thread = threading.get_ident()
        self._local = threading.local()
        self._held: list[tuple[float, int, Band]] = []  # bands until their emulated arrival (I/O thread)
        self._seq = itertools.count()
        self.meter = EnergyMeter()
        self._start_threads()
        if insecure:
            log.warning(INSECURE_WARNING.format(endpoint=self.endpoint))

    def _bind_router(self, binds: list[str]) -> None:
        """Bind the ROUTER every peer and controller talks to; the first endpoint is the one reported."""
        try:
            self.router = self.ctx.socket(zmq.ROUTER)
            self.router.linger = 0
            self.router.router_mandatory = 1
            self.router.router_handover = 1
            self.router.maxmsgsize = (
                self.limits.max_message_bytes
            )  # per frame: libzmq drops a bigger one unread
            if self.curve_keys is not None:
                self._auth = secure_server(self.router, self.curve_keys, self.ctx, self.device)
            for i, endpoint in enumerate(binds):  # the first is reported (READY): the controller's
                self.router.bind(endpoint)
                if i == 0:
                    self.endpoint = self.router.last_endpoint.decode()
        except BaseException:  # a missing key or a bad endpoint: leave no socket behind
            self.ctx.destroy(linger=0)
            raise

    def _start_threads(self) -> None:
        """The radio, the request flow and the control handlers, and their threads (started by ``serve``)."""
        self._stop = threading.Event()
        self.radio = Radio(
            self.device,
            self.ctx,
            self.curve_keys,
            self.meter,
            state=self.state.air_state,
            live=self.state.live,
            emit=self._emit,
            error=self._error,
            record=self._record,
            stopping=self._stop,
            max_message_bytes=self.limits.max_message_bytes,
        )
        common = self.state, self.weights, self.limits
        self.flow = RequestFlow(
            self.device, *common, self.budget, self.meter, self.radio, self._record, self._emit, self._error
        )
        self.control = WorkerControl(self.device, self.boot, *common, self.meter, self._emit, self._error)
        self._threads = [
            threading.Thread(target=self.flow.compute_loop, name="compute", daemon=True),
            threading.Thread(target=self.radio.run, name="radio", daemon=True),
            threading.Thread(target=self.control.build_loop, name="build", daemon=True),
        ]

    # ---- I/O thread ----------------------------------------------------------------------------
    def serve(self) -> None:
        """Run until SHUTDOWN, SIGTERM (``stop``) or the death of the parent process."""
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

    def stop(self) -> None:
        """Make ``serve`` return (within ``POLL_MS``); safe from any thread or a signal handler."""
        self._stop.set()

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
        self.radio.stop()
        self.flow.stop()
        self.control.stop()
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
            band = self.flow.check_band(msg, sender)
            self.budget.charge(sender.owner, msg.tensors)  # checked first: nothing unwanted is held
            if "ack" in msg.header.meta:  # kernel-shaped link: the sender's radio waits for this
                ack = {"ack": checked_int(msg.header.meta["ack"], "ack")}
                self._emit(msg.peer, Header(Kind.ACK, msg.header.rid, ack))
            if band.deliver_at is not None and band.deliver_at > time.time():
                if len(self._held) >= self.limits.max_open_requests:
                    raise ValueError(f"cannot hold a band: {len(self._held)} held")
                heapq.heappush(self._held, (band.deliver_at, next(self._seq), band))
            else:
                self.flow.on_band(band)
        elif kind == Kind.INPUT:
            self.flow.on_input(msg, sender)
        elif kind == Kind.DEPLOY:
            self.control.on_deploy(msg, sender)
            self._drop_dead_bands()
        elif kind == Kind.CONFIG:
            self.control.on_config(msg, sender)
        elif kind == Kind.SHUTDOWN:
            self._emit(msg.peer, Header(Kind.ACK, msg.header.rid, {"device": self.device}))
            self._stop.set()
        else:
            raise ValueError(f"a worker does not accept {kind.value} messages")

    def status(self) -> dict[str, Any]:
        """What PONG reports to the controller: identity, load and meters."""
        plans, open_requests = self.state.load()
        return {
            "device": self.device,
            "boot": self.boot,
            "plans": plans,
            "open_requests": open_requests,
            "computed": self.flow.computed,
            "loaded_units": self.weights.loaded(),
            "loaded_bytes": self.weights.loaded_bytes(),
            "buffered_bytes": self.budget.used(),
            "rss_bytes": psutil.Process().memory_info().rss,
            "busy_s": dict(self.meter.seconds),
            "energy_j": self.meter.joules,
        }

    def _drop_dead_bands(self) -> None:
        """Let go of the held bands of attempts a DEPLOY just cancelled or whose plans it retired: they
        would be dropped only at their emulated arrival, which a collapsed link puts seconds or minutes
        away, their bytes counted against their sender's budget until then."""
        self._held = [(at, n, band) for at, n, band in self._held if self.state.live(band.dep, band.rid)]
        heapq.heapify(self._held)

    def _release_held(self) -> None:
        now = time.time()
        while self._held and self._held[0][0] <= now:
            band = heapq.heappop(self._held)[2]
            try:
                self.flow.on_band(band)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                self._error(band.peer, band.rid, f"band: {exc}", "band", plan=band.dep.plan_id)

    def _record(self, dep: Deployment, rid: int, event: dict[str, Any]) -> None:
        """Add one telemetry event; the last one expected flushes them to the controller."""
        if (flushed := self.state.record(dep, rid, event)) is not None:
            owner, events = flushed
            meta = {"plan": dep.plan_id, "device": self.device, "events": events}
            self._emit(owner, Header(Kind.TELEMETRY, rid, meta))

    def _models_in_use(self) -> set[tuple]:
        """The model builds deployed plans need: the weight store keeps them."""
        return {self.weights.key(d.model, d.seed, d.input_shape) for d in self.state.deployed()}


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
    parser.add_argument(
        "--allow-model",
        action="append",
        default=[],
        type=models.model_argument,
        help="a model of yours (package.module:Class) this worker may import and run; repeat for more",
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
            allowed_models=frozenset(args.allow_model),
        )
    except (zmq.ZMQError, OSError, ValueError) as exc:  # a bad endpoint, a missing key, an insecure bind
        parser.exit(2, f"worker: error: cannot serve on {' '.join(args.bind)}: {exc}\n")
    # Shape inference on the meta device imports torch's meta kernels (seconds on a busy host): do it
    # now, or the first deployment would stall the I/O thread and the worker would look dead.
    LayerGraph.from_model(models.skeleton("tiny"), models.input_shape("tiny"))
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    print(f"READY {worker.endpoint}", flush=True)  # the only line on stdout: LocalCluster waits for it
    worker.serve()


if __name__ == "__main__":
    main()
