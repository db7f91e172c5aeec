"""Meshes of the DISNET generator family, and the split of their seeds between training and evaluation.

The DISNET evaluation draws its meshes with ``generate_random_graph(n, m, weight_range=(10, 50),
comp_rate_range=(1, 10))`` (../shared/scenarios/README.md): a connected random graph of ``n`` devices and
``m`` undirected links (about 1.5 n), each link's Mbit/s an integer in 10..50, each device's
``compute_rate`` an integer in 1..10, a power class drawn from the authors' three, source and sink two
distinct random devices. ``generate_mesh`` draws one as a ``disnet-mesh/1`` document (so it can be written
to a file and loaded with ``--cluster``); ``mesh_spec`` builds its ``ClusterSpec``.

**Seed protocol.** Training draws mesh seeds below ``EVAL_SEED_BASE``; evaluation (``bench.generalization``)
draws them from ``EVAL_SEED_BASE`` up. A world used to report a figure is never one a policy was trained on.

    python -m env.meshes --devices 12 --seed 1000003 > mesh.json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from runtime.spec import MESH_FORMAT, ClusterSpec, parse_cluster

EVAL_SEED_BASE = 1_000_000  # seeds >= this are for evaluation only
POWER_CLASSES_W = ((3.8, 1.0), (2.2, 0.8), (1.2, 1.1))  # (compute, transmit = receive) watts; idle 0
LINK_MBPS = (10, 50)
COMPUTE_RATE = (1, 10)


def default_link_count(n_devices: int) -> int:
    """The family's link count for ``n`` devices: about 1.5 n (10 -> 15), at least a spanning tree."""
    return max(n_devices - 1, min(round(1.5 * n_devices), n_devices * (n_devices - 1) // 2))


def generate_mesh(n_devices: int, seed: int, n_links: int | None = None) -> dict[str, Any]:
    """A connected random mesh of the DISNET family as a ``disnet-mesh/1`` document (same seed, same mesh)."""
    if not isinstance(n_devices, int) or n_devices < 2:
        raise ValueError(f"a mesh needs at least 2 devices, not {n_devices!r}")
    if seed < 0:  # numpy's generators refuse it, in words that name no seed
        raise ValueError(f"a mesh seed must be >= 0, not {seed}")
    most = n_devices * (n_devices - 1) // 2
    m = default_link_count(n_devices) if n_links is None else n_links
    if not (n_devices - 1 <= m <= most):
        raise ValueError(
            f"{n_devices} devices take {n_devices - 1} to {most} links to stay connected, not {m}"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_devices)
    edges = {frozenset((int(order[i]), int(order[rng.integers(i)]))) for i in range(1, n_devices)}
    while len(edges) < m:  # a random spanning tree, then random extra links
        a, b = rng.choice(n_devices, size=2, replace=False)
        edges.add(frozenset((int(a), int(b))))
    devices = {}
    for d in range(n_devices):
        compute_w, radio_w = POWER_CLASSES_W[rng.integers(len(POWER_CLASSES_W))]
        devices[str(d)] = {
            "compute_rate": int(rng.integers(COMPUTE_RATE[0], COMPUTE_RATE[1] + 1)),
            "power_w": {"compute": compute_w, "transmit": radio_w, "receive": radio_w, "idle": 0.0},
        }
    links = [
        [str(a), str(b), int(rng.integers(LINK_MBPS[0], LINK_MBPS[1] + 1))] for a, b in map(sorted, edges)
    ]
    links.sort(key=lambda link: (int(link[0]), int(link[1])))
    source, sink = (str(int(x)) for x in rng.choice(n_devices, size=2, replace=False))
    return {
        "format": MESH_FORMAT,
        "name": f"family-n{n_devices}-m{m}-s{seed}",
        "devices": devices,
        "links": links,
        "source": source,
        "sink": sink,
    }


def mesh_spec(
    n_devices: int, seed: int, n_links: int | None = None, *, bandwidth_cap: float | None = None
) -> ClusterSpec:
    """The ``ClusterSpec`` of ``generate_mesh(n_devices, seed, n_links)``."""
    doc = generate_mesh(n_devices, seed, n_links)
    return parse_cluster(doc, origin=doc["name"], bandwidth_cap=bandwidth_cap)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print a mesh of the DISNET generator family as JSON.")
    parser.add_argument("--devices", type=int, required=True, help="number of devices (>= 2)")
    parser.add_argument(
        "--links", type=int, default=None, help="number of links (default about 1.5 x devices)"
    )
    parser.add_argument(
        "--seed", type=int, required=True, help=f"seeds >= {EVAL_SEED_BASE} are for evaluation"
    )
    args = parser.parse_args(argv)
    try:
        doc = generate_mesh(args.devices, args.seed, args.links)
    except ValueError as exc:
        parser.error(str(exc))
    json.dump(doc, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
