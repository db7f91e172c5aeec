"""Kernel network mode: workers in their own network namespaces, links as tc-shaped veth pairs.

The cluster tests need root and a kernel with network namespaces, veth and HTB (CI runs as root); they
skip, with the reason the attempt gave, only where a namespace cannot be created and wired.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
import zmq

from runtime import models
from runtime.cluster import LocalCluster, remove_orphaned_workdirs
from runtime.emulation import EnergyMeter
from runtime.kernel_network import (
    LINK_NET,
    KernelNetwork,
    KernelNetworkError,
    check_available,
    link_addresses,
    wire_rate_bits,
)
from runtime.plan import Plan
from runtime.radio import Radio
from runtime.schedule import Trace
from runtime.spec import PowerProfile, parse_cluster
from runtime.telemetry import Telemetry
from runtime.transport import Header, Kind, encode

torch.set_num_threads(1)
MODEL, SEED = "tiny", 5
ROOT = Path(__file__).resolve().parent.parent

# a line a - b - c: a reaches c only through b's relay; slow links so that transfers take measurable time
LINE3 = parse_cluster(
    {
        "format": "disnet-cluster/1",
        "name": "line3",
        "source": "a",
        "sink": "c",
        "devices": [
            {"id": d, "gflops": 50, "power": {"compute": 2.0, "transmit": 1.0, "receive": 0.8, "idle": 0.3}}
            for d in "abc"
        ],
        "links": [{"a": "a", "b": "b", "mbps": 2.0, "latency_ms": 1}, {"a": "b", "b": "c", "mbps": 2.0}],
    },
    origin="line3",
)


def _kernel_unavailable() -> str | None:
    try:
        check_available()
    except KernelNetworkError as exc:
        return str(exc)
    return None


needs_kernel = pytest.mark.skipif(
    (why := _kernel_unavailable()) is not None, reason=f"kernel network mode unavailable here: {why}"
)


def _netns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def _holders(inodes: set[int]) -> list[str]:
    """Processes in, and mounts of, any of these network namespaces (nothing, once they are freed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "net").st_ino in inodes:
                    found.append(f"process {entry.name}: {(entry / 'cmdline').read_bytes()[:200]!r}")
            except OSError:
                pass
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount of net:[{i}]" for i in inodes if f"net:[{i}]" in mounts]
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (an exited worker whose parent was killed may linger as a zombie until
    this machine's init reaps it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _root_veths() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return [
        line.split(":")[1].strip() for line in out.splitlines() if line.split(":")[1].strip().startswith("dn")
    ]


def _await_gone(inodes: set[int], timeout_s: float = 10.0) -> list[str]:
    deadline = time.time() + timeout_s
    while (left := _holders(inodes)) and time.time() < deadline:
        time.sleep(0.1)
    return left


def test_links_get_distinct_private_addresses_and_devices_reach_only_neighbours():
    addresses = link_addresses(LINE3)
    ends = [a for ln in addresses for a in (ln.address_a, ln.address_b)]
    assert len(set(ends)) == len(ends)
    assert all(ipaddress.ip_address(a) in LINK_NET for a in ends)
    peers = KernelNetwork(LINE3).peer_endpoints()
    assert peers["a"] == {"b": f"tcp://{addresses[0].address_b}:5555"}
    assert set(peers["b"]) == {"a", "c"} and set(peers["c"]) == {"b"}
    assert (
        wire_rate_bits(0.0) > 0 and wire_rate_bits(10.0) > 10e6
    )  # an outage still has a rate; headers count


@needs_kernel
def test_kernel_cluster_is_exact_shaped_reshaped_and_cleaned_up():
    x = torch.randn(1, *models.input_shape(MODEL), generator=torch.Generator().manual_seed(SEED))
    want = models.build(MODEL, seed=SEED)(x).detach()
    units = len(models.layers(models.build(MODEL, seed=SEED)))
    plan = Plan.build("a", "c", [(0, 3, {"a": 1.0}), (3, units, {"c": 1.0})])  # a's band relayed by b
    veths_before = _root_veths()
    with LocalCluster(LINE3, model=MODEL, seed=SEED, network="kernel") as cluster:
        ctl = cluster.controller
        inodes = {_netns(p.pid) for p in cluster.processes.values()}
        assert len(inodes) == 3 and _netns(os.getpid()) not in inodes
        ctl.deploy(plan)
        fast = ctl.infer(x)
        assert torch.allclose(fast.output, want, rtol=1e-4, atol=1e-5)
        hops = sorted(fast.timeline.of("tx"), key=lambda e: e["start"])
        assert [(e["from"], e["to"]) for e in hops] == [("a", "b"), ("b", "c")]  # relayed by b
        for e in hops:  # each hop held its sender's radio for the kernel's time at 2 Mbit/s
            assert e["end"] - e["start"] == pytest.approx(e["bytes"] * 8 / 2e6, rel=0.2)

        # the kernel follows the schedules: a step from 2 to 0.5 Mbit/s, 1 s from now
        step = Trace([0.0, 1.0], [2.0, 0.5], 1000.0)
        ctl.configure(dataclasses.replace(ctl.emulation, link_schedules={("a", "b"): step, ("b", "c"): step}))
        ctl.restart_clock()
        time.sleep(1.2)
        ctl.link_samples.clear()
        slow = ctl.infer(x)
        assert torch.allclose(slow.output, want, rtol=1e-4, atol=1e-5)
        assert slow.latency_s > 2.5 * fast.latency_s
        # the link's interface counter reports a long hop as it goes: more pieces than hops, at the new rate
        pieces = [(nbytes, seconds) for _, _, _, nbytes, seconds in ctl.link_samples]
        assert len(pieces) > 2
        assert sum(b for b, _ in pieces) * 8 / 1e6 / sum(s for _, s in pieces) == pytest.approx(0.5, rel=0.2)

        ctl.deploy(Plan.build("a", "b", [(0, units, {"a": 1.0})]))  # c is not needed while it is down
        boot = ctl.status()["c"].boot
        cluster.kill("c")  # c's namespace, and with it the link b-c, is gone: a restart wires it again
        cluster.restart("c")
        deadline = time.time() + 30
        while ctl.status()["c"].boot == boot or "c" not in ctl.available:
            assert time.time() < deadline, "the restarted worker was never seen"
            ctl.ping(timeout_s=0.5)
        ctl.deploy(plan)
        assert torch.allclose(ctl.infer(x).output, want, rtol=1e-4, atol=1e-5)
        inodes.add(_netns(cluster.processes["c"].pid))
    assert _await_gone(inodes) == []
    assert _root_veths() == veths_before


@needs_kernel
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["crash", "ctrl-c"])
def test_nothing_is_left_when_the_controller_dies_or_is_interrupted(tmp_path, stop):
    config = tmp_path / "line3.yaml"
    config.write_text(
        "format: disnet-cluster/1\nname: line3\nsource: a\nsink: c\ndevices:\n"
        + "".join(
            f"  - {{id: {d}, gflops: 50, power: {{compute: 1, transmit: 1, receive: 1, idle: 0}}}}\n"
            for d in "abc"
        )
        + "links:\n  - {a: a, b: b, mbps: 5}\n  - {a: b, b: c, mbps: 5}\n"
    )
    errors = tmp_path / "stderr.txt"
    command = [sys.executable, "-X", "faulthandler", "-m", "runtime.cluster", "up", str(config)]
    # its work folder in a parent of its own: a cluster started meanwhile by another program on this host
    # removes the orphans in the temp folder, as it should, before this test has looked at this one
    # (a short path: the folder holds the workers' unix sockets)
    workdirs = Path(tempfile.mkdtemp(prefix="dn-"))
    with errors.open("w") as stderr:  # the child keeps its own copy of the file
        # -X faulthandler: SIGABRT makes it print every thread's stack (below)
        proc = subprocess.Popen(
            [*command, "--network", "kernel"],
            cwd=ROOT,
            env=os.environ | {"TMPDIR": str(workdirs)},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    try:
        pids, workdir = [], None
        for line in proc.stdout:
            if " logs in " in line:
                workdir = Path(line.rsplit(" logs in ", 1)[1].strip())
            if " pid " in line:
                pids.append(int(line.rsplit(" pid ", 1)[1]))
            if line.startswith("Ctrl-C"):
                break
        assert len(pids) == 3, "the cluster did not come up"
        inodes = {_netns(p) for p in pids}
        proc.send_signal(stop)
        # read on while it stops (a full pipe would block it), and allow for a loaded host
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait()
            pytest.fail(f"the cluster did not stop within 60 s; its stacks:\n{errors.read_text()[-6000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        assert _await_gone(inodes) == []
        assert not [p for p in pids if _running(p)]
        assert workdir.parent == workdirs
        if stop == signal.SIGINT:
            assert not workdir.exists()
        else:  # a killed program cannot remove its files: the next cluster started here does
            assert workdir.exists() and workdir in remove_orphaned_workdirs(workdirs)
            assert not workdir.exists()
    finally:
        shutil.rmtree(workdirs, ignore_errors=True)


class _Counter:
    """An interface counter whose link carries ``nbytes`` at a steady rate for ``seconds`` from the
    first reading (the radio's base)."""

    def __init__(self, nbytes: int, seconds: float):
        self.nbytes, self.seconds, self.start = nbytes, seconds, None

    def sent(self) -> int:
        self.start = self.start or time.time()
        return min(self.nbytes, int(self.nbytes * (time.time() - self.start) / self.seconds))


def test_a_kernel_hop_measures_its_link_until_its_last_byte_left_not_until_its_ack():
    """Mid-collapse, a band's ACK queued behind the receiver's own transfer the other way: the hop read
    half its link's rate, the controller took it for a crawl and every silent link fell with it. The
    link's part of the hop ends with its last byte: one tick reports it then, and the ACK's wait adds
    nothing to measure."""
    ctx = zmq.Context.instance()
    receiver, sender = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    receiver.bind("inproc://ack-behind-traffic")
    sender.connect("inproc://ack-behind-traffic")
    emitted: list[tuple[float, dict]] = []
    radio = Radio(
        "a",
        ctx,
        None,
        EnergyMeter(PowerProfile(1.0, 1.0, 1.0, 0.1)),
        state=lambda _: None,
        live=lambda dep, rid: True,
        emit=lambda owner, header: emitted.append((time.time(), header.meta)),
        error=lambda *a, **k: None,
        record=lambda *a: None,
        stopping=threading.Event(),
        max_message_bytes=2**20,
    )
    sender.send(b"hello")
    peer, _ = receiver.recv_multipart()
    start = time.time()
    progress = {"plan": 1, "id": 7, "from": "a", "to": "b", "src": "a", "bytes": 28_000, "start": start}

    def ack_late() -> None:  # the last byte leaves after 0.1 s, the ACK comes 0.3 s later
        time.sleep(0.4)
        receiver.send_multipart([peer, *encode(Header(Kind.ACK, 3, {"ack": 7}))])

    threading.Thread(target=ack_late).start()
    try:
        assert radio._await_ack(sender, 3, None, progress, _Counter(28_000, 0.1), dep=None)
    finally:
        sender.close(linger=0)
        receiver.close(linger=0)
    acked = time.time()
    ticks = [(at, meta) for at, meta in emitted if meta["ev"] == "tick"]
    assert [meta["sent"] for _, meta in ticks] == [28_000]
    assert ticks[0][1]["at"] - start == pytest.approx(0.1, abs=0.05)
    assert acked - start >= 0.4

    telemetry = Telemetry(LINE3, history=16)  # the controller's side: the end adds no sample
    telemetry.progress("a", progress | {"ev": "start", "to": "b"})
    telemetry.progress("a", ticks[0][1] | {"to": "b"})
    assert telemetry.transfers_in_progress() == []  # every byte through: not bounded as overdue
    telemetry.progress("a", progress | {"ev": "end", "end": acked, "to": "b"})
    [(_, a, b, nbytes, seconds)] = telemetry.link_samples
    assert (a, b, nbytes) == ("a", "b", 28_000) and seconds == pytest.approx(0.1, abs=0.05)
