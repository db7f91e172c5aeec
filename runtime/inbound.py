"""Checks of what reaches a worker from the network, before it holds, queues or applies any of it.

Each function takes one message (and the deployed plan it names) and returns its checked content, or
raises ValueError (``Refused`` for a sender outside its rights) naming what is wrong; the worker answers
with an ERROR and keeps serving.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from runtime.auth import Refused, Sender
from runtime.deployment import Deployment, Send
from runtime.emulation import DeviceEmulation, emulation_from_wire
from runtime.fields import checked_float, checked_int, checked_list, checked_str, is_endpoint
from runtime.graph import LayerGraph
from runtime.halo import Rows
from runtime.limits import Limits
from runtime.spec import PowerProfile
from runtime.transport import Message, rows_axis


@dataclass
class Band:
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


@dataclass(frozen=True)
class Config:
    """A checked CONFIG: where the peers are, how the device is emulated and powered."""

    peers: dict[str, str]
    emulation: DeviceEmulation | None
    kernel_radio: bool  # kernel network mode: the kernel shapes the links, no radio timer
    power: PowerProfile
    reset: bool  # drop the sender's own plans


def band_shape(graph: LayerGraph, boundary: int, rows: Rows) -> tuple[int, ...]:
    """Shape (without batch) of ``rows`` of a boundary's tensor, as bands carry them."""
    if rows[1] > graph.extent(boundary):
        raise ValueError(f"rows {list(rows)} beyond the {graph.extent(boundary)} of boundary {boundary}")
    shape = list(graph.boundary_shape(boundary))
    shape[rows_axis(len(shape) + 1)] = rows[1] - rows[0]
    return tuple(shape)


def check_band(
    msg: Message, sender: Sender, dep: Deployment, graph: LayerGraph, device: str, limits: Limits
) -> Band:
    """A band the deployed plan ``dep`` expects at ``device``, from the device it names: its route, rows,
    shape and dtype are the plan's."""
    meta = msg.header.meta
    path = tuple(checked_str(d, "path device") for d in checked_list(meta.get("path"), "path"))
    hop = checked_int(meta.get("hop"), "hop", 1, max(1, len(path) - 1))
    if len(path) < 2 or path[hop] != device:
        raise ValueError(f"band routed along {list(path)} reached {device} at hop {hop}")
    if sender.name is not None and sender.name != path[hop - 1]:
        raise Refused(f"key {sender.name!r} sends a band as {path[hop - 1]!r}")
    stage = checked_int(meta.get("stage"), "stage", 0, dep.n_stages)
    if len(msg.tensors) != 1 or msg.specs[0].rows is None:
        raise ValueError("a band carries exactly one tensor with its rows")
    rows, tensor = msg.specs[0].rows, msg.tensors[0]
    if hop < len(path) - 1:  # a relay: only along a route of the plan
        if Send(stage, rows, path) not in dep.relays:
            raise ValueError(f"{device} relays no rows {list(rows)} along {list(path)} in plan {dep.plan_id}")
    elif (path[0], rows) not in dep.expected_pieces(stage):
        raise ValueError(f"{device} expects no rows {list(rows)} of stage {stage} from {path[0]!r}")
    want = band_shape(graph, dep.bounds[stage], rows)
    if tensor.dtype != torch.float32 or tuple(tensor.shape[1:]) != want:
        raise ValueError(
            f"rows {list(rows)} of stage {stage} must be float32 (N, {', '.join(map(str, want))})"
        )
    if not 1 <= len(tensor) <= limits.max_batch:
        raise ValueError(f"a band holds 1 to {limits.max_batch} images")
    deliver_at = meta.get("deliver_at")
    if deliver_at is not None:
        deliver_at = checked_float(deliver_at, "deliver_at")
        if deliver_at > time.time() + limits.max_hold_s:
            raise ValueError(f"cannot hold a band for more than {limits.max_hold_s} s")
    return Band(dep, msg.header.rid, stage, rows, path, hop, tensor, msg.peer, deliver_at)


def check_input(msg: Message, dep: Deployment, device: str, limits: Limits) -> torch.Tensor:
    """The image batch of an INPUT for plan ``dep``, whose source ``device`` must be."""
    if dep.device != dep.source:
        raise ValueError(f"{device} is not the source of plan {dep.plan_id}")
    if (
        len(msg.tensors) != 1
        or msg.tensors[0].dim() != 4
        or tuple(msg.tensors[0].shape[1:]) != dep.input_shape
        or not 1 <= len(msg.tensors[0]) <= limits.max_batch
    ):
        raise ValueError(
            f"input must be one float tensor of shape (N, {', '.join(map(str, dep.input_shape))}), "
            f"N <= {limits.max_batch}"
        )
    x = msg.tensors[0]
    if x.dtype != torch.float32:
        raise ValueError("input must be float32")
    return x


def check_config(msg: Message, device: str) -> Config:
    """The configuration a CONFIG for ``device`` carries."""
    meta = msg.header.meta
    if meta.get("device") != device:
        raise ValueError(f"configuration for device {meta.get('device')!r} sent to {device!r}")
    peers = meta.get("peers")
    if not isinstance(peers, dict) or not all(map(is_endpoint, peers.values())):
        raise ValueError("peers must map device ids to tcp:// or ipc:// endpoints")
    power = [checked_float(p, "power") for p in checked_list(meta.get("power"), "power")]
    if len(power) != 4:
        raise ValueError("power must be [compute, transmit, receive, idle] watts")
    radio = meta.get("radio", "timer")
    if radio not in ("timer", "kernel"):
        raise ValueError(f"radio must be 'timer' or 'kernel', got {repr(radio)[:40]}")
    emulation = meta.get("emulation")
    emulation = None if emulation is None else emulation_from_wire(emulation, msg.tensors)
    if emulation is not None and set(emulation.links) - set(peers):
        raise ValueError("emulated links name devices without an endpoint")
    return Config(dict(peers), emulation, radio == "kernel", PowerProfile(*power), bool(meta.get("reset")))


def check_abandon(meta: dict[str, Any]) -> tuple[list[int], list[tuple[int, int]]]:
    """The plans a DEPLOY retires and the attempts ``(plan, request)`` it cancels."""
    retire = [checked_int(p, "retire") for p in checked_list(meta.get("retire", []), "retire")]
    cancel = []
    for c in checked_list(meta.get("cancel", []), "cancel"):
        if not (isinstance(c, list) and len(c) == 2):
            raise ValueError("a cancelled attempt must be [plan, request]")
        cancel.append((checked_int(c[0], "cancel plan"), checked_int(c[1], "cancel request")))
    return retire, cancel
