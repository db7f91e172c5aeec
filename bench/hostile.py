"""Hostile-client benchmark: what each resource attack of issue 19 costs a worker, before and after.

A client with no key (loopback, as the README starts workers) attacks live workers and this prints, per
attack, the first reply it got, the worker's resident memory growth (peak while the attack ran, and 1 s
after), the slowest PING answered meanwhile (liveness) and whether the controller still gets exact
results afterwards. It uses nothing but the wire protocol, so it runs against older versions of the
runtime too: run it on two checkouts to compare.

Rerun: python -m bench.hostile [--json OUT]   (about a minute; VGG-16 builds dominate)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import psutil
import torch
import zmq
from rich.table import Table

from cli import flags
from cli.output import script_console, write_json
from runtime import models
from runtime.cluster import LocalCluster
from runtime.exactness import matches
from runtime.plan import Plan
from runtime.security import generate_keypairs, public_key, secure_client
from runtime.spec import complete_cluster
from runtime.transport import Header, Kind, MiB, encode, recv, send

torch.set_num_threads(1)
MODEL, SEED = "tiny", 0
PLAN = Plan.build("s0", "s1", [(0, 6, {"s0": 1, "s1": 1}), (6, 14, {"s1": 1})])


def _spec(devices):
    return complete_cluster("hostile", dict.fromkeys(devices, 10), 50)


class _Watch:
    """Peak RSS of a worker and the slowest PING it answered while the block ran (``secure`` makes the
    pinging socket a CURVE client of a worker that requires one)."""

    def __init__(self, ctx, pid: int, endpoint: str, secure=lambda sock: None):
        self.process, self.ctx, self.endpoint, self.secure = psutil.Process(pid), ctx, endpoint, secure
        self._stop = threading.Event()

    def __enter__(self):
        self.base = self.process.memory_info().rss
        self.peak, self.slowest_ping = self.base, 0.0
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._rss, self._ping)]
        for t in self._threads:
            t.start()
        return self

    def _rss(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def _ping(self):
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        self.secure(sock)
        sock.connect(self.endpoint)
        rid = 1 << 40
        while not self._stop.is_set():
            start = time.time()
            send(sock, Header(Kind.PING, rid))
            while not self._stop.is_set() or sock.poll(0):
                if sock.poll(100) and recv(sock).header.rid == rid:
                    break
            self.slowest_ping = max(self.slowest_ping, time.time() - start)
            rid += 1
            time.sleep(0.05)
        sock.close()

    def __exit__(self, *exc):
        time.sleep(1.0)
        self._stop.set()
        for t in self._threads:
            t.join()
        self.after = self.process.memory_info().rss


def _first_reply(sock, timeout_s: float) -> str:
    if not sock.poll(int(timeout_s * 1000)):
        return f"none within {timeout_s:g} s"
    try:
        msg = recv(sock)
    except Exception as exc:
        return f"undecodable: {exc}"[:70]
    text = msg.header.meta.get("message") or ",".join(sorted(msg.header.meta))
    return f"{msg.header.kind.value}: {text}"[:70]


def _attacks(cluster):
    """(name, target device, function(sock) -> reply) for the cluster's workers."""
    ctl = cluster.controller
    dep = ctl.deployment_of("s0").to_meta()

    def bands(sock):
        band = torch.zeros(1, 16, 60 * MiB // (16 * 32 * 4), 32)
        meta = {"plan": 555, "stage": 1, "path": ["s1", "s0"], "hop": 1, "deliver_at": time.time() + 20}
        replies = []
        for rid in range(8):
            send(sock, Header(Kind.BAND, 100 + rid, meta), [band], rows=[(0, band.shape[-2])])
            replies.append(_first_reply(sock, 2.0))
        return replies[0]

    def multipart(sock, frame_mib=120):
        big = bytes(frame_mib * MiB)
        sock.send_multipart([encode(Header(Kind.PING, 31))[0], big, big, big])
        return _first_reply(sock, 3.0)

    def input_shape(sock):
        send(sock, Header(Kind.DEPLOY, 41, {"deploy": dep | {"plan": 777, "input_shape": [3, 2048, 2048]}}))
        return _first_reply(sock, 30.0)

    def plans(sock):
        for i in range(2000):
            send(sock, Header(Kind.DEPLOY, 1000 + i, {"deploy": dep | {"plan": 10_000 + i}, "retire": []}))
        kinds = {}
        deadline = time.time() + 60
        while sum(kinds.values()) < 2000 and sock.poll(max(1, int((deadline - time.time()) * 1000))):
            kind = recv(sock).header.kind.value
            kinds[kind] = kinds.get(kind, 0) + 1
        send(sock, Header(Kind.DEPLOY, 3000, {"deploy": None, "retire": list(range(10_000, 12_000))}))
        return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))

    def negative_rid(sock):
        sock.send_multipart([msgpack.packb({"v": 1, "rid": -5, "kind": "ping", "meta": {}, "tensors": []})])
        return _first_reply(sock, 3.0)

    def anonymous_ping(sock):
        send(sock, Header(Kind.PING, 61))
        return _first_reply(sock, 3.0)

    return [
        ("3 x 120 MiB frames in one message", "s0", multipart),
        ("3 x 60 MiB frames in one message (each under the frame limit)", "s0", lambda s: multipart(s, 60)),
        ("8 x 60 MiB bands of no plan, held 20 s", "s0", bands),
        ("DEPLOY tiny at 3x2048x2048", "s0", input_shape),
        ("2000 DEPLOYs of new plan ids", "s0", plans),
        ("header with rid -5", "s0", negative_rid),
        ("anonymous PING", "s1", anonymous_ping),
    ]


def _stranger_attack(ctx, keys: Path, reference) -> dict:
    """3 x 60 MiB frames from a CURVE key the worker does not know, then an inference by the controller."""
    generate_keypairs(keys, ["controller", "s0", "s1"])
    with LocalCluster(_spec(["s0", "s1"]), model=MODEL, seed=SEED, emulate=False, curve_keys=keys) as cluster:
        ctl = cluster.controller
        ctl.deploy(PLAN)
        sock = ctx.socket(zmq.DEALER)
        sock.linger, sock.sndtimeo = 0, 5000
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.curve_serverkey = public_key(keys, "s0")
        sock.connect(cluster.endpoints["s0"])
        big = bytes(60 * MiB)
        endpoint, pid = cluster.endpoints["s0"], cluster.processes["s0"].pid
        with _Watch(ctx, pid, endpoint, lambda s: secure_client(s, keys, "controller", "s0")) as watch:
            sock.send_multipart([encode(Header(Kind.PING, 71))[0], big, big, big])
            reply = _first_reply(sock, 3.0)
        sock.close()
        x = torch.randn(1, *models.input_shape(MODEL))
        serves = torch.allclose(ctl.infer(x).output, reference(x).detach(), rtol=1e-4, atol=1e-5)
    return _row("the same from a key the worker does not know (CURVE)", reply, watch, serves)


def _seed_attack(ctx, console) -> dict:
    """A worker without --model-file serving VGG-16 (seed 0): DEPLOYs of two new seeds (each a full build)."""
    cmd = [sys.executable, "-m", "runtime.worker", "--bind", "tcp://127.0.0.1:*", "--device-id", "w"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        endpoint = proc.stdout.readline().decode().split()[1]
        from runtime.deployment import deployments
        from runtime.graph import LayerGraph

        graph = LayerGraph.from_model(models.skeleton("vgg16_bn"), models.input_shape("vgg16_bn"))
        plan = Plan.build("w", "w", [(0, len(graph.units), {"w": 1})])
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(endpoint)
        config = {"device": "w", "peers": {"w": endpoint}, "power": [1.0] * 4, "emulation": None}
        send(sock, Header(Kind.CONFIG, 1, config))
        _first_reply(sock, 10)
        dep = deployments(graph, plan, 500, "vgg16_bn", 0, lambda a, b: [a, b])["w"]
        send(sock, Header(Kind.DEPLOY, 500, {"deploy": dep.to_meta(), "retire": []}))  # the controller's
        _first_reply(sock, 120.0)
        replies = []
        with _Watch(ctx, proc.pid, endpoint) as watch:
            for seed in (1, 2):
                dep = deployments(graph, plan, 500 + seed, "vgg16_bn", seed, lambda a, b: [a, b])["w"]
                send(sock, Header(Kind.DEPLOY, 500 + seed, {"deploy": dep.to_meta(), "retire": []}))
                replies.append(_first_reply(sock, 60.0))
        return _row("2 DEPLOYs of VGG-16 with new seeds (no --model-file)", replies[-1], watch, None)
    finally:
        proc.kill()
        proc.wait()


def _row(name, reply, watch, serves) -> dict:
    return {
        "attack": name,
        "reply": reply,
        "rss_peak_mib": (watch.peak - watch.base) / MiB,
        "rss_after_mib": (watch.after - watch.base) / MiB,
        "slowest_ping_s": watch.slowest_ping,
        "still_serves": serves,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    flags.add_json(parser)
    args = parser.parse_args(argv)
    console = script_console()
    reference = models.build(MODEL, seed=SEED)
    rows = []
    ctx = zmq.Context()
    with LocalCluster(_spec(["s0", "s1"]), model=MODEL, seed=SEED, emulate=False) as cluster:
        ctl = cluster.controller
        ctl.deploy(PLAN)
        for name, device, attack in _attacks(cluster):
            console.print(f"[dim]{name}...[/dim]")
            sock = ctx.socket(zmq.DEALER)
            sock.linger, sock.sndtimeo = 0, 5000
            sock.connect(cluster.endpoints[device])
            pid = cluster.processes[device].pid
            with _Watch(ctx, pid, cluster.endpoints[device]) as watch:
                reply = attack(sock)
            sock.close()
            x = torch.randn(1, *models.input_shape(MODEL))
            try:
                serves = matches(ctl.infer(x).output, reference(x).detach())
            except Exception as exc:
                serves = f"no: {exc}"[:60]
            rows.append(_row(name, reply, watch, serves))
    console.print("[dim]an unknown CURVE key...[/dim]")
    with tempfile.TemporaryDirectory() as keys:
        rows.append(_stranger_attack(ctx, Path(keys) / "keys", reference))
    console.print("[dim]VGG-16 seeds...[/dim]")
    rows.append(_seed_attack(ctx, console))
    ctx.destroy(linger=0)
    table = Table(title="hostile client vs one worker (RSS growth in MiB; loaded machine)")
    for col in ("attack", "first reply", "RSS peak", "RSS after 1 s", "slowest PING s", "still serves"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["attack"],
            r["reply"],
            f"{r['rss_peak_mib']:+.0f}",
            f"{r['rss_after_mib']:+.0f}",
            f"{r['slowest_ping_s']:.2f}",
            str(r["still_serves"]),
        )
    console.print(table)
    if args.json:
        write_json(args.json, rows, console)


if __name__ == "__main__":
    main()
