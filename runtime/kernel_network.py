"""Kernel network mode: every worker in its own network namespace, the mesh's links as veth pairs shaped by tc.

In this mode (``LocalCluster(..., network="kernel")``) bands cross real TCP connections through the Linux
network stack and the kernel alone shapes them; the workers run no radio timer. The layout:

- **Namespaces.** Each worker is started under ``unshare --net``: a fresh network namespace with no name,
  which lives exactly as long as the worker process. Nothing is mounted under ``/run/netns``, so parallel
  runs cannot collide, and nothing outlives the workers: when they exit (on close, on Ctrl-C, or by
  themselves when the controller's process dies, even by SIGKILL) the kernel frees the namespace, its veths
  and their qdiscs. The root namespace gets no interface, address or route.
- **Links.** Mesh link number k (``spec.links[k]``) is one veth pair named ``dn<k>`` with one end in each of
  its devices' namespaces, addressed from ``LINK_NET`` (``link_addresses``): these addresses exist only
  inside the namespaces wired here. A device reaches only its neighbours, each at its address on the link
  they share, so a multi-hop route goes through the runtime's own relays (store and forward on the relay's
  radio): the route and the relay's radio time are then the ones the cost model prices (design.md, rule 4),
  where kernel forwarding would pipeline packets through the relay and hide its radio from the runtime.
- **Control.** The controller reaches each worker over a unix socket (``ipc://``) in the cluster's
  temporary directory: not a network interface, so the controller's channel is never shaped.
- **Shaping.** Each veth end's egress is an HTB class at the link's rate (``wire_rate_bits``) with a netem
  child adding the link's one-way latency where the kernel has netem (``delay_shaped``; without it the
  latency is not emulated and a warning says so). A thread re-shapes every link as its schedule's rate
  changes, following the controller's emulation (link schedules and epoch) as it is reconfigured.
- **One radio per sender.** A worker still sends one hop at a time, and in this mode a hop holds the
  sender's radio until the receiver acknowledges the whole band: concurrent sends on two links of a device
  would each get their link's full rate from the kernel, which the design's single radio forbids. The
  acknowledgement holds the radio one extra one-way latency per hop beyond what the cost model prices.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.emulation import Emulation
from runtime.schedule import Trace, constant
from runtime.spec import ClusterSpec

log = logging.getLogger("runtime.kernel_network")

PEER_PORT = 5555  # every worker's port on its links (each namespace has its own ports)
LINK_NET = ipaddress.ip_network("10.201.0.0/16")  # link k: the k-th /30 of this range
RESHAPE_S = 0.02  # how often the shaper reads the schedules
WIRE_OVERHEAD = 1514 / 1448  # bytes HTB counts per payload byte: full TCP segments at MTU 1500
GSO_MAX_BYTES = 1514  # a packet's largest size on the veths: one TCP segment
MIN_RATE_BITS = 64_000  # HTB needs a positive rate: an outage (0 Mbit/s) is shaped to this
TOOLS = ("unshare", "nsenter", "ip", "tc")

# what the shaper follows: the emulation in force (None: the spec's constant rates) and its epoch
ScheduleSource = Callable[[], tuple[Emulation | None, float]]


class KernelNetworkError(RuntimeError):
    """The kernel network could not be built (the message says which command failed and why)."""


def wire_rate_bits(mbps: float) -> int:
    """The tc rate (bit/s) that carries ``mbps`` Mbit/s of TCP payload: the one conversion from a
    schedule's rate to the kernel's (HTB counts Ethernet, IP and TCP headers too)."""
    return max(MIN_RATE_BITS, round(mbps * 1e6 * WIRE_OVERHEAD))


@dataclass(frozen=True)
class LinkAddress:
    """Mesh link ``index`` between devices ``a`` and ``b``: its veth name and each end's address."""

    index: int
    a: str
    b: str
    address_a: str
    address_b: str

    @property
    def iface(self) -> str:
        return f"dn{self.index}"

    def other(self, device: str) -> str:
        return self.b if device == self.a else self.a

    def address_of(self, device: str) -> str:
        return self.address_a if device == self.a else self.address_b


def link_addresses(spec: ClusterSpec) -> list[LinkAddress]:
    """One /30 of ``LINK_NET`` per link of ``spec``, in ``spec.links`` order."""
    nets = list(LINK_NET.subnets(new_prefix=30))
    if len(spec.links) > len(nets):
        raise KernelNetworkError(f"{len(spec.links)} links: at most {len(nets)} fit in {LINK_NET}")
    out = []
    for k, (link, net) in enumerate(zip(spec.links, nets, strict=False)):
        a, b = net.hosts()
        out.append(LinkAddress(k, link.a, link.b, str(a), str(b)))
    return out


def namespace_process(cmd: list[str]) -> list[str]:
    """``cmd`` run in a fresh network namespace of its own (gone with the process)."""
    return ["unshare", "--net", "--", *cmd]


def await_own_namespace(proc: subprocess.Popen, timeout_s: float = 5.0) -> int:
    """The inode of ``proc``'s network namespace, once it differs from ours (``unshare`` may not have
    switched yet when it was spawned): nothing is ever wired into this process's own namespace."""
    mine = os.stat("/proc/self/ns/net").st_ino
    deadline = time.time() + timeout_s
    while proc.poll() is None:
        try:
            inode = os.stat(f"/proc/{proc.pid}/ns/net").st_ino
        except FileNotFoundError:
            break
        if inode != mine:
            return inode
        if time.time() > deadline:
            raise KernelNetworkError(f"process {proc.pid} did not enter a network namespace of its own")
        time.sleep(0.01)
    raise KernelNetworkError(f"cannot create a network namespace (process exited with {proc.poll()})")


def check_available() -> None:
    """Raise KernelNetworkError saying why this host cannot run the kernel network mode; checked by doing
    it: two namespaces joined by a veth pair, one end shaped by HTB."""
    if missing := [t for t in TOOLS if shutil.which(t) is None]:
        raise KernelNetworkError(f"missing command(s): {', '.join(missing)} (util-linux, iproute2)")
    if os.geteuid() != 0:
        raise KernelNetworkError("network namespaces and tc need root")
    probes = [
        subprocess.Popen(
            namespace_process(["sleep", "30"]), stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(2)
    ]
    try:
        for p in probes:
            await_own_namespace(p)
        _run(_veth_command("dn0", probes[0].pid, probes[1].pid))
        _batch(probes[0].pid, "tc", _qdisc_lines("dn0", wire_rate_bits(1.0)))
    finally:
        for p in probes:
            p.kill()
            p.wait()


class KernelNetwork:
    """The veths and qdiscs of one cluster's mesh between its workers' namespaces (module docstring)."""

    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        self.links = link_addresses(spec)
        self.delay_shaped: bool | None = None  # whether netem adds the latency; known once a link is up
        self._procs: dict[str, subprocess.Popen] = {}
        self._applied: dict[tuple[int, str], int] = {}  # (link, device of the end) -> tc rate in force
        self._source: ScheduleSource = lambda: (None, 0.0)
        self._traces: tuple[Emulation | None, dict[int, Trace]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._shaper: threading.Thread | None = None

    def peer_endpoints(self) -> dict[str, dict[str, str]]:
        """Per device, each neighbour's endpoint: its address on the link they share."""
        out: dict[str, dict[str, str]] = {d: {} for d in self.spec.devices}
        for ln in self.links:
            out[ln.a][ln.b] = f"tcp://{ln.address_b}:{PEER_PORT}"
            out[ln.b][ln.a] = f"tcp://{ln.address_a}:{PEER_PORT}"
        return out

    def attach(self, device: str, proc: subprocess.Popen) -> None:
        """Wire ``device``'s links to every neighbour already attached; ``proc`` is its worker, running in
        its own namespace (a restarted worker is attached again: its old links died with its namespace)."""
        await_own_namespace(proc)
        with self._lock:
            self._procs[device] = proc
            rates = self._rates_now()
            for ln in self.links:
                if device not in (ln.a, ln.b) or not self._alive(ln.other(device)):
                    continue
                _run(_veth_command(ln.iface, self._procs[ln.a].pid, self._procs[ln.b].pid))
                for end in (ln.a, ln.b):
                    self._shape_end(ln, end, rates[ln.index])

    def detach(self, device: str) -> None:
        """Forget ``device``'s worker (killed: its namespace and the veths into it are gone)."""
        with self._lock:
            self._procs.pop(device, None)
            for ln in self.links:
                if device in (ln.a, ln.b):
                    self._applied.pop((ln.index, ln.a), None)
                    self._applied.pop((ln.index, ln.b), None)

    def start_shaping(self, source: ScheduleSource) -> None:
        """Follow ``source``'s link schedules from now on (a thread re-shapes links as rates change)."""
        self._source = source
        self._shaper = threading.Thread(target=self._shape_loop, name="kernel-shaper", daemon=True)
        self._shaper.start()

    def reshape(self) -> int:
        """Set every wired link to its schedule's rate now; returns how many veth ends changed."""
        with self._lock:
            rates, changes = self._rates_now(), {}
            for ln in self.links:
                for end in (ln.a, ln.b):
                    key = (ln.index, end)
                    if key in self._applied and self._applied[key] != rates[ln.index]:
                        changes.setdefault(end, []).append(_class_line("change", ln.iface, rates[ln.index]))
                        self._applied[key] = rates[ln.index]
            for device, lines in changes.items():
                if self._alive(device):
                    _batch(self._procs[device].pid, "tc", lines)
            return sum(map(len, changes.values()))

    def close(self) -> None:
        """Stop re-shaping. The links themselves go with the workers' namespaces."""
        self._stop.set()
        if self._shaper is not None:
            self._shaper.join(timeout=2.0)

    # ---- internals -------------------------------------------------------------------------------
    def _shape_loop(self) -> None:
        while not self._stop.wait(RESHAPE_S):
            try:
                self.reshape()
            except KernelNetworkError as exc:  # e.g. a worker died between the check and the command
                log.warning("re-shaping failed: %s", exc)

    def _alive(self, device: str) -> bool:
        proc = self._procs.get(device)
        return proc is not None and proc.poll() is None

    def _rates_now(self) -> dict[int, int]:
        """tc rate of every link at this moment of the source's schedules."""
        emulation, epoch = self._source()
        if self._traces is None or self._traces[0] is not emulation:
            self._traces = (emulation, self._link_traces(emulation))
        t = time.time() - epoch
        return {k: wire_rate_bits(float(trace.bandwidth_at(t))) for k, trace in self._traces[1].items()}

    def _link_traces(self, emulation: Emulation | None) -> dict[int, Trace]:
        """Each link's bandwidth schedule, as the emulated radios would follow it."""
        if emulation is None:
            return {ln.index: constant(self.spec.link(ln.a, ln.b).mbps) for ln in self.links}
        views = {d: emulation.for_device(self.spec, d, 0.0) for d in {ln.a for ln in self.links}}
        return {ln.index: views[ln.a].links[ln.b].schedule for ln in self.links}

    def _shape_end(self, ln: LinkAddress, device: str, rate: int) -> None:
        """Address, bring up and shape ``device``'s end of link ``ln``."""
        pid = self._procs[device].pid
        # one TCP segment per packet: HTB lets a packet through on credit and charges it after, so a 64 kB
        # GSO packet would go out in one burst, then the link would stay silent to pay it back
        gso = f"link set {ln.iface} gso_max_size {GSO_MAX_BYTES} gso_max_segs 1"
        _batch(
            pid, "ip", [f"addr add {ln.address_of(device)}/30 dev {ln.iface}", gso, f"link set {ln.iface} up"]
        )
        _batch(pid, "tc", _qdisc_lines(ln.iface, rate))
        self._applied[(ln.index, device)] = rate
        latency_s = self.spec.link(ln.a, ln.b).latency_s
        if self.delay_shaped is False or latency_s <= 0:
            return
        netem = f"qdisc add dev {ln.iface} parent 1:1 handle 10: netem delay {round(latency_s * 1e6)}us limit 100000"
        try:
            _batch(pid, "tc", [netem])
            self.delay_shaped = True
        except KernelNetworkError as exc:
            if self.delay_shaped or "unknown" not in str(exc):
                raise
            self.delay_shaped = False
            log.warning("this kernel has no netem qdisc: link latency is not emulated in kernel network mode")


class EgressCounter:
    """Payload bytes this host has sent towards one peer address: the transmit counter of the interface
    that routes to it (``/proc/net/route``, ``/proc/net/dev`` of the reader's namespace), net of headers.

    In kernel network mode that interface is the veth of the link to the peer, which carries one band
    at a time: its counter tells how far a band on the air has got (the worker's PROGRESS ticks).
    """

    def __init__(self, address: str):
        self.iface = _route_iface(address)
        self._last = 0

    def sent(self) -> int:
        """Bytes so far (no more once the interface is gone: the peer's namespace died)."""
        for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
            name, _, fields = line.partition(":")
            if name.strip() == self.iface:
                self._last = int(int(fields.split()[8]) / WIRE_OVERHEAD)
        return self._last


def egress_counter(endpoint: str) -> EgressCounter | None:
    """The counter of the interface towards ``tcp://ADDRESS:PORT``, or None if no route names one."""
    try:
        return EgressCounter(endpoint.split("://", 1)[1].rsplit(":", 1)[0])
    except (IndexError, ValueError, OSError):
        return None


def _route_iface(address: str) -> str:
    """The interface of the most specific route to ``address`` (ValueError if none)."""
    target = int(ipaddress.IPv4Address(address))
    best: tuple[int, str] | None = None
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        dest, mask = (int.from_bytes(bytes.fromhex(f), "little") for f in (fields[1], fields[7]))
        if target & mask == dest and (best is None or mask > best[0]):
            best = (mask, fields[0])
    if best is None:
        raise ValueError(f"no route to {address}")
    return best[1]


def _veth_command(iface: str, pid_a: int, pid_b: int) -> list[str]:
    """A veth pair created straight into two namespaces: it never exists in ours."""
    return [
        "ip",
        "link",
        "add",
        iface,
        "netns",
        str(pid_a),
        "type",
        "veth",
        "peer",
        "name",
        iface,
        "netns",
        str(pid_b),
    ]


def _class_line(verb: str, iface: str, rate: int) -> str:
    return f"class {verb} dev {iface} parent 1: classid 1:1 htb rate {rate}bit ceil {rate}bit quantum 1514"


def _qdisc_lines(iface: str, rate: int) -> list[str]:
    return [f"qdisc add dev {iface} root handle 1: htb default 1", _class_line("add", iface, rate)]


def _batch(pid: int, tool: str, lines: list[str]) -> None:
    """Run ``tool -batch`` (ip or tc) on ``lines`` inside the network namespace of process ``pid``."""
    _run(["nsenter", "-t", str(pid), "-n", tool, "-batch", "-"], "\n".join(lines) + "\n")


def _run(cmd: list[str], stdin: str | None = None) -> None:
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelNetworkError(f"{' '.join(cmd)}: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().replace("\n", "; ")
        raise KernelNetworkError(f"{' '.join(cmd[:6])}{' ...' if len(cmd) > 6 else ''}: {detail}")
