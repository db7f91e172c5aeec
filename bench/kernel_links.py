"""Hop times on kernel-shaped links against the radio model, side by side with the emulated radio.

A line a - b - c (a reaches c only through b's relay), the tiny model at 128x128 so that the band a sends
is 1 MiB, every link at one rate at a time. For each network mode (``emulated``: the workers' radio
timers; ``kernel``: tc on veths between network namespaces, runtime/kernel_network.py) and each rate, a
few requests of a plan whose first stage runs on a and the rest on c; prints, per mode and rate, the
median over hops of (radio seconds a hop held its sender) / (bytes x 8 / rate), the ratio the cost model
assumes to be 1, and the median request latency, with the kernel's over the emulated one's.

Root only (network namespaces and tc). Rerun: python -m bench.kernel_links [--rates 5,20,50] [--requests 4]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

import torch
from rich.table import Table

from cli import flags
from cli.output import script_console
from runtime.cluster import NETWORKS, LocalCluster
from runtime.plan import Plan
from runtime.spec import parse_cluster

MODEL, SHAPE = "tiny", (3, 128, 128)
console = script_console()

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
        "links": [{"a": "a", "b": "b", "mbps": 10.0}, {"a": "b", "b": "c", "mbps": 10.0}],
    },
    origin="line3",
)


def measure(network: str, rates: list[float], requests: int) -> dict[float, tuple[float, float]]:
    """Per rate: (median hop time / model hop time, median request latency s)."""
    out = {}
    x = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(0))
    with LocalCluster(LINE3, model=MODEL, input_shape=SHAPE, network=network) as cluster:
        ctl = cluster.controller
        units = len(ctl.graph.units)
        ctl.deploy(Plan.build("a", "c", [(0, 3, {"a": 1.0}), (3, units, {"c": 1.0})]))
        for rate in rates:
            ctl.configure(replace(ctl.emulation, link_schedules={("a", "b"): rate, ("b", "c"): rate}))
            ratios, latencies = [], []
            for _ in range(requests):
                result = ctl.infer(x)
                latencies.append(result.latency_s)
                for hop in result.timeline.of("tx"):
                    ratios.append((hop["end"] - hop["start"]) / (hop["bytes"] * 8 / (rate * 1e6)))
            out[rate] = (statistics.median(ratios), statistics.median(latencies))
            console.print(
                f"{network:8s} {rate:5g} Mbit/s: hop/model {out[rate][0]:.3f}, latency {out[rate][1]:.3f} s"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="5,20,50", help="link rates to try, Mbit/s (comma-separated)")
    parser.add_argument("--requests", type=flags.at_least_one, default=4, help="requests per rate and mode")
    args = parser.parse_args()
    try:
        rates = [flags.positive(r) for r in args.rates.split(",")]
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--rates: {exc}")
    results = {network: measure(network, rates, args.requests) for network in NETWORKS}
    table = Table(title="one 1 MiB band relayed a -> b -> c: hop radio time / (bytes x 8 / rate), medians")
    for column in ("Mbit/s", "emulated hop/model", "kernel hop/model", "latency kernel / emulated"):
        table.add_column(column, justify="right")
    for rate in rates:
        (emu_hop, emu_lat), (ker_hop, ker_lat) = results["emulated"][rate], results["kernel"][rate]
        table.add_row(f"{rate:g}", f"{emu_hop:.3f}", f"{ker_hop:.3f}", f"{ker_lat / emu_lat:.3f}")
    console.print(table)


if __name__ == "__main__":
    main()
