"""The controller's connections to its workers: one socket each, heartbeats, liveness and clocks.

Every ``heartbeat_s`` the controller pings every worker; a worker silent for ``dead_after_s`` (or one
that answers with a new boot id: a restarted process has lost its state) is marked down and queued in
``newly_down`` for the controller to recover from. Each PING/PONG is also an NTP-style exchange that
estimates the worker's clock offset (``runtime/clock.py``). A worker is up once it acknowledged its
configuration; one that answers again after it was down must be configured again.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from runtime.clock import ClockOffset
from runtime.security import secure_client
from runtime.transport import Header, Kind, Message, ProtocolError, recv, send

log = logging.getLogger("runtime.controller")

DEAD_AFTER_S = 2.0  # a worker silent this long is marked down (the default): what finding a failure takes


@dataclass(frozen=True)
class WorkerStatus:
    up: bool
    endpoint: str
    boot: str | None
    last_seen: float | None
    stats: dict[str, Any]
    clock_offset_s: float = 0.0  # its clock minus the controller's, as estimated


@dataclass
class Peer:
    """One worker as the controller sees it."""

    endpoint: str
    socket: zmq.Socket
    up: bool = False
    boot: str | None = None
    last_seen: float | None = None
    silent_since: float | None = None  # first unanswered ping
    configuring: bool = False  # CONFIG sent, not yet acknowledged
    config_error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    clock: ClockOffset = field(default_factory=ClockOffset)
    answered: int = -1  # the newest ping round whose PONG ``stats`` holds


class WorkerConnections:
    """A DEALER socket per worker, with heartbeats and failure detection (see the module docstring).

    ``on_down(device)`` is called as a worker is marked down.
    """

    def __init__(
        self,
        endpoints: Mapping[str, str],
        identity: bytes,
        *,
        curve_keys: str | Path | None,
        curve_name: str,
        heartbeat_s: float,
        dead_after_s: float,
        max_message_bytes: int,
        on_down: Callable[[str], None],
    ):
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.max_message_bytes = max_message_bytes
        self.on_down = on_down
        self.failures: list[tuple[float, str]] = []  # (time, device) of every worker found down
        self.newly_down: list[str] = []  # found down, not yet recovered from
        self.peers: dict[str, Peer] = {}
        self._last_ping = 0.0
        self._pings: dict[int, float] = {}  # sequence number of a recent ping round -> when it was sent
        self._ping_seq = itertools.count(1)
        self._ctx = zmq.Context()
        self._poller = zmq.Poller()
        self._by_socket: dict[zmq.Socket, str] = {}
        try:
            for dev, endpoint in endpoints.items():
                sock = self._ctx.socket(zmq.DEALER)
                sock.linger = 0
                sock.sndtimeo = 100
                sock.maxmsgsize = max_message_bytes
                sock.identity = identity
                if curve_keys is not None:
                    secure_client(sock, curve_keys, curve_name, dev)
                sock.connect(endpoint)
                self.peers[dev] = Peer(endpoint, sock)
                self._by_socket[sock] = dev
                self._poller.register(sock, zmq.POLLIN)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._ctx.destroy(linger=0)

    @property
    def available(self) -> frozenset[str]:
        """Devices whose workers are up."""
        return frozenset(d for d, p in self.peers.items() if p.up)

    def status(self) -> dict[str, WorkerStatus]:
        """Last known status of every worker (stats as reported in its last PONG)."""
        return {
            d: WorkerStatus(p.up, p.endpoint, p.boot, p.last_seen, dict(p.stats), p.clock.seconds)
            for d, p in self.peers.items()
        }

    def shutdown(self, timeout_s: float) -> None:
        """Ask every live worker to exit and wait (up to ``timeout_s``) for their acknowledgements."""
        asked = set(self.available)
        for d in asked:
            self.send(d, Header(Kind.SHUTDOWN, 0))
        deadline = time.time() + timeout_s
        while asked and time.time() < deadline:
            for dev, msg in self.receive(0.05):
                if msg.header.kind == Kind.ACK:
                    asked.discard(dev)
                    self.peers[dev].up = False

    def send(self, dev: str, header: Header, tensors=()) -> bool:
        try:
            send(self.peers[dev].socket, header, tensors)
            return True
        except zmq.Again:  # the worker's queue is full or it was never reachable
            return False

    def receive(self, timeout_s: float) -> list[tuple[str, Message]]:
        """The messages that arrive within ``timeout_s`` (each marks its worker as heard from)."""
        out = []
        for sock, _ in self._poller.poll(max(0, int(timeout_s * 1000))):
            dev = self._by_socket[sock]
            while True:
                try:
                    msg = recv(sock, flags=zmq.NOBLOCK, max_bytes=self.max_message_bytes)
                except zmq.Again:
                    break
                except ProtocolError as exc:
                    log.warning("bad message from worker %s: %s", dev, exc)
                    continue
                peer = self.peers[dev]
                peer.last_seen, peer.silent_since = time.time(), None
                out.append((dev, msg))
        return out

    def heartbeat(self, now: float) -> None:
        """Ping every worker if a heartbeat is due."""
        if now - self._last_ping >= self.heartbeat_s:
            self.ping_all(now)

    def ping_all(self, now: float) -> int:
        """Ping every worker; the round's number (returned) comes back in each PONG, with the worker's
        clock."""
        self._last_ping = now
        seq = next(self._ping_seq)
        self._pings[seq] = now
        if len(self._pings) > 64:  # a PONG older than this is too late to time anything
            del self._pings[next(iter(self._pings))]
        for d, p in self.peers.items():
            self.send(d, Header(Kind.PING, seq))
            if p.up and p.silent_since is None:
                p.silent_since = now
        return seq

    def answered(self, round_: int) -> bool:
        """Whether every worker that is up has answered ping round ``round_``."""
        return not any(p.up and p.answered < round_ for p in self.peers.values())

    def mark_silent_down(self) -> None:
        """Mark down the workers silent for longer than ``dead_after_s``."""
        now = time.time()
        for d, p in self.peers.items():
            if p.up and p.silent_since is not None and now - p.silent_since > self.dead_after_s:
                self.mark_down(d, f"silent for {now - p.silent_since:.1f} s")

    def mark_down(self, dev: str, why: str) -> None:
        log.warning("worker %s is down (%s)", dev, why)
        peer = self.peers[dev]
        peer.up, peer.silent_since = False, None
        peer.clock.reset()  # it may come back as another process, on another host
        self.on_down(dev)
        self.failures.append((time.time(), dev))
        self.newly_down.append(dev)

    def on_pong(self, dev: str, msg: Message) -> bool:
        """Take a PONG's stats and clock reading; returns whether the worker must be configured again
        (it answers after it was down)."""
        meta, peer = msg.header.meta, self.peers[dev]
        peer.stats, peer.answered = meta, max(peer.answered, msg.header.rid)
        if peer.up and meta.get("boot") != peer.boot:
            self.mark_down(dev, "restarted: its state is lost")
        sent, clock = self._pings.get(msg.header.rid), meta.get("clock")
        if sent is not None and type(clock) is float:
            peer.clock.add(sent, clock, peer.last_seen)
        if not peer.up and not peer.configuring:
            log.warning("worker %s answers again: configuring it", dev)
            return True
        return False
