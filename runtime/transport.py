"""Wire protocol shared by workers and the controller.

A message is one ZeroMQ multipart: frame 0 is a small msgpack header, frames 1..n are the raw
C-order, little-endian buffers of the tensors it carries, sent zero-copy. Header on the wire::

    {"v": 1, "rid": 7, "kind": "band", "meta": {...},
     "tensors": [{"dtype": "float32", "shape": [1, 16, 5, 32], "rows": [10, 15], "name": "x"}]}

`rows` (optional) places a band in the full tensor along `rows_axis(ndim)`. Every field and frame
size is checked before a tensor is built, so a malformed or hostile message becomes a
`ProtocolError` (carrying the sender and request id when known, for an error reply) and never a
crash or a huge allocation. Nothing is pickled. On a ROUTER socket `recv` also returns the sender
identity and `send(..., peer=...)` routes the reply; peers are DEALERs (no empty delimiter frame).
Received tensors view the zmq frame memory (copied only when read-only or misaligned).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import torch
import zmq

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MiB = 1 << 20
MAX_MESSAGE_BYTES = 64 * MiB  # the one default limit on all frames of one message together
MAX_ELEMENTS = 1 << 28  # per tensor
MAX_TENSORS = 256
MAX_DIMS = 8
MAX_META_DEPTH = 16
MAX_RID = (1 << 63) - 1

_DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    name: (getattr(torch, name), np.dtype(name).newbyteorder("<"))
    for name in ("float32", "float16", "int64", "int32", "uint8")
}
_NAME_OF_TORCH = {t: name for name, (t, _) in _DTYPES.items()}
_NAME_OF_NUMPY = {n: name for name, (_, n) in _DTYPES.items()}
_HEADER_KEYS = {"v", "rid", "kind", "meta", "tensors"}
_SPEC_KEYS = {"dtype", "shape", "rows", "name"}
_PLAIN = (type(None), bool, int, float, str, bytes)


class ProtocolError(ValueError):
    """A message violates the protocol; `rid`/`peer` are set when known so a reply can be sent."""

    def __init__(self, message: str, *, rid: int | None = None, peer: bytes | None = None):
        super().__init__(message)
        self.rid = rid
        self.peer = peer


class Kind(str, enum.Enum):
    """The closed set of message kinds; anything else is rejected on receipt."""

    DEPLOY = "deploy"  # controller -> worker: model, stage and routing for a plan
    DEPLOY_OK = "deploy_ok"  # worker -> controller: deployment ready
    CONFIG = "config"  # controller -> worker: speed factor, link schedule, power profile
    ACK = "ack"  # generic success reply (config, shutdown)
    INPUT = "input"  # source -> stage-0 worker: input band
    BAND = "band"  # worker -> worker: rows the next stage needs
    RESULT = "result"  # last stage -> sink / controller
    ERROR = "error"  # reply to a failed request; meta["message"] says why
    HEARTBEAT = "heartbeat"  # worker -> controller: liveness
    PING = "ping"
    PONG = "pong"
    TELEMETRY = "telemetry"  # worker -> controller: timings, bytes, energy
    PROGRESS = "progress"  # worker -> controller: a transfer started, ended or was cut, as it happens
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class TensorSpec:
    """Describes one buffer frame."""

    dtype: str
    shape: tuple[int, ...]
    rows: tuple[int, int] | None = None
    name: str | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _DTYPES[self.dtype][1].itemsize


@dataclass
class Header:
    """Frame 0 without the tensor list (built from the tensors); `v` is always PROTOCOL_VERSION."""

    kind: Kind
    rid: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Message:
    header: Header
    tensors: list[torch.Tensor]
    specs: list[TensorSpec]
    peer: bytes | None = None  # sender identity, set by `recv` on a ROUTER socket
    user_id: str | None = None  # the sender's ZAP User-Id (its CURVE public key, z85), if authenticated


def rows_axis(ndim: int) -> int:
    """Axis `rows` indexes: height (-2) of feature maps (ndim >= 3), features (-1) of flat ones."""
    return -2 if ndim >= 3 else -1


def _int(x: Any, what: str, hi: int) -> int:
    if type(x) is not int or not 0 <= x <= hi:
        raise ProtocolError(f"{what} must be an int in [0, {hi}], got {repr(x)[:60]}")
    return x


def _check_keys(d: Any, what: str, allowed: set[str], required: set[str]) -> None:
    if not isinstance(d, dict):
        raise ProtocolError(f"{what} must be a map, got {type(d).__name__}")
    if missing := required - d.keys():
        raise ProtocolError(f"{what} lacks field(s) {sorted(missing)}")
    if extra := d.keys() - allowed:
        raise ProtocolError(f"{what} has unknown field(s) {sorted(map(str, extra))[:5]}")


def _check_meta(meta: Any) -> None:
    stack = [(meta, 0)]
    while stack:
        obj, depth = stack.pop()
        if depth > MAX_META_DEPTH:
            raise ProtocolError(f"meta is nested deeper than {MAX_META_DEPTH}")
        if isinstance(obj, dict):
            if not all(type(k) is str for k in obj):
                raise ProtocolError("meta map keys must be strings")
            stack.extend((v, depth + 1) for v in obj.values())
        elif isinstance(obj, list):
            stack.extend((v, depth + 1) for v in obj)
        elif not isinstance(obj, _PLAIN):
            raise ProtocolError(f"meta holds an unsupported value of type {type(obj).__name__}")


def _parse_spec(d: Any, i: int) -> TensorSpec:
    what = f"tensor {i}"
    _check_keys(d, what, _SPEC_KEYS, {"dtype", "shape"})
    if not isinstance(d["dtype"], str) or d["dtype"] not in _DTYPES:
        raise ProtocolError(f"{what}: dtype {repr(d['dtype'])[:40]} not in {sorted(_DTYPES)}")
    shape = d["shape"]
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise ProtocolError(f"{what}: shape must be a list of at most {MAX_DIMS} ints")
    shape = tuple(_int(s, f"{what}: shape entry", MAX_ELEMENTS) for s in shape)
    if math.prod(shape) > MAX_ELEMENTS:
        raise ProtocolError(f"{what}: shape {list(shape)} exceeds {MAX_ELEMENTS} elements")
    rows = d.get("rows")
    if rows is not None:
        if not isinstance(rows, list) or len(rows) != 2 or not shape:
            raise ProtocolError(f"{what}: rows must be [lo, hi] on a tensor of rank >= 1")
        lo, hi = (_int(r, f"{what}: rows bound", MAX_RID) for r in rows)
        if hi - lo != shape[rows_axis(len(shape))]:
            raise ProtocolError(f"{what}: rows [{lo}, {hi}) do not match shape {list(shape)}")
        rows = (lo, hi)
    name = d.get("name")
    if name is not None and not isinstance(name, str):
        raise ProtocolError(f"{what}: name must be a string")
    return TensorSpec(d["dtype"], shape, rows, name)


def _parse_header(buf: memoryview) -> tuple[Header, list[TensorSpec]]:
    if buf.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(f"header frame is {buf.nbytes} bytes, limit {MAX_HEADER_BYTES}")
    try:
        d = msgpack.unpackb(
            buf, raw=False, max_str_len=MAX_HEADER_BYTES, max_bin_len=MAX_HEADER_BYTES,
            max_array_len=4096, max_map_len=1024, max_ext_len=0,
        )  # fmt: skip
    except Exception as e:  # msgpack raises many types (ValueError, StackError, ExtraData...)
        raise ProtocolError(f"header is not valid msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(d, dict) or "v" not in d:
        raise ProtocolError("header must be a map with a protocol version 'v'")
    if type(d["v"]) is not int or d["v"] != PROTOCOL_VERSION:
        got = repr(d["v"])[:20]
        raise ProtocolError(f"protocol version mismatch: got {got}, want {PROTOCOL_VERSION}")
    rid = d.get("rid") if type(d.get("rid")) is int and 0 <= d["rid"] <= MAX_RID else None  # replyable
    try:
        _check_keys(d, "header", _HEADER_KEYS, _HEADER_KEYS)
        _int(d["rid"], "rid", MAX_RID)
        if not isinstance(d["kind"], str) or d["kind"] not in Kind._value2member_map_:
            raise ProtocolError(f"unknown kind {repr(d['kind'])[:40]}")
        if not isinstance(d["meta"], dict):
            raise ProtocolError("meta must be a map")
        _check_meta(d["meta"])
        tensors = d["tensors"]
        if not isinstance(tensors, list) or len(tensors) > MAX_TENSORS:
            raise ProtocolError(f"tensors must be a list of at most {MAX_TENSORS} specs")
        specs = [_parse_spec(t, i) for i, t in enumerate(tensors)]
    except ProtocolError as e:
        e.rid = rid
        raise
    return Header(Kind(d["kind"]), d["rid"], d["meta"]), specs


def _as_buffer(frame: Any) -> memoryview:
    try:
        view = frame.buffer if isinstance(frame, zmq.Frame) else memoryview(frame)
        return view.cast("B") if view.nbytes else memoryview(b"")
    except (TypeError, ValueError):
        raise ProtocolError(f"frame is not a contiguous buffer: {type(frame).__name__}") from None


def _to_tensor(buf: memoryview, spec: TensorSpec) -> torch.Tensor:
    torch_dtype, np_dtype = _DTYPES[spec.dtype]
    if buf.nbytes == 0:
        return torch.empty(spec.shape, dtype=torch_dtype)
    arr = np.frombuffer(buf, dtype=np_dtype)  # zero-copy view of the frame
    if not (arr.flags.writeable and arr.flags.aligned):
        # torch warns on read-only memory; zmq packs small frames at unaligned offsets
        arr = arr.copy()
    return torch.from_numpy(arr).reshape(spec.shape)


def decode(frames: Sequence[Any], *, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Validate header and frame sizes, then view each buffer as a tensor (zero-copy if it can)."""
    if not frames:
        raise ProtocolError("empty message")
    bufs = [_as_buffer(f) for f in frames]
    header, specs = _parse_header(bufs[0])
    try:
        if len(bufs) - 1 != len(specs):
            raise ProtocolError(f"header lists {len(specs)} tensors, {len(bufs) - 1} frames follow")
        if (total := sum(b.nbytes for b in bufs)) > max_bytes:
            raise ProtocolError(f"message is {total} bytes, limit {max_bytes}")
        for i, (buf, spec) in enumerate(zip(bufs[1:], specs, strict=True)):
            if buf.nbytes != spec.nbytes:
                raise ProtocolError(
                    f"tensor {i} ({spec.name or 'unnamed'}): frame has {buf.nbytes} bytes, "
                    f"{spec.dtype}{list(spec.shape)} needs {spec.nbytes}"
                )
    except ProtocolError as e:
        e.rid = header.rid
        raise
    return Message(header, [_to_tensor(b, s) for b, s in zip(bufs[1:], specs, strict=True)], specs)


def _as_array(t: torch.Tensor | np.ndarray, i: int) -> np.ndarray:
    a = None
    if isinstance(t, torch.Tensor) and t.dtype in _NAME_OF_TORCH:
        a = t.detach().cpu().contiguous().numpy()  # no copy when already contiguous on the CPU
    elif isinstance(t, np.ndarray):
        a = np.ascontiguousarray(t)
    if a is None or a.dtype not in _NAME_OF_NUMPY:
        kind = f"{type(t).__name__} of dtype {getattr(t, 'dtype', None)}"
        raise ProtocolError(f"tensor {i}: {kind} is not one of {sorted(_DTYPES)}")
    return a


def encode(
    header: Header,
    tensors: Sequence[torch.Tensor | np.ndarray] = (),
    *,
    rows: Sequence[tuple[int, int] | None] | None = None,
    names: Sequence[str | None] | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> list[bytes | memoryview]:
    """Frames for one message; tensor frames alias the tensors (do not mutate them until sent).

    The header is checked by the same code as `decode`, so nothing the receiver rejects is sent.
    """
    rows = [None] * len(tensors) if rows is None else rows
    names = [None] * len(tensors) if names is None else names
    if not len(rows) == len(names) == len(tensors):
        raise ProtocolError("rows and names must have one entry per tensor")
    arrays = [_as_array(t, i) for i, t in enumerate(tensors)]
    specs = [
        {
            "dtype": _NAME_OF_NUMPY[a.dtype],
            "shape": list(a.shape),
            "rows": None if r is None else list(r),
            "name": n,
        }
        for a, r, n in zip(arrays, rows, names, strict=True)
    ]
    wire = {"v": PROTOCOL_VERSION, "rid": header.rid, "kind": header.kind, "meta": header.meta}
    try:
        head = msgpack.packb(wire | {"tensors": specs}, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError(f"header cannot be packed: {e}") from None
    _parse_header(memoryview(head))
    if (total := len(head) + sum(a.nbytes for a in arrays)) > max_bytes:
        raise ProtocolError(f"message is {total} bytes, limit {max_bytes}")
    return [head, *(memoryview(a.reshape(-1).view(np.uint8)) for a in arrays)]


def send(
    socket: zmq.Socket,
    header: Header,
    tensors: Sequence[torch.Tensor | np.ndarray] = (),
    *,
    rows: Sequence[tuple[int, int] | None] | None = None,
    names: Sequence[str | None] | None = None,
    peer: bytes | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> None:
    """Send one message zero-copy; `peer` is the destination identity on a ROUTER socket."""
    frames = encode(header, tensors, rows=rows, names=names, max_bytes=max_bytes)
    socket.send_multipart([peer, *frames] if peer is not None else frames, copy=False)


def recv(
    socket: zmq.Socket, *, flags: int = 0, max_bytes: int = MAX_MESSAGE_BYTES, authenticated: bool = False
) -> Message:
    """Receive and decode one message, draining an oversized one so the socket stays in step.

    `flags=zmq.NOBLOCK` raises zmq.Again when nothing is queued. On a ROUTER socket the first
    frame is the sender identity (peers are DEALERs, no empty delimiter), returned as `peer`.
    On a CURVE server, `authenticated=True` also returns the sender's ZAP User-Id as `user_id`.
    """
    peer = None
    frame = socket.recv(flags, copy=False)
    if socket.type == zmq.ROUTER:
        peer = frame.bytes
        if not frame.more:
            raise ProtocolError("message has a sender identity but no header", peer=peer)
        frame = socket.recv(copy=False)
    user_id = _user_id(frame) if authenticated else None  # from a part the sender sent, not the ROUTER's
    frames, total, over = [frame], len(frame), False
    while frame.more:  # parts of a multipart message arrive together: these never block
        frame = socket.recv(copy=False)
        total += len(frame)
        over = over or total > max_bytes or len(frames) > MAX_TENSORS
        if not over:
            frames.append(frame)
    try:
        if over:
            header, _ = _parse_header(_as_buffer(frames[0]))
            raise ProtocolError(f"message exceeds {max_bytes} bytes or {MAX_TENSORS} tensors", rid=header.rid)
        msg = decode(frames, max_bytes=max_bytes)
    except ProtocolError as e:
        e.peer = peer
        raise
    msg.peer, msg.user_id = peer, user_id
    return msg


def _user_id(frame: zmq.Frame) -> str | None:
    """The User-Id the ZAP handler gave the sender's connection."""
    try:
        return frame.get("User-Id") or None
    except zmq.ZMQError:  # NULL mechanism: no such property
        return None
