"""Runtime benchmark: transport vs raw ZeroMQ, distributed VGG-16 vs the in-process executor, pipelining.

Three measurements, each side by side in one run so the ratio does not depend on the machine:

1. transport: 1 MB and 10 MB float32 tensors DEALER -> ROUTER over loopback TCP from another process
   through runtime.transport (msgpack header, validation, zero-copy buffer) vs raw pyzmq multipart
   sends of the same bytes; throughput ratio (target >= 0.8) and the per-message overhead of
   header-only messages;
2. overhead: VGG-16 (224x224) on a 4-stage vertical plan over 4 unshaped, unpaced workers vs
   ``run_plan`` of the same plan in this process; added milliseconds per stage boundary (target <= 5),
   both as latency difference and as latency minus the workers' own compute time;
3. pipelining: a 3-stage plan over 3 paced devices (stages balanced from a measured profile), a
   stream of requests with 3 in flight vs one request at a time; throughput ratio (target >= 1.8).

Rerun: python -m bench.runtime_bench [--quick] [--json OUT]
(Not named bench/runtime.py: run as a script, that file would shadow the runtime package for every
script in bench/.)
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import torch
import zmq
from rich.table import Table
from torch import nn

from cli import flags
from cli.output import script_console, write_json
from runtime import models
from runtime.cluster import LocalCluster
from runtime.emulation import measure_host_gflops
from runtime.executor import run_plan
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.profiler import profile_units
from runtime.spec import ClusterSpec, complete_cluster
from runtime.transport import Header, Kind, MiB, recv, send
from runtime.worker import keep_freed_memory

torch.set_num_threads(1)


def _mesh(ids: list[str], gflops: list[float], mbps: float = 1000.0) -> ClusterSpec:
    return complete_cluster("bench", dict(zip(ids, gflops, strict=True)), mbps)


# ---- 1. transport --------------------------------------------------------------------------------


SIZES = {"1MB": MiB, "10MB": 10 * MiB, "header": 0}
BAND = Header(Kind.BAND, 1, {"plan": 1, "stage": 1, "path": ["a", "b"], "hop": 1})


def _sender(endpoint: str, runs: list[tuple[str, bool, int]]) -> None:
    """Child process: for each run (size, through transport?, n) wait for "go", then send n messages."""
    torch.set_num_threads(1)
    keep_freed_memory()
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(endpoint)
    dealer.send(b"ready")
    for size, use_transport, n in runs:
        tensor = torch.randn(SIZES[size] // 4)
        raw = [b"h" * 80, tensor.numpy().view("uint8")] if SIZES[size] else [b"h" * 40]
        dealer.recv()
        for _ in range(n):
            if use_transport and SIZES[size]:
                send(dealer, BAND, [tensor], rows=[(0, tensor.numel())])
            elif use_transport:
                send(dealer, Header(Kind.PING, 7, {"plan": 3}))
            else:
                dealer.send_multipart(raw, copy=False)
    dealer.recv()
    ctx.destroy(linger=1000)


def bench_transport(quick: bool) -> dict:
    """Sender in another process (as workers are), receiver here; runs interleaved, best of 6.

    Both processes keep freed buffers like the workers do (``keep_freed_memory``), so neither side
    pays page faults that the other does not.
    """
    keep_freed_memory()
    counts = {"1MB": 30 if quick else 100, "10MB": 5 if quick else 15, "header": 3000 if quick else 20000}
    # interleaved, and which of the pair goes first alternates, so neither side inherits a warmer cache
    runs = [
        (size, tr, counts[size])
        for i in range(6)
        for size in SIZES
        for tr in ((True, False), (False, True))[i % 2]
    ]
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    endpoint = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
    proc = multiprocessing.get_context("spawn").Process(target=_sender, args=(endpoint, runs), daemon=True)
    proc.start()
    best: dict[tuple[str, bool], float] = {}
    try:
        ident, _ = router.recv_multipart()
        for size, use_transport, n in runs:
            start = time.perf_counter()
            router.send_multipart([ident, b"go"])
            for _ in range(n):
                if use_transport:
                    recv(router)  # decode and validate, tensors viewed zero-copy
                else:
                    router.recv_multipart(copy=False)
            elapsed = time.perf_counter() - start
            best[(size, use_transport)] = min(elapsed, best.get((size, use_transport), float("inf")))
        router.send_multipart([ident, b"done"])
        proc.join(timeout=10)
    finally:
        if proc.is_alive():
            proc.kill()
        ctx.destroy(linger=0)
    out = {}
    for size in ("1MB", "10MB"):
        mb, n = SIZES[size] / MiB, counts[size]
        t, r = best[(size, True)], best[(size, False)]
        out[size] = {"transport_MBps": n * mb / t, "raw_MBps": n * mb / r, "ratio": r / t}
    n, t, r = counts["header"], best[("header", True)], best[("header", False)]
    out["small"] = {"transport_us": t / n * 1e6, "raw_us": r / n * 1e6, "overhead_us": (t - r) / n * 1e6}
    return out


# ---- 2. distributed overhead -----------------------------------------------------------------------


def bench_overhead(quick: bool) -> dict:
    name = "vgg16_bn"
    ids = ["w0", "w1", "w2", "w3"]
    with LocalCluster(_mesh(ids, [10.0] * 4), model=name, emulate=False) as cluster:
        ctl = cluster.controller
        graph = ctl.graph
        pools = [
            u.index + 1
            for u in graph.units
            if any(isinstance(getattr(op, "module", None), nn.MaxPool2d) for op in u.ops)
        ]
        cuts = [0, pools[1], pools[2], pools[4], len(graph.units)]  # after pool2, pool3, pool5
        plan = Plan.build(
            "w0", "w3", [(a, b, {d: 1.0}) for a, b, d in zip(cuts[:-1], cuts[1:], ids, strict=True)]
        )
        ctl.deploy(plan)
        boundaries = len(plan.stages) - 1  # source and sink are local hand-overs here
        real_graph = LayerGraph.from_model(models.build(name, seed=0), graph.input_shape, name)
        gen = torch.Generator().manual_seed(0)
        xs = [torch.randn(1, *graph.input_shape, generator=gen) for _ in range(3 if quick else 7)]
        ctl.infer(xs[0])  # warm-up: first touch of the mapped weights
        run_plan(real_graph, plan, xs[0])
        local, dist, overhead = [], [], []
        for x in xs:
            start = time.perf_counter()
            want, _ = run_plan(real_graph, plan, x)
            local.append(time.perf_counter() - start)
            result = ctl.infer(x)
            torch.testing.assert_close(result.output, want, rtol=1e-4, atol=1e-4)
            dist.append(result.latency_s)
            compute = sum(d.compute_s for d in result.timeline.devices.values())
            overhead.append(result.latency_s - compute)
    return {
        "plan": plan.describe(),
        "boundaries": boundaries,
        "in_process_s": statistics.median(local),
        "distributed_s": statistics.median(dist),
        "added_ms_per_boundary": (statistics.median(dist) - statistics.median(local)) / boundaries * 1e3,
        "non_compute_ms_per_boundary": statistics.median(overhead) / boundaries * 1e3,
    }


# ---- 3. pipelining ---------------------------------------------------------------------------------


def _balanced_cuts(graph, seconds: list[float], stages: int) -> list[int]:
    """Cut points splitting the profiled time into ``stages`` parts with the smallest maximum."""
    cuts = graph.cut_points
    best, best_cost = None, float("inf")
    for i in range(1, len(cuts) - 1):
        for j in range(i + 1, len(cuts) - 1):
            bounds = [0, cuts[i], cuts[j], len(graph.units)]
            parts = [sum(seconds[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            if max(parts) < best_cost:
                best, best_cost = bounds, max(parts)
    return best


def bench_pipeline(quick: bool) -> dict:
    ids = ["p0", "p1", "p2"]
    stage_s = 0.08  # paced compute time per stage
    with LocalCluster(_mesh(["prof"], [1.0]), model="resnet18", emulate=False) as cluster:
        seconds = profile_units(cluster.controller, "prof", repeats=3)
        graph = cluster.controller.graph
    bounds = _balanced_cuts(graph, seconds, 3)
    parts = [sum(seconds[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    host = measure_host_gflops()
    # device speed chosen so that every stage takes about stage_s of paced time
    gflops = [host * cpu / stage_s for cpu in parts]
    spec = _mesh(ids, gflops, mbps=200.0)
    n = 6 if quick else 12
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(1, *graph.input_shape, generator=gen) for _ in range(n)]
    with LocalCluster(spec, model="resnet18", host_gflops=host) as cluster:
        ctl = cluster.controller
        plan = Plan.build(
            "p0", "p2", [(a, b, {d: 1.0}) for a, b, d in zip(bounds[:-1], bounds[1:], ids, strict=True)]
        )
        ctl.deploy(plan)
        ctl.infer(xs[0])  # warm-up
        start = time.perf_counter()
        sequential = list(ctl.stream(xs, window=1))
        t_seq = time.perf_counter() - start
        start = time.perf_counter()
        pipelined = list(ctl.stream(xs, window=3))
        t_pipe = time.perf_counter() - start
        for a, b in zip(sequential, pipelined, strict=True):
            torch.testing.assert_close(a.output, b.output)
    return {
        "plan": plan.describe(),
        "stage_cpu_ms": [p * 1e3 for p in parts],
        "requests": n,
        "sequential_rps": n / t_seq,
        "pipelined_rps": n / t_pipe,
        "speedup": t_seq / t_pipe,
        "latency_seq_ms": statistics.median(r.latency_s for r in sequential) * 1e3,
        "latency_pipe_ms": statistics.median(r.latency_s for r in pipelined) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    flags.add_json(parser, help="also write the figures as JSON here")
    args = parser.parse_args()
    console = script_console()
    figures = {}
    with console.status("transport ..."):
        figures["transport"] = bench_transport(args.quick)
    with console.status("VGG-16 over 4 workers vs in-process ..."):
        figures["overhead"] = bench_overhead(args.quick)
    with console.status("pipelining over 3 paced devices ..."):
        figures["pipeline"] = bench_pipeline(args.quick)
    t, o, p = figures["transport"], figures["overhead"], figures["pipeline"]
    table = Table(title="runtime benchmark (measured side by side in one run)")
    for col in ("measurement", "runtime", "reference", "ratio / added", "target"):
        table.add_column(col)
    for mb in ("1MB", "10MB"):
        r = t[mb]
        table.add_row(
            f"transport {mb} tensor", f"{r['transport_MBps']:,.0f} MB/s", f"raw zmq {r['raw_MBps']:,.0f} MB/s",
            f"{r['ratio']:.2f}x", ">= 0.8",
        )  # fmt: skip
    s = t["small"]
    table.add_row(
        "header-only message", f"{s['transport_us']:.1f} us", f"raw zmq {s['raw_us']:.1f} us",
        f"+{s['overhead_us']:.1f} us/msg", "",
    )  # fmt: skip
    table.add_row(
        f"VGG-16, {o['boundaries']} stage boundaries", f"{o['distributed_s'] * 1e3:.0f} ms",
        f"in-process {o['in_process_s'] * 1e3:.0f} ms", f"{o['added_ms_per_boundary']:+.1f} ms/boundary", "<= 5",
    )  # fmt: skip
    table.add_row(
        "  latency minus worker compute",
        "",
        "",
        f"{o['non_compute_ms_per_boundary']:.1f} ms/boundary",
        "<= 5",
    )
    table.add_row(
        f"pipelining, {p['requests']} requests", f"{p['pipelined_rps']:.2f} req/s (window 3)",
        f"{p['sequential_rps']:.2f} req/s (window 1)", f"{p['speedup']:.2f}x", ">= 1.8",
    )  # fmt: skip
    console.print(table)
    console.print(f"VGG-16 plan: {o['plan']}")
    console.print(
        f"pipeline plan: {p['plan']} (stage CPU ms {', '.join(f'{c:.1f}' for c in p['stage_cpu_ms'])})"
    )
    console.print("rerun: python -m bench.runtime_bench [--quick] [--json OUT]")
    if args.json:
        write_json(args.json, figures, console, indent=1)


if __name__ == "__main__":
    main()
