"""The bounds a worker enforces on what others may make it hold, build or queue.

Every limit has a named default (``Limits()``) and a command-line flag (``add_arguments``), so a
device with more or less memory can be given its own. ``ByteBudget`` counts the bytes of received
tensors still alive in the worker, per sender and in total: a band is refused before it is buffered
when its sender's share is spent, and its bytes are given back when the worker lets go of it.
``builds_to_evict`` keeps the seeded model builds within a count and a byte budget: a build's size is
known from its meta-device skeleton, so one that cannot fit is refused before anything is allocated.

What libzmq bounds, and what it does not: ``max_message_bytes`` is set as ZMQ_MAXMSGSIZE, which libzmq
checks per *frame* as the frame's size arrives, dropping the connection without reading it. A
multipart message is delivered atomically, so libzmq holds all its frames before the worker sees the
first, and it bounds neither the frames of one message nor their sum (RCVHWM counts whole messages).
The whole-message limit is therefore enforced on receipt: the message is refused and freed at once.
A peer can thus make a worker hold, for a moment, as many bytes as it sends itself (never more); only
authentication bounds who may: under CURVE a client without an authorised key is refused at the
handshake, before any of its frames is read.
"""

from __future__ import annotations

import argparse
import itertools
import threading
import weakref
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, fields

import torch
from torch import nn

from runtime.transport import MAX_MESSAGE_BYTES, MiB
from runtime.zoo.base import ModelError


@dataclass(frozen=True)
class Limits:
    """A worker's resource limits (see each field's flag help)."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_input_elements: int = 1 << 22  # C x H x W of a model's input (4M: 16 MB of float32)
    max_batch: int = 16  # images per request
    max_plans_per_client: int = 16
    max_models: int = 2  # distinct (model, seed, input shape) built at once, including those in use
    # seeded weights held at once: every zoo model together (647 MiB), not two VGG-16 (528 MiB each)
    max_model_bytes: int = 768 * MiB
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
    "max_model_bytes": "most bytes of seeded model weights held at once, builds in use included; a build "
    "that does not fit is refused before it is allocated",
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
        group.add_argument(
            *flags, dest=f.name, type=positive_number(kind), default=f.default, help=_HELP[f.name]
        )


def from_arguments(args: argparse.Namespace) -> Limits:
    return Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})


def positive_number(kind: type) -> callable:
    """An argparse type: a ``kind`` (int or float) > 0, with a one-line error otherwise."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
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


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers; shapes alone decide it, so a meta-device skeleton
    tells what a build will allocate before anything is."""
    return sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))


def builds_to_evict(
    held: Mapping[Hashable, int], in_use: Collection, new_bytes: int, max_models: int, max_bytes: int
) -> list:
    """The builds to drop so that one more, of ``new_bytes``, fits within both limits.

    ``held`` maps each build, least recently used first, to its bytes; only builds no deployed plan
    uses (not in ``in_use``) may go, oldest first. When the builds in use leave no room, nothing is
    evicted and ``ModelError`` names the limit and its flag: the sender must retire a plan first.
    """
    kept = [nbytes for key, nbytes in held.items() if key in in_use]
    if len(kept) + 1 > max_models:
        raise ModelError(
            f"{len(kept)} model builds are in use by deployed plans (limit {max_models}, --max-models): "
            "retire a plan first"
        )
    if sum(kept) + new_bytes > max_bytes:
        raise ModelError(
            f"this model's weights ({new_bytes / MiB:.0f} MiB) do not fit beside the {sum(kept) / MiB:.0f} MiB "
            f"of the builds in use (limit {max_bytes / MiB:.0f} MiB, --max-model-bytes): retire a plan first"
        )
    count, total, evict = len(held) + 1, sum(held.values()) + new_bytes, []
    for key, nbytes in held.items():
        if count <= max_models and total <= max_bytes:
            break
        if key not in in_use:
            evict.append(key)
            count, total = count - 1, total - nbytes
    return evict
