"""A hostile client against live workers, without CURVE (loopback) and with CURVE (a device's own key).

Each attack of issue 19 is one test: it asserts the refusal (an error reply, a dropped connection or a
dropped message), that the worker still serves its controller afterwards, and, for the memory attacks,
that the worker's resident memory grew by at most ``RSS_BUDGET``.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import psutil
import pytest
import torch
import zmq

from runtime import models
from runtime.auth import InsecureBind
from runtime.cluster import LocalCluster
from runtime.controller import Controller
from runtime.deployment import deployments
from runtime.graph import LayerGraph
from runtime.limits import ByteBudget, Limits, builds_to_evict, weight_bytes
from runtime.plan import Plan
from runtime.security import KeyFileError, generate_keypairs, public_key, secure_client
from runtime.spec import ClusterSpec, complete_cluster
from runtime.transport import Header, Kind, encode, recv, send
from runtime.weights import WeightStore
from runtime.worker import Worker
from runtime.worker import main as worker_main

torch.set_num_threads(1)
MODEL, SEED, N_UNITS = "tiny", 3, 14
RSS_BUDGET = 100 * 2**20
MiB = 2**20


def _spec(devices: list[str], source: str | None = None, sink: str | None = None) -> ClusterSpec:
    return complete_cluster("hostile", dict.fromkeys(devices, 10), 50, source=source, sink=sink)


PLAN = Plan.build("s0", "s1", [(0, 6, {"s0": 1, "s1": 1}), (6, N_UNITS, {"s1": 1})])


@pytest.fixture(scope="module")
def reference():
    model = models.build(MODEL, seed=SEED)
    return lambda x: model(x).detach()


@pytest.fixture(scope="module")
def plain_cluster():
    """Two workers on loopback without CURVE (every client is trusted there, as the README says)."""
    with LocalCluster(_spec(["s0", "s1"]), model=MODEL, seed=SEED, emulate=False) as c:
        c.controller.deploy(PLAN)
        yield c


@pytest.fixture(scope="module")
def curve_cluster(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys")
    generate_keypairs(keys, ["controller", "s0", "s1"])
    with LocalCluster(_spec(["s0", "s1"]), model=MODEL, seed=SEED, emulate=False, curve_keys=keys) as c:
        c.controller.deploy(PLAN)
        yield c, keys


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


class _Client:
    """A DEALER that keeps the replies it has not been asked for yet."""

    def __init__(self, ctx, endpoint: str, keys=None, name: str | None = None, server: str | None = None):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger, self.sock.sndtimeo = 0, 2000
        if keys is not None:
            secure_client(self.sock, keys, name, server)
        self.sock.connect(endpoint)
        self.inbox = {}

    def send(self, header: Header, tensors=(), rows=None) -> None:
        send(self.sock, header, tensors, rows=rows)

    def reply(self, rid: int, timeout_s: float = 30.0):
        deadline = time.time() + timeout_s
        while rid not in self.inbox and self.sock.poll(max(1, int((deadline - time.time()) * 1000))):
            msg = recv(self.sock)
            self.inbox[msg.header.rid] = msg
        if rid not in self.inbox:
            raise AssertionError(f"no reply to request {rid} within {timeout_s} s")
        return self.inbox.pop(rid)

    def ask(self, header: Header, tensors=(), rows=None):
        self.send(header, tensors, rows)
        return self.reply(header.rid)

    def timed_ping(self, rid: int) -> float:
        start = time.time()
        self.ask(Header(Kind.PING, rid))
        return time.time() - start


def _still_serves(cluster, reference, seed: int = 0) -> None:
    x = torch.randn(1, *models.input_shape(MODEL), generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(cluster.controller.infer(x).output, reference(x), rtol=1e-4, atol=1e-5)


def _rss(cluster, device: str) -> int:
    return psutil.Process(cluster.processes[device].pid).memory_info().rss


def _settled_growth(cluster, device: str, before: int, within_s: float = 2.0) -> int:
    """RSS growth over ``before`` once it is back within the budget, or at the end of ``within_s`` (the
    allocator returns a freed message's pages a moment after the reply, not before it)."""
    deadline = time.monotonic() + within_s
    while (growth := _rss(cluster, device) - before) > RSS_BUDGET and time.monotonic() < deadline:
        time.sleep(0.05)
    return growth


class _PeakRss:
    """The largest RSS of a process while the block runs (sampled every 10 ms)."""

    def __init__(self, pid: int):
        self.process, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()

    def __enter__(self):
        self.base = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.growth = self.peak - self.base


@contextlib.contextmanager
def _worker_process(device: str, *flags: str):
    """A worker process on loopback started as the README shows (no checkpoint: seeded builds)."""
    cmd = [
        sys.executable,
        "-m",
        "runtime.worker",
        "--bind",
        "tcp://127.0.0.1:*",
        "--device-id",
        device,
        *flags,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        yield proc.stdout.readline().decode().split()[1], proc.pid
    finally:
        proc.kill()
        proc.wait()


def _deployment(cluster, device: str, **changes) -> dict:
    ctl = cluster.controller
    return ctl.deployment_of(device).to_meta() | changes


# ---- secure by default ------------------------------------------------------------------------------


def test_a_network_bind_without_curve_is_refused_unless_insecure(capsys):
    with pytest.raises(InsecureBind, match="--insecure"):
        Worker("tcp://0.0.0.0:*", "pi-1")
    with pytest.raises(SystemExit) as exit_info:
        worker_main(["--bind", "tcp://0.0.0.0:*", "--device-id", "pi-1"])
    assert exit_info.value.code == 2 and "without CURVE keys" in capsys.readouterr().err


def test_an_insecure_worker_warns_in_every_pong(ctx):
    worker = Worker("tcp://0.0.0.0:*", "pi-1", insecure=True)
    endpoint = worker.endpoint.replace("0.0.0.0", "127.0.0.1")
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    try:
        pong = _Client(ctx, endpoint).ask(Header(Kind.PING, 5))
        assert "WITHOUT authentication" in pong.header.meta["warning"]
    finally:
        worker.stop()
        thread.join(5)


def test_a_missing_own_key_is_a_clear_start_up_error(tmp_path):
    generate_keypairs(tmp_path / "keys", ["controller", "pi-1"])
    with pytest.raises(KeyFileError, match="cannot read the key of 'pi-2'"):
        Worker("tcp://127.0.0.1:*", "pi-2", curve_keys=tmp_path / "keys")


# ---- authorisation ----------------------------------------------------------------------------------


def test_a_device_key_may_not_control_another_worker(curve_cluster, ctx, reference):
    cluster, keys = curve_cluster
    rogue = _Client(ctx, cluster.endpoints["s0"], keys, "s1", "s0")  # s1's own key, talking to s0
    pong = rogue.ask(Header(Kind.PING, 1))
    assert pong.header.kind == Kind.PONG and pong.header.meta == {}  # no device, boot, plans, memory
    config = {"device": "s0", "peers": {}, "power": [1.0, 1.0, 1.0, 1.0], "emulation": None, "reset": True}
    for header in (
        Header(Kind.SHUTDOWN, 2),
        Header(Kind.CONFIG, 3, config),
        Header(Kind.DEPLOY, 4, {"deploy": None, "retire": [cluster.controller.deployment_of("s0").plan_id]}),
    ):
        reply = rogue.ask(header)
        assert reply.header.kind == Kind.ERROR and "may not send" in reply.header.meta["message"]
    detailed = cluster.controller.ping()["s0"]
    assert detailed.up and detailed.stats["plans"] == [cluster.controller.deployment_of("s0").plan_id]
    _still_serves(cluster, reference, seed=1)


def test_a_device_key_may_not_send_bands_as_another_device_or_off_the_plans_routes(curve_cluster, ctx):
    cluster, keys = curve_cluster
    pid = cluster.controller.deployment_of("s0").plan_id
    rogue = _Client(ctx, cluster.endpoints["s1"], keys, "controller", "s1")
    spoof = _Client(ctx, cluster.endpoints["s1"], keys, "s0", "s1")
    band = {"plan": pid, "stage": 1, "path": ["s1", "s1"], "hop": 1}  # s0's key claiming to be s1
    reply = spoof.ask(Header(Kind.BAND, 7, band), [torch.zeros(1, 16, 4, 32)], rows=[(0, 4)])
    assert reply.header.kind == Kind.ERROR and "sends a band as 's1'" in reply.header.meta["message"]
    relay = {"plan": pid, "stage": 1, "path": ["s0", "s1", "s0"], "hop": 1}  # a route the plan lacks
    reply = spoof.ask(Header(Kind.BAND, 8, relay), [torch.zeros(1, 16, 4, 32)], rows=[(0, 4)])
    assert reply.header.kind == Kind.ERROR and "relays no rows" in reply.header.meta["message"]
    assert rogue.ask(Header(Kind.PING, 9)).header.meta["device"] == "s1"  # the controller's key may


@pytest.mark.parametrize("secure", [False, True])
def test_a_plan_stays_bound_to_the_client_that_deployed_it(
    plain_cluster, curve_cluster, ctx, reference, secure
):
    cluster = curve_cluster[0] if secure else plain_cluster
    keys = curve_cluster[1] if secure else None
    # without CURVE any client may deploy (its own plans); with CURVE only the controller's key may
    thief = _Client(ctx, cluster.endpoints["s1"], keys, "s0" if secure else None, "s1" if secure else None)
    hijack = {"deploy": _deployment(cluster, "s1"), "retire": []}
    reply = thief.ask(Header(Kind.DEPLOY, 11, hijack))
    assert reply.header.kind == Kind.ERROR
    assert ("may not send" if secure else "belongs to another client") in reply.header.meta["message"]
    _still_serves(cluster, reference, seed=2)  # the result still comes back to the controller


def test_config_reset_from_another_client_leaves_the_controllers_plans(plain_cluster, ctx, reference):
    ctl = plain_cluster.controller
    peers = {d: s.endpoint for d, s in ctl.status().items()}
    config = {"device": "s0", "peers": peers, "power": [1.0, 1.0, 1.0, 1.0], "emulation": None, "reset": True}
    other = _Client(ctx, plain_cluster.endpoints["s0"])
    assert other.ask(Header(Kind.CONFIG, 12, config)).header.kind == Kind.ACK
    reply = other.ask(Header(Kind.CONFIG, 13, config | {"peers": {"s1": "http://evil:80"}}))
    assert reply.header.kind == Kind.ERROR and "endpoints" in reply.header.meta["message"]
    assert ctl.ping()["s0"].stats["plans"] == [ctl.deployment_of("s0").plan_id]
    _still_serves(plain_cluster, reference, seed=3)


# ---- bounded resources ------------------------------------------------------------------------------


def test_bands_of_no_plan_are_refused_before_they_are_held(plain_cluster, ctx, reference):
    """Eight 60 MB bands to be delivered in an hour, for a plan that does not exist."""
    attacker = _Client(ctx, plain_cluster.endpoints["s0"])
    band = torch.zeros(1, 16, 60 * MiB // (16 * 32 * 4), 32)  # 60 MiB
    meta = {"plan": 555, "stage": 1, "path": ["s1", "s0"], "hop": 1, "deliver_at": time.time() + 3000}
    with _PeakRss(plain_cluster.processes["s0"].pid) as rss:
        for rid in range(8):
            reply = attacker.ask(Header(Kind.BAND, 100 + rid, meta), [band], rows=[(0, band.shape[-2])])
            assert reply.header.kind == Kind.ERROR and "unknown plan 555" in reply.header.meta["message"]
    assert rss.growth <= RSS_BUDGET, f"worker RSS grew {rss.growth / MiB:.0f} MiB"
    _still_serves(plain_cluster, reference, seed=4)


def test_a_band_of_the_wrong_shape_for_the_plan_is_refused(plain_cluster, ctx):
    pid = plain_cluster.controller.deployment_of("s0").plan_id
    attacker = _Client(ctx, plain_cluster.endpoints["s1"])
    meta = {"plan": pid, "stage": 1, "path": ["s0", "s1"], "hop": 1, "deliver_at": time.time() + 3000}
    rows = plain_cluster.controller.deployment_of("s1").tasks[1].inputs[0][1]
    wrong = torch.zeros(1, 16, rows[1] - rows[0], 999)
    reply = attacker.ask(Header(Kind.BAND, 21, meta), [wrong], rows=[rows])
    assert reply.header.kind == Kind.ERROR and "must be float32" in reply.header.meta["message"]


def test_an_oversized_multipart_is_dropped_unbuffered(plain_cluster, ctx, reference):
    """Three 120 MB frames: each is above the frame limit, so libzmq drops the connection unread."""
    attacker = _Client(ctx, plain_cluster.endpoints["s0"])
    big = bytes(120 * MiB)
    with _PeakRss(plain_cluster.processes["s0"].pid) as rss:
        attacker.sock.send_multipart([encode(Header(Kind.PING, 31))[0], big, big, big])
        assert not attacker.sock.poll(1500)  # no reply: the connection was closed
    assert rss.growth <= RSS_BUDGET, f"worker RSS grew {rss.growth / MiB:.0f} MiB"
    _still_serves(plain_cluster, reference, seed=5)


def test_a_multipart_over_the_message_limit_is_refused_and_let_go(plain_cluster, ctx, reference):
    """Three 60 MB frames, each under the frame limit: libzmq holds a whole multipart before the worker
    sees any of it (it bounds frames, not messages), so the worker refuses it on receipt and frees it:
    it holds no more than the sender sent, and not for longer than it takes to read."""
    attacker = _Client(ctx, plain_cluster.endpoints["s0"])
    big = bytes(60 * MiB)
    before = _rss(plain_cluster, "s0")
    attacker.sock.send_multipart([encode(Header(Kind.PING, 32))[0], big, big, big])
    reply = attacker.reply(32)
    assert reply.header.kind == Kind.ERROR and "exceeds" in reply.header.meta["message"]
    assert _settled_growth(plain_cluster, "s0", before) <= RSS_BUDGET
    _still_serves(plain_cluster, reference, seed=9)


def test_a_client_without_an_authorised_key_makes_a_worker_buffer_nothing(curve_cluster, ctx, reference):
    """The same three 60 MB frames from a key the worker does not know: CURVE refuses it at the
    handshake, so not one of its frames is read (what bounds a whole multipart on a network)."""
    cluster, keys = curve_cluster
    stranger = ctx.socket(zmq.DEALER)
    stranger.linger, stranger.sndtimeo = 0, 2000
    stranger.curve_publickey, stranger.curve_secretkey = zmq.curve_keypair()
    stranger.curve_serverkey = public_key(keys, "s0")
    stranger.connect(cluster.endpoints["s0"])
    big = bytes(60 * MiB)
    with _PeakRss(cluster.processes["s0"].pid) as rss:
        stranger.send_multipart([encode(Header(Kind.PING, 33))[0], big, big, big])
        assert not stranger.poll(1500)  # no reply: the handshake failed
    assert rss.growth <= RSS_BUDGET, f"worker RSS grew {rss.growth / MiB:.0f} MiB"
    _still_serves(cluster, reference, seed=10)


def test_a_huge_input_shape_is_refused_and_liveness_never_stalls(plain_cluster, ctx, reference):
    attacker = _Client(ctx, plain_cluster.endpoints["s0"])
    dep = _deployment(plain_cluster, "s0", plan=777, input_shape=[3, 2048, 2048])
    before = _rss(plain_cluster, "s0")
    reply = attacker.ask(Header(Kind.DEPLOY, 41, {"deploy": dep, "retire": []}))
    assert reply.header.kind == Kind.ERROR and "--max-input-elements" in reply.header.meta["message"]
    # a shape within the limit builds on the build thread: the I/O thread answers pings meanwhile
    dep = _deployment(plain_cluster, "s0", plan=778, model="vgg16_bn", input_shape=[3, 224, 224])
    attacker.send(Header(Kind.DEPLOY, 42, {"deploy": dep, "retire": []}))
    slowest = max(attacker.timed_ping(50 + i) for i in range(10))
    reply = attacker.reply(42)
    assert reply.header.kind == Kind.ERROR  # the checkpoint holds no VGG-16 weights
    assert slowest < 0.5, f"a ping waited {slowest:.2f} s while a model was built"
    assert _rss(plain_cluster, "s0") - before <= RSS_BUDGET
    _still_serves(plain_cluster, reference, seed=6)


def test_plans_per_client_are_limited_and_the_worker_keeps_answering(plain_cluster, ctx, reference):
    attacker = _Client(ctx, plain_cluster.endpoints["s0"])
    before = _rss(plain_cluster, "s0")
    for i in range(40):
        dep = _deployment(plain_cluster, "s0", plan=9000 + i)
        attacker.send(Header(Kind.DEPLOY, 1000 + i, {"deploy": dep}))
    replies = [attacker.reply(1000 + i) for i in range(40)]
    accepted = sum(r.header.kind == Kind.DEPLOY_OK for r in replies)
    assert accepted == 16 and all("limit 16" in r.header.meta["message"] for r in replies[accepted:])
    assert _rss(plain_cluster, "s0") - before <= RSS_BUDGET
    assert plain_cluster.controller.ping()["s0"].stats["device"] == "s0"  # PONG still fits its header
    attacker.send(Header(Kind.DEPLOY, 2000, {"deploy": None, "retire": list(range(9000, 9040))}))
    assert attacker.reply(2000).header.kind == Kind.DEPLOY_OK
    _still_serves(plain_cluster, reference, seed=7)


def test_a_negative_request_id_gets_an_error_reply(plain_cluster, ctx):
    attacker = _Client(ctx, plain_cluster.endpoints["s0"])
    attacker.sock.send_multipart(
        [msgpack.packb({"v": 1, "rid": -5, "kind": "ping", "meta": {}, "tensors": []})]
    )
    reply = attacker.reply(0)
    assert reply.header.kind == Kind.ERROR and reply.header.rid == 0 and "rid" in reply.header.meta["message"]


def test_the_weight_store_holds_a_bounded_number_of_builds():
    """New seeds (a rebuild each) evict builds no plan uses and are refused when all are in use."""
    in_use: set = set()
    store = WeightStore(None, Limits(max_models=2), in_use=lambda: in_use)
    for seed in range(5):
        store.prepare(MODEL, seed, models.input_shape(MODEL))
    assert len(store.loaded()) == 2
    in_use.update(store._models)
    with pytest.raises(models.ModelError, match="--max-models"):
        store.prepare(MODEL, 99, models.input_shape(MODEL))


def test_the_weight_store_keeps_seeded_weights_within_its_byte_budget():
    """Room for two seeded builds of the model: a third evicts an unused one; with both in use it is
    refused, and so is a model too big for the budget, without evicting anything in vain."""
    one = weight_bytes(models.skeleton(MODEL))
    in_use: set = set()
    store = WeightStore(None, Limits(max_models=8, max_model_bytes=2 * one), in_use=lambda: in_use)
    for seed in range(3):
        store.prepare(MODEL, seed, models.input_shape(MODEL))
    assert sorted(store.loaded()) == [f"{MODEL}:3x32x32:1", f"{MODEL}:3x32x32:2"]
    in_use.update(store._models)
    with pytest.raises(models.ModelError, match="--max-model-bytes"):
        store.prepare(MODEL, 99, models.input_shape(MODEL))
    in_use.clear()
    with pytest.raises(models.ModelError, match="--max-model-bytes"):
        store.prepare("vgg16_bn", 0, models.input_shape("vgg16_bn"))
    assert len(store.loaded()) == 2
    checkpointed = WeightStore(Path("never-read.pt"), Limits(max_model_bytes=1))  # views of one mapped file
    checkpointed.prepare(MODEL, 0, models.input_shape(MODEL))


def test_builds_are_evicted_least_recently_used_first_and_never_in_use():
    held = {"a": 100, "b": 200, "c": 300, "d": 50}
    assert builds_to_evict(held, {"b"}, 250, max_models=10, max_bytes=700) == ["a", "c"]
    assert builds_to_evict(held, {"b"}, 250, max_models=3, max_bytes=10_000) == ["a", "c"]
    assert builds_to_evict(held, set(), 10, max_models=10, max_bytes=10_000) == []
    with pytest.raises(models.ModelError, match="--max-model-bytes"):
        builds_to_evict(held, {"b", "c"}, 201, max_models=10, max_bytes=700)
    with pytest.raises(models.ModelError, match="--max-models"):
        builds_to_evict(held, {"a", "b"}, 1, max_models=2, max_bytes=10_000)


def test_the_default_budget_holds_every_zoo_model_at_once_but_not_a_second_vgg16():
    sizes = {name: weight_bytes(models.skeleton(name)) for name in models.MODEL_NAMES}
    limits = Limits()
    assert sum(sizes.values()) <= limits.max_model_bytes
    vgg = ("vgg16_bn", 0, models.input_shape("vgg16_bn"))  # in use; a new seed would double it
    with pytest.raises(models.ModelError, match="--max-model-bytes"):
        builds_to_evict({vgg: sizes["vgg16_bn"]}, {vgg}, sizes["vgg16_bn"], 8, limits.max_model_bytes)


def test_a_build_beyond_the_byte_budget_is_refused_before_it_is_allocated(ctx):
    """The issue's attack on a worker without a checkpoint (seeded builds): another client deploys the
    model in use with a new seed, and VGG-16 (528 MiB of weights, +541 MiB measured before the budget).
    With room for one ResNet-18 (45 MiB) both are refused before anything is allocated."""
    graphs = {
        m: LayerGraph.from_model(models.skeleton(m), models.input_shape(m)) for m in ("resnet18", "vgg16_bn")
    }
    plans = {m: Plan.build("w", "w", [(0, len(g.units), {"w": 1})]) for m, g in graphs.items()}

    def deploy(client, rid, plan_id, model, seed):
        dep = deployments(graphs[model], plans[model], plan_id, model, seed, lambda a, b: [a, b])["w"]
        client.send(Header(Kind.DEPLOY, rid, {"deploy": dep.to_meta()}))
        return client.reply(rid, timeout_s=60)

    with _worker_process("w", "--max-model-bytes", str(64 * MiB)) as (endpoint, pid):
        owner, attacker = _Client(ctx, endpoint), _Client(ctx, endpoint)
        config = {"device": "w", "peers": {"w": endpoint}, "power": [1.0] * 4, "emulation": None}
        assert owner.ask(Header(Kind.CONFIG, 1, config)).header.kind == Kind.ACK
        assert deploy(owner, 2, 500, "resnet18", 0).header.kind == Kind.DEPLOY_OK
        with _PeakRss(pid) as rss:
            for rid, model, seed in ((11, "resnet18", 1), (12, "vgg16_bn", 0)):
                reply = deploy(attacker, rid, 500 + rid, model, seed)
                assert reply.header.kind == Kind.ERROR and "--max-model-bytes" in reply.header.meta["message"]
        assert rss.growth <= RSS_BUDGET, f"worker RSS grew {rss.growth / MiB:.0f} MiB"
        status = owner.ask(Header(Kind.PING, 20)).header.meta
        assert status["plans"] == [500] and list(status["loaded_units"]) == ["resnet18:3x224x224:0"]


def test_the_byte_budget_refuses_a_sender_over_its_share_and_frees_what_is_released():
    budget = ByteBudget(per_peer=1 * MiB, total=3 * MiB // 2)
    held = torch.zeros(MiB // 4)  # 1 MiB of float32
    budget.charge("a", [held])
    with pytest.raises(ValueError, match="budget spent"):
        budget.charge("a", [torch.zeros(1)])
    other = torch.zeros(MiB // 16)
    budget.charge("b", [other])  # another sender has its own share...
    with pytest.raises(ValueError, match="budget spent"):
        budget.charge("c", [torch.zeros(MiB // 8)])  # ...within the total
    del held
    assert budget.used("a") == 0 and budget.used() == other.numel() * 4


# ---- a controller that checks what it accepts ---------------------------------------------------------


class _FakeWorkers:
    """Two ROUTERs in a thread posing as workers: ``x`` (the plan's sink, lying about the result) and
    ``y`` (outside the plan, forging results, telemetry, progress and errors for the attempt x saw)."""

    def __init__(self, ctx):
        self.sockets = {d: ctx.socket(zmq.ROUTER) for d in ("x", "y")}
        self.endpoints = {}
        for d, s in self.sockets.items():
            s.linger = 0
            self.endpoints[d] = f"tcp://127.0.0.1:{s.bind_to_random_port('tcp://127.0.0.1')}"
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        poller = zmq.Poller()
        for s in self.sockets.values():
            poller.register(s, zmq.POLLIN)
        controller = {}
        while not self._stop.is_set():
            for sock, _ in poller.poll(50):
                dev = next(d for d, s in self.sockets.items() if s is sock)
                msg = recv(sock)
                kind, rid, meta = msg.header.kind, msg.header.rid, msg.header.meta
                reply = {"device": dev, "boot": dev}
                if kind != Kind.BAND:
                    controller[dev] = msg.peer
                if kind == Kind.CONFIG:
                    send(sock, Header(Kind.ACK, rid, reply), peer=msg.peer)
                elif kind == Kind.PING:
                    send(sock, Header(Kind.PONG, rid, reply), peer=msg.peer)
                elif kind == Kind.DEPLOY:
                    plan = (meta.get("deploy") or {}).get("plan")
                    send(sock, Header(Kind.DEPLOY_OK, rid, reply | {"plan": plan}), peer=msg.peer)
                elif kind == Kind.BAND and dev == "x":
                    self._lie(controller, rid, meta["plan"])

    def _lie(self, controller, wire, plan):
        forged = torch.full((2, 3), 7.0)
        y, x = self.sockets["y"], self.sockets["x"]
        send(
            y, Header(Kind.RESULT, wire, {"plan": plan, "done": time.time()}), [forged], peer=controller["y"]
        )
        events = [{"ev": "done", "t": time.time()}]
        send(
            y,
            Header(Kind.TELEMETRY, wire, {"plan": plan, "device": "y", "events": events}),
            peer=controller["y"],
        )
        progress = {"plan": plan, "id": 1, "from": "y", "to": "x", "src": "y", "bytes": 10**9, "start": 1.0}
        send(y, Header(Kind.PROGRESS, wire, progress | {"ev": "end", "end": 2.0}), peer=controller["y"])
        send(y, Header(Kind.ERROR, wire, {"plan": plan, "message": "forged"}), peer=controller["y"])
        send(
            x, Header(Kind.RESULT, wire, {"plan": plan, "done": time.time()}), [forged], peer=controller["x"]
        )
        send(
            x,
            Header(Kind.RESULT, wire, {"plan": plan, "done": time.time()}),
            [torch.zeros(1, 10)],
            peer=controller["x"],
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(5)


def test_the_controller_accepts_only_the_sinks_result_of_the_right_shape_and_verifies_it(
    plain_cluster, ctx, reference
):
    spec = _spec(["s0", "x", "y"], source="s0", sink="x")
    with _FakeWorkers(ctx) as fakes:
        endpoints = {"s0": plain_cluster.endpoints["s0"], **fakes.endpoints}
        with Controller(spec, endpoints, model=MODEL, seed=SEED, verify=1.0, telemetry_grace_s=0.2) as ctl:
            ctl.deploy(Plan.build("s0", "x", [(0, N_UNITS, {"s0": 1})]))
            x = torch.randn(1, *models.input_shape(MODEL))
            result = ctl.infer(x)
            assert tuple(result.output.shape) == (1, 10) and result.output.abs().sum() == 0  # the sink's lie
            assert result.verified is False and ctl.verifier.mismatches[0].rid == result.rid
            assert not any(a == "y" for _, a, *_ in ctl.link_samples)  # y's forged transfer was dropped
    plain_cluster.controller.configure(None)  # s0 was configured by the other controller
    plain_cluster.controller.deploy(PLAN)
    _still_serves(plain_cluster, reference, seed=8)


def test_plan_and_attempt_ids_are_unpredictable(plain_cluster):
    ctl = plain_cluster.controller
    ids = [ctl._new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and max(ids).bit_length() > 60
    assert len({b - a for a, b in itertools.pairwise(ids)}) == 999  # not a counter
