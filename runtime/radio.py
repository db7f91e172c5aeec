"""A worker's radio: one thread that sends hops one at a time, in the order they were queued.

Each hop goes peer to peer to the next device of its route (bands never pass through the controller).
An emulated radio holds itself for the time the link's trace needs to carry the band; in kernel network
mode (runtime/kernel_network.py) no timer shapes a hop: the radio is held until the receiver
acknowledges the band. A transfer is reported as it happens (PROGRESS: start, end, or cut short, and
every ``TICK_S`` of a longer one the bytes carried so far), so the controller sees a link slow down
while the request that crosses it is still running. A hop whose attempt is cancelled stops at once.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import zmq

from runtime.deployment import Deployment
from runtime.emulation import ABORT_POLL_S, DeviceEmulation, EnergyMeter, sleep_until
from runtime.halo import Rows
from runtime.kernel_network import EgressCounter, egress_counter
from runtime.security import KeyFileError, secure_client
from runtime.transport import Header, Kind, MiB, ProtocolError, encode, recv

TICK_S = 0.25  # a transfer longer than this reports the bytes carried so far at this interval
MAX_REPLY_BYTES = MiB  # peers only ever answer a band with a short ACK or ERROR


@dataclass
class Hop:
    """A hop waiting for the radio: send ``tensor`` (rows of stage ``stage``) to ``path[hop + 1]``."""

    plan_id: int
    rid: int
    stage: int
    rows: Rows
    path: tuple[str, ...]
    hop: int
    tensor: torch.Tensor
    queued: float


@dataclass(frozen=True)
class AirState:
    """What the radio needs to know, when a hop's turn comes, about the plan and the device's links."""

    dep: Deployment | None  # None: the plan was retired meanwhile
    emulation: DeviceEmulation | None
    peers: dict[str, str]
    kernel: bool  # kernel network mode: the kernel shapes the link, the receiver's ACK ends the hop
    owner: bytes | None  # the controller the plan reports to


class Radio:
    """The device's one radio (see the module docstring); the worker queues hops with ``put``.

    The worker passes in how to read its state and how to report: ``state(plan_id)``, ``live(dep, rid)``
    (the attempt still matters), ``emit(owner, header)``, ``error(owner, rid, message, **extra)`` and
    ``record(dep, rid, event)`` (one telemetry event); ``stopping`` is set when the worker shuts down.
    """

    def __init__(
        self,
        device: str,
        ctx: zmq.Context,
        curve_keys: Path | None,
        meter: EnergyMeter,
        *,
        state: Callable[[int], AirState],
        live: Callable[[Deployment, int], bool],
        emit: Callable[..., None],
        error: Callable[..., None],
        record: Callable[[Deployment, int, dict[str, Any]], None],
        stopping: threading.Event,
        max_message_bytes: int,
    ):
        self.device, self.ctx, self.curve_keys, self.meter = device, ctx, curve_keys, meter
        self._state, self._live, self._emit, self._error, self._record = state, live, emit, error, record
        self.max_message_bytes = max_message_bytes
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._transfers = itertools.count()  # ids of this radio's transfers in PROGRESS messages
        self._stopping = stopping  # the worker is shutting down: a hop waiting for its ACK gives up

    def put(self, hop: Hop) -> None:
        self._queue.put(hop)

    def waiting(self) -> int:
        """Hops queued for the radio."""
        return self._queue.qsize()

    def stop(self) -> None:
        """End ``run`` once the hop on the air is done (the worker sets ``stopping`` first)."""
        self._queue.put(None)

    def run(self) -> None:
        """The radio thread: send queued hops until ``stop``."""
        sockets: dict[str, tuple[str, zmq.Socket]] = {}
        while (job := self._queue.get()) is not None:
            air = self._state(job.plan_id)
            if air.dep is not None and self._live(air.dep, job.rid):
                self._carry(job, air, sockets)
            # let go of the band before waiting for the next hop: a relay's counts against its sender's
            # budget while alive, and a plan rescued off this device never queues another
            del job
        for _, sock in sockets.values():
            sock.close(linger=0)

    def _carry(self, job: Hop, air: AirState, sockets: dict[str, tuple[str, zmq.Socket]]) -> None:
        """Send one hop, hold the radio for its transfer and report it."""
        timer = None if air.kernel else air.emulation  # on kernel-shaped links no timer holds the radio
        nxt, owner, dep = job.path[job.hop + 1], air.owner, air.dep
        transfer = next(self._transfers)
        try:
            sock = self._peer_socket(sockets, nxt, air.peers.get(nxt))
            _drop_replies(sock)
            nbytes = job.tensor.numel() * job.tensor.element_size()
            start = time.time()
            radio = timer.radio_time(nxt, nbytes, start) if timer else 0.0
            meta = {"plan": job.plan_id, "stage": job.stage, "path": list(job.path), "hop": job.hop + 1}
            if timer is not None:
                meta["deliver_at"] = start + radio + timer.latency(nxt)
            if air.kernel:
                meta["ack"] = transfer
            frames = encode(Header(Kind.BAND, job.rid, meta), [job.tensor], rows=[job.rows])
            sock.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        except (zmq.ZMQError, ValueError, KeyError, KeyFileError) as exc:  # e.g. the next device is down
            self._error(owner, job.rid, f"send to {nxt} failed: {exc}", plan=job.plan_id, transient=True)
            return
        progress = {"plan": job.plan_id, "id": transfer, "from": self.device, "to": nxt}
        progress |= {"src": job.path[0], "bytes": nbytes, "start": start}
        self._emit(owner, Header(Kind.PROGRESS, job.rid, progress | {"ev": "start"}))
        if air.kernel:
            done = self._await_ack(sock, job.rid, owner, progress, egress_counter(air.peers[nxt]), dep)
        else:
            done = self._on_air(job.rid, owner, progress, start + radio, timer, dep)
        end = time.time()
        self.meter.add("send", end - start)
        if not done:  # cancelled: the band's receiver drops it, the radio is free for what replaced it
            self._emit(owner, Header(Kind.PROGRESS, job.rid, progress | {"ev": "cut", "end": end}))
            return
        self._emit(owner, Header(Kind.PROGRESS, job.rid, progress | {"ev": "end", "end": end}))
        event = {"ev": "tx", "stage": job.stage, "from": self.device, "to": nxt, "src": job.path[0]}
        event |= {"dst": job.path[-1], "bytes": nbytes, "queued": job.queued, "start": start, "end": end}
        event["arrive"] = meta.get("deliver_at", end)
        self._record(dep, job.rid, event)

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
        the link's interface has sent meanwhile, and once more as soon as it has sent them all; False if
        the attempt was cancelled meanwhile. Replies to earlier, cancelled transfers are dropped on the way.

        The ACK comes back over the link's other direction, behind whatever the receiver is sending this
        way: mid-collapse a 28 kB band that had left in 0.11 s waited 0.15 s more for its ACK, and read
        as a link at half its rate. What the link carried ends when the last byte has left; the wait
        after that is not a rate (the report of the transfer's end then adds no bytes to measure).
        """
        base = counter.sent() if counter is not None else 0
        tick = progress["start"] + TICK_S
        through = counter is None  # every byte has left the interface: only the ACK is awaited
        while self._live(dep, rid) and not self._stopping.is_set():
            if sock.poll(ABORT_POLL_S * 1000):
                try:
                    reply = recv(sock, flags=zmq.NOBLOCK, max_bytes=self.max_message_bytes)
                except (zmq.Again, ProtocolError):
                    continue
                kind, meta = reply.header.kind, reply.header.meta
                if (kind == Kind.ACK and meta.get("ack") == progress["id"]) or (
                    kind == Kind.ERROR and reply.header.rid == rid
                ):
                    return True
            if through:
                continue
            now, sent = time.time(), min(progress["bytes"], max(0, counter.sent() - base))
            through = sent == progress["bytes"]
            if through or now >= tick:
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
        sock.maxmsgsize = MAX_REPLY_BYTES
        try:
            if self.curve_keys is not None:
                secure_client(sock, self.curve_keys, self.device, device)
            sock.connect(endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        sockets[device] = (endpoint, sock)
        return sock


def _drop_replies(sock: zmq.Socket) -> None:
    """Read and drop what a peer answered earlier bands (an ERROR for a band of a plan it no longer
    holds, e.g. one queued for it while it was down and restarting). Only a kernel-shaped radio waits for
    those answers; left unread, at ``rcvhwm`` of them the socket stops delivering bands to that peer."""
    while sock.poll(0):
        try:
            recv(sock, flags=zmq.NOBLOCK, max_bytes=MAX_REPLY_BYTES)
        except (zmq.Again, ProtocolError):
            return
