"""The bounds a worker enforces on what others may make it hold, build or queue.

Every limit has a named default (``Limits()``) and a command-line flag (``add_arguments``), so a
device with more or less memory can be given its own. ``ByteBudget`` counts the bytes of received
tensors still alive in the worker, per sender and in total: a band is refused before it is buffered
when its sender's share is spent, and its bytes are given back when the worker lets go of it.
"""

from __future__ import annotations

import argparse
import threading
import weakref
from dataclasses import dataclass, fields

import torch

from runtime.transport import MAX_MESSAGE_BYTES, MiB


@dataclass(frozen=True)
class Limits:
    """A worker's resource limits (see each field's flag help)."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_input_elements: int = 1 << 22  # C x H x W of a model's input (4M: 16 MB of float32)
    max_batch: int = 16  # images per request
    max_plans_per_client: int = 16
    max_models: int = 2  # distinct (model, seed, input shape) built at once, including those in use
    max_open_requests: int = 1024
    max_queued: int = 256  # tasks waiting for the compute thread, hops for the radio, builds to do
    peer_budget_bytes: int = 64 * MiB  # received tensor bytes one sender may have alive here
    total_budget_bytes: int = 256 * MiB  # the same, all senders together
    max_hold_s: float = 3600.0  # an emulated arrival further ahead than this is refused


_HELP = {  # flag help per limit
    "max_message_bytes": "largest message (all frames together) accepted; one frame above it "
    "closes the sender's connection",
    "max_input_elements": "largest C*H*W of a deployed model's input",
    "max_batch": "most images in one request",
    "max_plans_per_client": "most plans one client (key, or connection without CURVE) may deploy",
    "max_models": "most model builds (model, seed, input shape) held at once",
    "max_open_requests": "most requests with state on this worker",
    "max_queued": "most tasks, hops or builds waiting in each queue",
    "peer_budget_bytes": "received tensor bytes one sender may have buffered here",
    "total_budget_bytes": "received tensor bytes all senders together may have buffered here",
    "max_hold_s": "longest an emulated arrival may be held (seconds)",
}


_ALIASES = {"max_message_bytes": ("--max-bytes",)}  # the flag's earlier name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--max-...``/``--...-bytes`` flag per limit, defaulting to ``Limits()``."""
    group = parser.add_argument_group("resource limits")
    for f in fields(Limits):
        flags = ["--" + f.name.replace("_", "-"), *_ALIASES.get(f.name, ())]
        kind = float if f.type == "float" else int
        group.add_argument(*flags, dest=f.name, type=_positive(kind), default=f.default, help=_HELP[f.name])


def from_arguments(args: argparse.Namespace) -> Limits:
    return Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})


def _positive(kind: type) -> callable:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


class ByteBudget:
    """Bytes of received tensors alive in the process, per sender and in total (thread-safe)."""

    def __init__(self, per_peer: int, total: int):
        self.per_peer, self.total = per_peer, total
        self._used: dict[object, int] = {}
        self._sum = 0
        self._lock = threading.Lock()

    def used(self, peer: object | None = None) -> int:
        with self._lock:
            return self._sum if peer is None else self._used.get(peer, 0)

    def charge(self, peer: object, tensors: list[torch.Tensor]) -> None:
        """Count ``tensors`` against ``peer`` until they are freed; ValueError if over budget."""
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        with self._lock:
            mine = self._used.get(peer, 0)
            if mine + nbytes > self.per_peer or self._sum + nbytes > self.total:
                raise ValueError(
                    f"buffer budget spent: this sender holds {mine} bytes here (limit {self.per_peer}), "
                    f"all senders {self._sum} (limit {self.total}); {nbytes} more refused"
                )
            self._used[peer] = mine + nbytes
            self._sum += nbytes
        for t in tensors:
            weakref.finalize(t, self._release, peer, t.numel() * t.element_size())

    def _release(self, peer: object, nbytes: int) -> None:
        with self._lock:
            left = self._used.get(peer, 0) - nbytes
            if left > 0:
                self._used[peer] = left
            else:
                self._used.pop(peer, None)
            self._sum -= nbytes
