"""LocalCluster: one worker process per device of a ClusterSpec on this host, and a Controller for them.

::

    with LocalCluster(load_cluster("configs/clusters/tiny3.yaml"), model="tiny") as cluster:
        cluster.controller.deploy(plan)
        result = cluster.controller.infer(x)
        cluster.kill("d1"); cluster.restart("d1")      # chaos

Each worker is ``python -m runtime.worker`` on a free loopback port, with one torch thread, in its own
process group. The seeded model is exported once to a temporary checkpoint that the workers map into
memory unit by unit. With ``emulate=True`` (the default) the workers pace their compute to the spec's
device speeds (relative to this host's single-thread GFLOP/s, measured once; with ``unit_seconds``, a
profile measured at ``host_gflops``, by the profile's seconds for each band) and shape their radios to
the spec's links, or to ``link_schedules``/``speed_schedules``. With ``network="kernel"`` each worker runs
in its own network namespace and the kernel shapes the links instead of the workers' radio timers
(``runtime.kernel_network``: root only; the controller then reaches the workers over unix sockets).
``dilation`` runs the emulation D x slower than the emulated cluster so that the host is never
oversubscribed (runtime/emulation.py; None: ``auto_dilation`` for this host); ``cluster.dilation`` is the
D in force, which anything else that shapes the emulated network (e.g. kernel ``tc`` rates) must follow.

Teardown leaves no process behind: workers are asked to exit, then their process groups are killed;
an ``atexit`` hook does the same if the program ends without closing the cluster, and a worker exits
by itself when its parent process dies (even on SIGKILL of the parent). A killed program cannot remove
its temporary directory (the checkpoint, hundreds of MB for VGG-16, and the workers' logs), so each one
names its owner, and the next cluster started on the host removes those whose owner is gone.

By hand: ``python -m runtime.cluster up configs/clusters/tiny3.yaml`` runs a cluster until Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil
import torch

from runtime import models
from runtime.controller import Controller, Replanner
from runtime.emulation import Emulation, ScheduleLike, auto_dilation, measure_host_gflops
from runtime.kernel_network import (
    PEER_PORT,
    KernelNetwork,
    KernelNetworkError,
    check_available,
    namespace_process,
)
from runtime.plan import Plan
from runtime.spec import ClusterSpec, SpecError, load_cluster

log = logging.getLogger("runtime.cluster")

NETWORKS = ("emulated", "kernel")  # who shapes the links: the workers' radio timers, or the Linux kernel
WORKDIR_PREFIX = "disnet-cluster-"
OWNER_FILE = "owner"  # in each workdir: the pid and start time of the process that made it
_LIVE: dict[int, subprocess.Popen] = {}  # every worker process started here and not yet reaped


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log.error("worker process %d did not die", proc.pid)
    _LIVE.pop(proc.pid, None)


@atexit.register
def _kill_all() -> None:
    for proc in list(_LIVE.values()):
        _kill_group(proc)


def _owner_stamp(pid: int) -> str:
    """``pid`` with its start time: a later process that reuses the pid is not the owner."""
    return f"{pid} {psutil.Process(pid).create_time():.3f}"


def _owner_alive(stamp: str) -> bool:
    pid = int(stamp.split()[0])
    try:
        return _owner_stamp(pid) == stamp
    except psutil.Error:
        return False


def remove_orphaned_workdirs(root: Path | None = None) -> list[Path]:
    """Remove the work directories under ``root`` (the system's temporary directory) whose owner
    process has died without removing them (killed); return them. A directory that names no owner
    (or is not ours to read) is left alone."""
    removed = []
    for workdir in Path(root or tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
        try:
            stamp = (workdir / OWNER_FILE).read_text()
            if _owner_alive(stamp):
                continue
            shutil.rmtree(workdir)
        except (OSError, ValueError, IndexError):
            continue
        log.info("removed %s, left by a cluster whose program was killed", workdir)
        removed.append(workdir)
    return removed


class ClusterError(RuntimeError):
    """A worker process could not be started."""


class LocalCluster:
    """Worker processes for every device of ``spec`` on this host (see the module docstring)."""

    def __init__(
        self,
        spec: ClusterSpec,
        *,
        model: str = "tiny",
        seed: int = 0,
        input_shape: tuple[int, int, int] | None = None,
        emulate: bool = True,
        link_schedules: Mapping[tuple[str, str], ScheduleLike] | None = None,
        speed_schedules: Mapping[str, ScheduleLike] | None = None,
        host_gflops: float | None = None,
        unit_seconds: tuple[float, ...] | None = None,
        dilation: float | None = 1.0,
        replan: Replanner | None = None,
        curve_keys: str | Path | None = None,
        host: str = "127.0.0.1",
        start_timeout_s: float = 120.0,
        controller_options: Mapping[str, Any] | None = None,
        network: str = "emulated",
    ):
        if network not in NETWORKS:
            raise ValueError(f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
        self.spec = spec
        self.network = network
        self.kernel: KernelNetwork | None = None
        self.model = model
        self.seed = seed
        self.input_shape = input_shape
        self.emulate = emulate
        self.link_schedules = link_schedules
        self.speed_schedules = speed_schedules
        self.host_gflops = host_gflops
        self.unit_seconds = unit_seconds
        self.dilation = dilation
        self.replan = replan
        self.curve_keys = Path(curve_keys) if curve_keys is not None else None
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.controller_options = dict(controller_options or {})
        self.endpoints: dict[str, str] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.controller: Controller | None = None
        self.checkpoint: Path | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pacing(self) -> str:
        """What emulated compute follows: the profile's seconds per band, or the real computation's CPU."""
        return "cpu" if self.unit_seconds is None else "profile"

    @property
    def workdir(self) -> Path:
        """Temporary directory holding the checkpoint and one log file per worker."""
        if self._tmp is None:
            raise ClusterError("the cluster is not started")
        return Path(self._tmp.name)

    def start(self) -> Controller:
        """Export the model, start every worker, wait until all answer, and connect a controller."""
        remove_orphaned_workdirs()
        self._tmp = tempfile.TemporaryDirectory(prefix=WORKDIR_PREFIX)
        (self.workdir / OWNER_FILE).write_text(_owner_stamp(os.getpid()))
        try:
            self.checkpoint = models.export_checkpoint(
                self.model, self.workdir / f"{self.model}.pt", seed=self.seed
            )
            if self.emulate and self.host_gflops is None:
                self.host_gflops = measure_host_gflops()
            if self.dilation is None:
                self.dilation = auto_dilation(self.spec, self.host_gflops) if self.emulate else 1.0
            if self.network == "kernel":
                check_available()
                self.kernel = KernelNetwork(self.spec)
            started = {d: self._spawn(d, self._control_endpoint(d)) for d in self.spec.devices}
            for d, proc in started.items():
                self.endpoints[d] = self._await_ready(d, proc)
                if self.kernel is not None:
                    self.kernel.attach(d, proc)
            emulation = None
            if self.emulate:
                emulation = Emulation(
                    self.host_gflops,
                    self.link_schedules,
                    self.speed_schedules,
                    self.dilation,
                    self.unit_seconds,
                )
            self.controller = Controller(
                self.spec,
                self.endpoints,
                model=self.model,
                seed=self.seed,
                input_shape=self.input_shape,
                emulation=emulation,
                replan=self.replan,
                curve_keys=self.curve_keys,
                kernel_links=None if self.kernel is None else self.kernel.peer_endpoints(),
                **self.controller_options,
            )
            if self.kernel is not None:
                ctl = self.controller
                self.kernel.start_shaping(lambda: (ctl.emulation, ctl.epoch))
        except KernelNetworkError as exc:
            self.close()
            raise ClusterError(f"kernel network mode: {exc}") from None
        except BaseException:
            self.close()
            raise
        return self.controller

    def _control_endpoint(self, device: str) -> str:
        """Where the controller reaches ``device``'s worker: loopback, or in kernel network mode a unix
        socket (the worker's namespace has no route to ours, and this channel must not be shaped)."""
        if self.network == "kernel":
            return f"ipc://{self.workdir}/control-{list(self.spec.devices).index(device)}.sock"
        return f"tcp://{self.host}:*"

    def _spawn(self, device: str, endpoint: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "runtime.worker", "--bind", endpoint, "--device-id", device]
        if self.network == "kernel":
            cmd = namespace_process(cmd + ["--bind", f"tcp://0.0.0.0:{PEER_PORT}"])
            if self.curve_keys is None:  # its links reach only its neighbours' namespaces, made here
                cmd.append("--insecure")
        cmd += ["--model-file", str(self.checkpoint), "--parent-pid", str(os.getpid())]
        if self.curve_keys is not None:
            cmd += ["--curve-keys", str(self.curve_keys)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        if models.is_user_model(self.model):  # the worker may import it, from where we did
            cmd += ["--allow-model", self.model]
            root = models.import_root(self.model)
            if root is not None:
                env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(root), env.get("PYTHONPATH"))))
        with open(self.workdir / f"worker-{device}.log", "ab") as logfile:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=logfile,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        _LIVE[proc.pid] = proc
        self.processes[device] = proc
        return proc

    def _await_ready(self, device: str, proc: subprocess.Popen) -> str:
        """Read the worker's ``READY <endpoint>`` line."""
        deadline = time.time() + self.start_timeout_s
        line = b""
        while time.time() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.time()))
            if not ready:
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
        proc.stdout.close()
        if not line.startswith(b"READY "):
            tail = (self.workdir / f"worker-{device}.log").read_text(errors="replace")[-2000:]
            raise ClusterError(f"worker {device} did not start (exit code {proc.poll()}):\n{tail}")
        return line.split()[1].decode()

    def kill(self, device: str) -> None:
        """Kill a worker at once (SIGKILL), as a crash or power loss would."""
        if self.kernel is not None:
            self.kernel.detach(device)
        _kill_group(self.processes[device])

    def restart(self, device: str) -> None:
        """Start a killed worker again on its old endpoint; the controller notices it by itself."""
        proc = self.processes[device]
        if proc.poll() is None:
            raise ClusterError(f"worker {device} is still running")
        deadline = time.time() + 10.0
        while True:  # the old port may linger for a moment after the kill
            new = self._spawn(device, self.endpoints[device])
            try:
                self._await_ready(device, new)
                break
            except ClusterError:
                _kill_group(new)
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        if self.kernel is not None:  # its old links died with its old namespace
            try:
                self.kernel.attach(device, new)
            except KernelNetworkError as exc:
                raise ClusterError(f"worker {device}: its links could not be wired again: {exc}") from None

    def close(self) -> None:
        """Stop every worker (politely, then by force) and remove the temporary files (in kernel network
        mode the namespaces, veths and qdiscs go with the workers)."""
        try:
            if self.kernel is not None:
                self.kernel.close()
            if self.controller is not None:
                try:
                    self.controller.shutdown_workers()
                finally:
                    self.controller.close()
                    self.controller = None
        finally:  # whatever failed above, the workers and the files go
            deadline = time.time() + 2.0
            for proc in self.processes.values():
                try:
                    proc.wait(timeout=max(0.0, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    pass
                _kill_group(proc)
            self.processes.clear()
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None


def _even_plan(spec: ClusterSpec, graph) -> Plan:
    """One stage over every device, split evenly: a smoke test that touches every worker."""
    devices = list(spec.devices)[: graph.extent(len(graph.units))]
    return Plan.build(spec.source, spec.sink, [(0, len(graph.units), dict.fromkeys(devices, 1.0))])


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.cluster", description="Run a local emulated cluster."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start one worker per device and keep them running until Ctrl-C")
    up.add_argument("config", type=Path, help="cluster file (disnet-cluster/1 YAML or disnet-mesh/1 JSON)")
    up.add_argument("--model", default="tiny", type=models.model_argument, help=models.MODEL_HELP)
    up.add_argument("--seed", type=int, default=0)
    up.add_argument("--no-emulate", action="store_true", help="no pacing and no link shaping")
    up.add_argument(
        "--network",
        choices=NETWORKS,
        default="emulated",
        help="who shapes the links: the workers' radio timers, or tc on veths between network namespaces",
    )
    up.add_argument(
        "--dilation",
        type=float,
        default=None,
        help="run D x slower than the emulated cluster (default: auto)",
    )
    up.add_argument(
        "--curve-keys", type=Path, help="CurveZMQ key directory (python -m runtime.security keygen)"
    )
    up.add_argument(
        "--check", action="store_true", help="run one request over every worker and compare outputs"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        spec = load_cluster(args.config)
    except SpecError as exc:
        parser.exit(2, f"cluster: error: {exc}\n")
    if args.dilation is not None and not args.dilation >= 1:
        parser.error("--dilation must be >= 1")
    try:
        _up(args, spec)
    except ClusterError as exc:
        parser.exit(2, f"cluster: error: {exc}\n")


def _up(args: argparse.Namespace, spec: ClusterSpec) -> None:
    """Run the cluster of ``up`` until Ctrl-C or SIGTERM."""
    with LocalCluster(
        spec,
        model=args.model,
        seed=args.seed,
        emulate=not args.no_emulate,
        curve_keys=args.curve_keys,
        network=args.network,
        dilation=args.dilation,
    ) as cluster:
        print(
            f"cluster {spec.name}: {len(spec.devices)} workers, model {args.model}, logs in {cluster.workdir}"
        )
        if cluster.host_gflops:
            print(
                f"host: {cluster.host_gflops:.1f} GFLOP/s per thread (pacing reference), dilation {cluster.dilation:g}"
            )
        for d, endpoint in cluster.endpoints.items():
            print(f"  {d:>6}  {endpoint}  pid {cluster.processes[d].pid}")
        if args.check:
            ctl = cluster.controller
            ctl.deploy(_even_plan(spec, ctl.graph))
            x = torch.randn(1, *ctl.input_shape, generator=torch.Generator().manual_seed(args.seed))
            result = ctl.infer(x)
            with torch.no_grad():
                want = models.build(args.model, seed=args.seed)(x)
            err = (result.output - want).abs().max().item()
            print(
                f"check: {ctl.plan.describe()}: latency {result.latency_s * 1e3:.1f} ms, max |error| {err:.2e}"
            )
        # Ctrl-C stops it even when started in the background of a script, which starts it with SIGINT
        # ignored (Python then never turns SIGINT into KeyboardInterrupt); `kill` stops it as cleanly
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)
        try:  # told only once a Ctrl-C lands here, where it stops the cluster cleanly
            print("Ctrl-C to stop", flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nstopping")


if __name__ == "__main__":
    main()
