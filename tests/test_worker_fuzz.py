"""Hostile input to a live worker process, and CurveZMQ authentication of a live cluster.

The worker must survive anything a socket can deliver: random frames, mutated valid messages of
every kind, oversized frames, wrong versions, unknown plans and requests, plans naming devices it
does not know. It answers with errors (or drops), never crashes or hangs, and computes correctly
afterwards.
"""

from __future__ import annotations

import copy
import random
import subprocess
import sys
import time

import msgpack
import pytest
import torch
import zmq
import zmq.auth
from curve_strangers import plain, untrusted

from runtime import models
from runtime.cluster import LocalCluster
from runtime.controller import Controller
from runtime.plan import Plan
from runtime.security import generate_keypairs
from runtime.spec import ClusterSpec, complete_cluster
from runtime.transport import PROTOCOL_VERSION, Header, Kind, encode, recv, send

torch.set_num_threads(1)
MODEL, SEED, N_UNITS = "tiny", 2, 14
LIMIT = 1 << 20  # the fuzzed worker's message size limit


def _spec(devices: list[str]) -> ClusterSpec:
    return complete_cluster("fuzz", dict.fromkeys(devices, 10), 50)


@pytest.fixture(scope="module")
def reference():
    model = models.build(MODEL, seed=SEED)
    return lambda x: model(x).detach()


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    """One worker process (1 MB message limit) and a controller with a one-device plan on it."""
    checkpoint = models.export_checkpoint(MODEL, tmp_path_factory.mktemp("fuzz") / "tiny.pt", seed=SEED)
    cmd = [sys.executable, "-m", "runtime.worker", "--bind", "tcp://127.0.0.1:*", "--device-id", "w"]
    cmd += ["--model-file", str(checkpoint), "--max-bytes", str(LIMIT), "--log-level", "CRITICAL"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, start_new_session=True)
    try:
        endpoint = proc.stdout.readline().decode().split()[1]
        with Controller(_spec(["w"]), {"w": endpoint}, model=MODEL, seed=SEED) as ctl:
            ctl.deploy(Plan.build("w", "w", [(0, 6, {"w": 1}), (6, N_UNITS, {"w": 1})]))
            yield proc, endpoint, ctl
    finally:
        proc.kill()
        proc.wait()


# ---- message generators ------------------------------------------------------------------------


def _random_value(rng: random.Random, depth: int = 0):
    choices = [
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: rng.randrange(-(2**40), 2**40),
        lambda: rng.choice([0, 1, 2, 5, 13, 14, 2**63 - 1]),
        lambda: rng.uniform(-1e9, 1e9),
        lambda: rng.choice([float("nan"), float("inf"), 1e308]),
        lambda: rng.choice(["w", "ghost", "", "tiny", "vgg16_bn", "x" * 300]),
        lambda: rng.randbytes(rng.randrange(8)),
    ]
    if depth < 3:
        choices += [
            lambda: [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))],
            lambda: {rng.choice(["plan", "path", "hop", "rows", "a"]): _random_value(rng, depth + 1)},
        ]
    return rng.choice(choices)()


def _mutate(obj, rng: random.Random):
    """Replace one random leaf (or a whole sub-structure) of a nested meta."""
    if isinstance(obj, dict) and obj and rng.random() < 0.8:
        key = rng.choice(list(obj))
        if rng.random() < 0.1:
            obj.pop(key)
        else:
            obj[key] = _mutate(obj[key], rng)
        return obj
    if isinstance(obj, list) and obj and rng.random() < 0.8:
        i = rng.randrange(len(obj))
        obj[i] = _mutate(obj[i], rng)
        return obj
    return _random_value(rng)


def _templates(ctl: Controller, x: torch.Tensor) -> list[tuple[Header, list[torch.Tensor], list]]:
    """Valid messages of every kind a peer could send (SHUTDOWN excepted: a valid one is obeyed)."""
    dep = ctl.deployment_of("w").to_meta()
    pid = dep["plan"]
    ghost = copy.deepcopy(dep)
    ghost["tasks"][0]["sends"][0][2] = ["w", "ghost"]  # a plan naming a device the worker does not know
    config = {
        "device": "w",
        "peers": {"w": "tcp://127.0.0.1:1"},
        "power": [1.0, 1.0, 1.0, 1.0],
        "emulation": None,
    }
    band = {"plan": pid, "stage": 1, "path": ["w", "w"], "hop": 1, "deliver_at": None}
    return [
        (Header(Kind.PING, 1), [], []),
        (Header(Kind.INPUT, 10**6, {"plan": pid}), [x], [None]),
        (Header(Kind.BAND, 10**6 + 1, band), [torch.zeros(1, 16, 4, 32)], [(0, 4)]),  # unknown request
        (Header(Kind.DEPLOY, 2, {"deploy": dep | {"plan": pid + 1000}, "retire": []}), [], []),
        (Header(Kind.DEPLOY, 3, {"deploy": ghost | {"plan": pid + 2000}, "retire": []}), [], []),
        (Header(Kind.CONFIG, 4, config), [], []),
        (Header(Kind.CONFIG, 4, config | {"device": "ghost"}), [], []),
        (Header(Kind.RESULT, 5, {"plan": pid, "done": 0.0}), [torch.zeros(1, 10)], [None]),
        (Header(Kind.TELEMETRY, 6, {"events": []}), [], []),
        (Header(Kind.PONG, 7), [], []),
    ]


def _fuzzed(rng: random.Random, templates) -> list:
    r = rng.random()
    if r < 0.15:  # random frames
        return [rng.randbytes(rng.randrange(64)) for _ in range(rng.randrange(1, 4))]
    header, tensors, rows = copy.deepcopy(rng.choice(templates))
    if r < 0.75:  # one or two faults in the metadata
        for _ in range(rng.randrange(1, 3)):
            header.meta = _mutate(header.meta, rng) if isinstance(header.meta, dict) else {}
            if not isinstance(header.meta, dict):
                header.meta = {"k": header.meta}
        header.rid = rng.choice([header.rid, rng.randrange(2**20)])
    try:
        frames = [bytes(f) for f in encode(header, tensors, rows=rows)]
    except Exception:  # the mutation made the header unencodable: send garbage instead
        return [rng.randbytes(16)]
    if r >= 0.75:  # faults in the frames themselves
        fault = rng.randrange(5)
        head = msgpack.unpackb(frames[0])
        if fault == 0:
            head["v"] = rng.choice([0, 2, PROTOCOL_VERSION + 1, "1"])
            frames[0] = msgpack.packb(head)
        elif fault == 1 and len(frames) > 1:
            frames[1] = frames[1][: rng.randrange(len(frames[1]))]  # truncated tensor
        elif fault == 2:
            frames.append(rng.randbytes(8))  # a frame nobody announced
        elif fault == 3:
            raw = bytearray(frames[0])
            raw[rng.randrange(len(raw))] ^= 0xFF
            frames[0] = bytes(raw)
        else:
            head["kind"] = rng.choice(["exec", "shutdown ", 7])
            frames[0] = msgpack.packb(head)
    return frames


def _ping(sock: zmq.Socket, rid: int, timeout_s: float = 10.0) -> dict:
    """Ping until the matching PONG comes back, discarding the error replies queued before it.

    The ping is repeated every second: an oversized frame makes the worker drop the connection,
    and a ping sent while the socket reconnects is lost.
    """
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        send(sock, Header(Kind.PING, rid))
        while sock.poll(1000):
            msg = recv(sock)
            if msg.header.kind == Kind.PONG and msg.header.rid == rid:
                return msg.header.meta
    raise AssertionError(f"worker did not answer ping {rid} within {timeout_s} s")


def test_worker_survives_fuzzed_messages_and_still_computes(solo, reference):
    proc, endpoint, ctl = solo
    x = torch.randn(1, *models.input_shape(MODEL), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ctl.infer(x).output, reference(x), rtol=1e-4, atol=1e-5)
    templates = _templates(ctl, x)
    rng = random.Random(2024)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    errors = 0
    try:
        for batch in range(12):
            for _ in range(100):
                sock.send_multipart(_fuzzed(rng, templates))
            # oversized: one frame above the limit, and a header above the header limit
            sock.send_multipart([encode(Header(Kind.PING, 9))[0], bytes(LIMIT + 1)])
            sock.send_multipart(
                [msgpack.packb({"v": 1, "rid": 1, "kind": "ping", "meta": {"s": "x" * 70000}})]
            )
            while sock.poll(0):
                try:
                    errors += recv(sock).header.kind == Kind.ERROR
                except Exception:
                    pass
            stats = _ping(sock, 10**9 + batch)
            assert stats["device"] == "w" and proc.poll() is None
    finally:
        ctx.destroy(linger=0)
    assert errors > 100  # bad messages were answered, not silently swallowed
    # the worker still serves its controller: restore its configuration and plan, compute again
    ctl.configure(None)
    ctl.deploy(Plan.build("w", "w", [(0, 6, {"w": 1}), (6, N_UNITS, {"w": 1})]))
    for seed in range(3):
        x = torch.randn(1, *models.input_shape(MODEL), generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(ctl.infer(x).output, reference(x), rtol=1e-4, atol=1e-5)
    assert proc.poll() is None


@pytest.fixture(scope="module")
def secure_cluster(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys")
    generate_keypairs(keys, ["controller", "s0", "s1"])
    with LocalCluster(_spec(["s0", "s1"]), model=MODEL, seed=SEED, curve_keys=keys) as c:
        yield c, keys


@pytest.mark.parametrize("setup", [untrusted, plain])
def test_curve_cluster_serves_its_controller_and_refuses_strangers(
    secure_cluster, reference, tmp_path, setup
):
    cluster, keys = secure_cluster
    ctl = cluster.controller
    ctl.deploy(Plan.build("s0", "s1", [(0, 6, {"s0": 1, "s1": 1}), (6, N_UNITS, {"s1": 1})]))
    x = torch.randn(1, *models.input_shape(MODEL), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ctl.infer(x).output, reference(x), rtol=1e-4, atol=1e-5)
    computed = {d: s.stats["computed"] for d, s in ctl.ping().items()}
    ctx = zmq.Context()
    try:
        for dev in ("s0", "s1"):
            sock = ctx.socket(zmq.DEALER)
            sock.linger, sock.sndtimeo = 0, 500
            setup(sock, keys, dev, tmp_path)
            sock.connect(cluster.endpoints[dev])
            try:
                send(sock, Header(Kind.PING, 1))
                send(sock, Header(Kind.INPUT, 99, {"plan": ctl.deployment_of("s0").plan_id}), [x])
            except zmq.Again:
                pass  # the handshake never completes, so zmq may not even queue the message
            assert not sock.poll(500), f"{dev} answered a client it does not trust"
    finally:
        ctx.destroy(linger=0)
    assert {d: s.stats["computed"] for d, s in ctl.ping().items()} == computed  # nothing computed for it
