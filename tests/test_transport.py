"""Wire protocol and CurveZMQ: real loopback sockets, malformed input, fuzzing."""

from __future__ import annotations

import random
import stat
import warnings
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
import zmq
import zmq.auth
from curve_strangers import plain, untrusted

from runtime.security import KeyFileError, generate_keypairs, main, secure_client, secure_server
from runtime.transport import (
    MAX_ELEMENTS,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    Header,
    Kind,
    Message,
    ProtocolError,
    decode,
    encode,
    recv,
    send,
)

torch.set_num_threads(1)
TIMEOUT_MS = 5000
SILENCE_MS = 400  # how long a rejected peer must stay unanswered


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)  # closes every socket of the test


def _socket(context: zmq.Context, kind: int) -> zmq.Socket:
    sock = context.socket(kind)
    sock.linger = 0
    sock.rcvtimeo = sock.sndtimeo = TIMEOUT_MS
    return sock


@pytest.fixture
def router_dealer(ctx):
    """A worker-style ROUTER and a controller-style DEALER (identity b"ctl") on loopback."""
    router = _socket(ctx, zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = _socket(ctx, zmq.DEALER)
    dealer.identity = b"ctl"
    dealer.connect(f"tcp://127.0.0.1:{port}")
    return router, dealer


def _wire(header: dict, *buffers: bytes) -> list[bytes]:
    return [msgpack.packb(header), *buffers]


def _valid_header(**changes) -> dict:
    spec = {"dtype": "float32", "shape": [1, 2, 3, 4], "rows": [5, 8], "name": "x"}
    header = {"v": PROTOCOL_VERSION, "rid": 42, "kind": "band", "meta": {}, "tensors": [spec]}
    return header | changes


def _spec(**changes) -> dict:
    return _valid_header()["tensors"][0] | changes


BUF = bytes(4 * 24)


def test_round_trip_over_router_dealer_keeps_values_dtypes_and_metadata(router_dealer):
    router, dealer = router_dealer
    gen = torch.Generator().manual_seed(0)
    fmap = torch.randn(1, 3, 6, 5, generator=gen)
    tensors = [
        fmap,
        torch.randint(0, 256, (7, 3), generator=gen, dtype=torch.uint8),
        torch.randint(-(2**40), 2**40, (4,), generator=gen, dtype=torch.int64),
        torch.empty(0, 4),
        fmap.transpose(2, 3),  # non-contiguous
        fmap.half(),
        np.arange(6, dtype=np.int32).reshape(2, 3)[:, ::2],  # non-contiguous numpy
    ]
    rows = [(10, 16), None, None, None, (2, 7), None, None]
    meta = {"stage": 1, "devices": ["0", "3"], "deadline": 0.25, "blob": b"\x00\x01"}
    send(dealer, Header(Kind.BAND, 9, meta), tensors, rows=rows, names=["x"] + [None] * 6)

    msg = recv(router)
    assert msg.peer == b"ctl"
    assert (msg.header.kind, msg.header.rid, msg.header.meta) == (Kind.BAND, 9, meta)
    assert [s.rows for s in msg.specs] == rows
    assert msg.specs[0].name == "x"
    for got, want in zip(msg.tensors, tensors, strict=True):
        want = torch.as_tensor(np.ascontiguousarray(want)) if isinstance(want, np.ndarray) else want
        assert got.dtype == want.dtype
        assert torch.equal(got, want)

    send(router, Header(Kind.RESULT, 9), [msg.tensors[0] * 2], peer=msg.peer)
    reply = recv(dealer)
    assert reply.peer is None and reply.header.kind == Kind.RESULT
    assert torch.equal(reply.tensors[0], fmap * 2)


def test_decode_views_writable_aligned_frames_without_copying():
    data = bytearray(np.arange(24, dtype=np.float32).tobytes())
    msg = decode(_wire(_valid_header(), data))
    data[0:4] = np.float32(-1).tobytes()
    assert msg.tensors[0].flatten()[0].item() == -1.0  # shares memory with the frame


def test_decode_copies_readonly_and_unaligned_frames_silently():
    values = np.arange(24, dtype=np.float32)
    unaligned = memoryview(bytearray(1) + bytearray(values.tobytes()))[1:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps read-only memory
        for frame in (values.tobytes(), unaligned):
            tensor = decode(_wire(_valid_header(), frame)).tensors[0]
            assert tensor.data_ptr() % 4 == 0
            assert torch.equal(tensor.flatten(), torch.from_numpy(values))
            tensor += 1  # writable


def _header_with(**changes) -> list:
    return _wire(_valid_header(**changes), BUF)


def _spec_with(**changes) -> list:
    return _header_with(tensors=[_spec(**changes)])


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


VALID_HEAD = msgpack.packb(_valid_header())
MALFORMED = {
    "empty message": ([], "empty message"),
    "garbage header": ([b"\xc1\xff garbage", BUF], "not valid msgpack"),
    "trailing bytes": ([VALID_HEAD + b"\x00", BUF], "not valid msgpack"),
    "header not a map": ([msgpack.packb([1, 2]), BUF], "must be a map"),
    "oversized header": (_header_with(meta={"s": "x" * MAX_HEADER_BYTES}), "limit 65536"),
    "wrong version": (_header_with(v=2), "version mismatch: got 2"),
    "bool version": (_header_with(v=True), "version mismatch"),
    "missing field": (_wire({"v": 1, "rid": 1, "kind": "ping", "meta": {}}), "lacks"),
    "extra field": (_header_with(pickle=b"x"), "unknown field"),
    "negative rid": (_header_with(rid=-1), "rid must be"),
    "unknown kind": (_header_with(kind="exec"), "unknown kind 'exec'"),
    "list kind": (_header_with(kind=["band"]), "unknown kind"),
    "meta not a map": (_header_with(meta=[1]), "meta must be a map"),
    "meta ext type": (_header_with(meta={"t": msgpack.ExtType(1, b"")}), "unsupported value"),
    "meta too deep": (_header_with(meta={"a": _nested(20)}), "nested deeper"),
    "bad dtype": (_spec_with(dtype="float64"), "dtype 'float64' not in"),
    "object dtype": (_spec_with(dtype="O"), "dtype 'O' not in"),
    "huge shape": (_spec_with(shape=[2**20, 2**20], rows=None), f"exceeds {MAX_ELEMENTS}"),
    "negative dim": (_spec_with(shape=[1, -2, 3, 4]), "shape entry"),
    "float dim": (_spec_with(shape=[1, 2.0, 3, 4]), "shape entry"),
    "rows vs shape": (_spec_with(rows=[0, 4]), "do not match shape"),
    "rows on scalar": (_wire(_valid_header(tensors=[_spec(shape=[], rows=[0, 1])])), "rows must"),
    "spec not a map": (_header_with(tensors=["float32"]), "tensor 0 must be a map"),
    "truncated buffer": (_wire(_valid_header(), BUF[:-1]), "frame has 95 bytes.*needs 96"),
    "missing frame": (_wire(_valid_header()), "1 tensors, 0 frames"),
    "extra frame": (_wire(_valid_header(), BUF, b""), "1 tensors, 2 frames"),
    "non-buffer frame": ([VALID_HEAD, 12345], "not a contiguous buffer"),
}


@pytest.mark.parametrize("frames, match", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_message_raises_protocol_error_naming_the_fault(frames, match):
    with pytest.raises(ProtocolError, match=match):
        decode(frames)


def test_total_size_limit_is_configurable():
    frames = _wire(_valid_header(), BUF)
    assert decode(frames, max_bytes=len(frames[0]) + len(BUF)).tensors[0].numel() == 24
    with pytest.raises(ProtocolError, match="limit"):
        decode(frames, max_bytes=len(frames[0]) + len(BUF) - 1)


def test_errors_after_the_header_carry_the_request_id():
    with pytest.raises(ProtocolError) as err:
        decode(_wire(_valid_header(rid=77), BUF[:8]))
    assert err.value.rid == 77


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: encode(Header(Kind.BAND), [torch.zeros(2, dtype=torch.float64)]), "float64"),
        (lambda: encode(Header(Kind.BAND), [[1.0, 2.0]]), "list"),
        (lambda: encode(Header("exec")), "unknown kind"),
        (lambda: encode(Header(Kind.PING, meta={"f": print})), "cannot be packed"),
        (lambda: encode(Header(Kind.BAND), [torch.zeros(1, 3, 4, 4)], rows=[(0, 3)]), "rows"),
        (lambda: encode(Header(Kind.BAND), [torch.zeros(2)], names=["a", "b"]), "one entry"),
        (lambda: encode(Header(Kind.BAND), [torch.zeros(64)], max_bytes=128), "limit"),
    ],
)
def test_encode_refuses_what_decode_would_reject(call, match):
    with pytest.raises(ProtocolError, match=match):
        call()


def test_router_reports_bad_messages_with_sender_and_keeps_serving(router_dealer):
    router, dealer = router_dealer
    dealer.send_multipart([b"\xc1 not msgpack", b"junk"])
    big = torch.zeros(4096)
    send(dealer, Header(Kind.INPUT, 5), [big, big])
    send(dealer, Header(Kind.PING, 6))

    with pytest.raises(ProtocolError, match="msgpack") as bad:
        recv(router)
    assert bad.value.peer == b"ctl"
    with pytest.raises(ProtocolError, match="exceeds") as oversized:
        recv(router, max_bytes=big.numel() * 4)
    assert (oversized.value.peer, oversized.value.rid) == (b"ctl", 5)
    ok = recv(router)  # the oversized message was drained completely
    assert (ok.header.kind, ok.header.rid, ok.tensors) == (Kind.PING, 6, [])


def _random_value(rng: random.Random, depth: int = 0):
    choice = rng.randrange(10 if depth < 3 else 7)
    return [
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: rng.choice([0, 1, 3, -1, 2**31, 2**62, -(2**63), 2**64 - 1]),
        lambda: rng.uniform(-1e9, 1e9),
        lambda: rng.choice(["", "band", "float32", "uint8", "v", "rows", "\u00e9"]),
        lambda: rng.randbytes(rng.randrange(6)),
        lambda: rng.choice([1, 2, 4, 24, 0]),
        lambda: [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))],
        lambda: {rng.choice(["dtype", "shape", "a"]): _random_value(rng, depth + 1)},
        lambda: [rng.randrange(-2, 30) for _ in range(rng.randrange(6))],
    ][choice]()


def _mutant(rng: random.Random) -> list:
    """A valid message with one or two random faults (or none)."""
    n = rng.randrange(3)
    specs = []
    for _ in range(n):
        shape = [rng.randrange(4) for _ in range(rng.randrange(5))]
        spec = {"dtype": rng.choice(["float32", "float16", "int64", "int32", "uint8"])}
        spec |= {"shape": shape, "name": rng.choice([None, "x"])}
        if shape and rng.random() < 0.5:
            lo = rng.randrange(10)
            spec["rows"] = [lo, lo + shape[-2 if len(shape) >= 3 else -1]]
        specs.append(spec)
    header = {"v": 1, "rid": rng.randrange(100), "kind": rng.choice([k.value for k in Kind])}
    header |= {"meta": {"k": _random_value(rng)}, "tensors": specs}
    item = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "uint8": 1}
    bufs = [rng.randbytes(int(np.prod(s["shape"])) * item[s["dtype"]]) for s in specs]
    for _ in range(rng.randrange(3)):
        fault = rng.randrange(7)  # 5 and 6: no fault, so valid messages stay common
        if fault == 0 and specs:  # corrupt one spec field
            rng.choice(specs)[rng.choice(["dtype", "shape", "rows", "name", "zz"])] = _random_value(rng)
        elif fault == 1:  # corrupt one header field
            header[rng.choice(["v", "rid", "kind", "meta", "tensors", "x"])] = _random_value(rng)
        elif fault == 2 and bufs:  # resize one buffer
            i = rng.randrange(len(bufs))
            bufs[i] = bufs[i][: rng.randrange(len(bufs[i]) + 1)] + rng.randbytes(rng.randrange(3))
        elif fault == 3:  # drop or add a frame
            bufs = bufs[:-1] if bufs and rng.random() < 0.5 else [*bufs, rng.randbytes(4)]
        elif fault == 4 and header:
            header.pop(rng.choice(list(header)))
    try:
        head = msgpack.packb(header)
    except (OverflowError, TypeError, ValueError):
        head = rng.randbytes(20)
    if rng.random() < 0.15:  # flip or cut bytes of the packed header
        raw = bytearray(head)
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        head = bytes(raw[: rng.randrange(len(raw) + 1)] if rng.random() < 0.3 else raw)
    return [head, *bufs]


def test_fuzzed_frames_decode_or_raise_protocol_error_only():
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(1500):
        frames = _mutant(rng) if rng.random() < 0.9 else [rng.randbytes(rng.randrange(40))]
        try:
            msg = decode(frames)
        except ProtocolError as e:
            assert str(e)
            outcomes["error"] += 1
            continue
        assert isinstance(msg, Message) and len(msg.tensors) == len(msg.specs) == len(frames) - 1
        for tensor, spec in zip(msg.tensors, msg.specs, strict=True):
            assert str(tensor.dtype) == f"torch.{spec.dtype}" and tuple(tensor.shape) == spec.shape
        outcomes["ok"] += 1
    assert outcomes["ok"] > 100 and outcomes["error"] > 100, outcomes


@pytest.fixture
def curve_server(tmp_path, ctx):
    """A CURVE ROUTER that answers each ping with a pong; yields (keys dir, endpoint, serve)."""
    keys = tmp_path / "keys"
    generate_keypairs(keys, ["worker", "controller", "0"])
    server = _socket(ctx, zmq.ROUTER)
    auth = secure_server(server, keys, ctx, "worker")
    endpoint = f"tcp://127.0.0.1:{server.bind_to_random_port('tcp://127.0.0.1')}"

    def serve(wait_ms: int) -> bool:
        if not server.poll(wait_ms):
            return False
        msg = recv(server)
        send(server, Header(Kind.PONG, msg.header.rid), peer=msg.peer)
        return True

    yield keys, endpoint, serve
    auth.stop()


def _ping(client: zmq.Socket, endpoint: str, rid: int) -> None:
    client.connect(endpoint)
    send(client, Header(Kind.PING, rid))


def test_curve_authorised_client_gets_a_reply(curve_server, ctx):
    keys, endpoint, serve = curve_server
    client = _socket(ctx, zmq.DEALER)
    secure_client(client, keys, "controller", "worker")
    _ping(client, endpoint, 3)
    assert serve(TIMEOUT_MS)
    assert client.poll(TIMEOUT_MS)
    assert recv(client).header == Header(Kind.PONG, 3)


@pytest.mark.parametrize("setup", [untrusted, plain])
def test_curve_rejected_client_gets_nothing_while_authorised_one_is_served(
    curve_server, ctx, tmp_path, setup
):
    keys, endpoint, serve = curve_server
    intruder = _socket(ctx, zmq.DEALER)
    setup(intruder, keys, "worker", tmp_path)
    try:
        _ping(intruder, endpoint, 1)
    except zmq.Again:
        pass  # the handshake never completes, so zmq may not even queue the message: nothing is sent
    assert not serve(SILENCE_MS)  # nothing reaches the server...
    assert not intruder.poll(SILENCE_MS)  # ...and nothing comes back

    member = _socket(ctx, zmq.DEALER)
    secure_client(member, keys, "0", "worker")
    _ping(member, endpoint, 2)
    assert serve(TIMEOUT_MS) and member.poll(TIMEOUT_MS)
    assert recv(member).header.rid == 2
    assert not intruder.poll(0)


def test_keygen_cli_writes_private_keys_from_the_start_and_adds_keys_without_overwriting(tmp_path, capsys):
    keys = tmp_path / "keys"
    main(["keygen", str(keys), "--clients", "controller", "0"])
    assert "controller, 0" in capsys.readouterr().out
    controller_key = (keys / "controller.key_secret").read_text()
    main(["keygen", str(keys), "--count", "2"])
    assert (keys / "controller.key_secret").read_text() == controller_key
    authorized = sorted(p.name for p in (keys / "authorized").iterdir())
    assert authorized == ["0.key", "client0.key", "client1.key", "controller.key"]
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for secret in keys.glob("*.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    with pytest.raises(SystemExit) as exit_info:
        main(["keygen", str(keys), "--clients", "0"])
    assert exit_info.value.code == 2
    assert "already exist" in capsys.readouterr().err


def test_keygen_makes_a_key_per_device_of_a_cluster_file_and_the_controller(tmp_path, capsys):
    keys = tmp_path / "keys"
    main(["keygen", str(keys), "--cluster", "configs/clusters/tiny3.yaml"])
    names = sorted(p.stem for p in (keys / "authorized").iterdir())
    assert "controller" in names and len(names) == 4
    assert {p.name.removesuffix(".key_secret") for p in keys.glob("*.key_secret")} == set(names)
    with pytest.raises(SystemExit):
        main(["keygen", str(tmp_path / "other"), "--cluster", str(tmp_path / "missing.yaml")])
    assert "cluster file" in capsys.readouterr().err
    before = {p.name: p.read_bytes() for p in keys.glob("*.key_secret")}
    grown = tmp_path / "grown.yaml"  # the cluster with one more device: run again, it gets its key
    grown.write_text(
        Path("configs/clusters/tiny3.yaml")
        .read_text()
        .replace(
            "links:",
            "  - {id: d9, gflops: 1, power: {compute: 1, transmit: 1, receive: 1, idle: 0.1}}\nlinks:",
        )
        + "  - {a: d2, b: d9, mbps: 50}\n"
    )
    main(["keygen", str(keys), "--cluster", str(grown)])
    assert "kept the existing keys of controller" in capsys.readouterr().out
    after = {p.name: p.read_bytes() for p in keys.glob("*.key_secret")}
    assert set(after) - set(before) == {"d9.key_secret"}
    assert all(after[name] == key for name, key in before.items())  # never overwritten


def test_a_missing_or_exposed_own_key_is_a_clear_error(tmp_path, ctx):
    keys = tmp_path / "keys"
    generate_keypairs(keys, ["worker"])
    server = _socket(ctx, zmq.ROUTER)
    with pytest.raises(KeyFileError, match="cannot read the key of 'pi-9'"):
        secure_server(server, keys, ctx, "pi-9")
    (keys / "worker.key_secret").chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        secure_server(server, keys, ctx, "worker")
