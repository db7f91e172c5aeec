"""``deploy.py --streams FILE.yaml``: plan the streams of a streams file, serve them live, report.

On a local emulated cluster of the ``--cluster`` spec: plans every stream with the analytic optimiser,
jointly or independently (the file's ``planning``), serves each stream at its ``fps`` (or, without one,
at the equal rate the plan predicts), checks every output against the unsplit model and writes the
per-stream table, JSON (``--json``), TensorBoard scalars and a plot over time (under ``--out``).
The links follow the spec's rates, or the traces or scenario given (``--traces``, ``--collapse``), and
each stream's lane is re-planned as they move (serving/streams.py, ``Adaptation``: the robust optimiser
kept to the lane's devices, frames caught by a collapse rescued); ``--static`` keeps every lane's plan
unless a worker of it dies, the reference an adaptive run is measured against. ``--chaos`` kills a
worker that a stream's plan uses (no stream's source or sink) halfway through. The cluster runs with a
time dilation (``--dilation``, default automatic for this host) so that the host can emulate it
faithfully; every time reported is the emulated cluster's (a re-plan's decision too takes 1 / D of its
wall time), and the emulation's fidelity per device is printed and written to the JSON with the
dilation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console

from agents import make_planner
from agents.base import Planner
from agents.streams import StreamsPlan
from env.cost_model import CostModel
from env.network import NetworkState
from env.profiles import host_profile, pacing, resolve_profile
from env.snapshot import Snapshot
from runtime import models
from runtime.cluster import LocalCluster
from runtime.emulation import ScheduleLike
from runtime.fidelity import fidelity_fields, print_fidelity
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.spec import ClusterSpec
from serving.stream_output import plot, print_table, write_tensorboard
from serving.streams import (
    Adaptation,
    Chaos,
    StreamsFile,
    StreamsFileError,
    StreamsRun,
    plan_streams,
    replanner,
    serve_streams,
)


def chaos_victim(spec: ClusterSpec, streams: StreamsFile, plans) -> str | None:
    """A device some plan computes on that is no stream's source or sink, nor a relay on every path from
    a stream's source to its sink (None if there is none)."""
    ends = {s.source for s in streams.streams} | {s.sink for s in streams.streams}
    used = [d for p in plans for st in p.stages for d in st.devices if d not in ends]
    safe = [d for d in used if all(spec.connected_without(s.source, s.sink, d) for s in streams.streams)]
    return safe[0] if safe else None


def deploy_streams(
    spec: ClusterSpec,
    streams: StreamsFile,
    *,
    seed: int,
    chaos: bool,
    dilation: float | None,
    links: Mapping[tuple[str, str], ScheduleLike] | None = None,
    static: bool = False,
    replan_margin: float | None = Adaptation.margin,
    cost_model: str = "profile",
    profile_file: str | Path | None = None,
    pacing_mode: str = "profile",
    out_dir: Path,
    json_path: Path | None,
    console: Console,
) -> StreamsRun:
    """Plan the streams on ``spec`` (on this host's profile of the model, or ``profile_file``; FLOPs alone
    for ``cost_model="flops"``), serve them on a local emulated cluster dilated ``dilation`` times (None:
    automatic), its links following ``links`` (None: the spec's rates) and paced by the profile
    (``pacing_mode``, env/profiles.py), re-planned as conditions move unless ``static`` (a new plan must gain
    ``replan_margin``), and write their reports."""
    name = streams.streams[0].model
    model = models.build(name, seed=seed)
    graph = LayerGraph.from_model(model, models.input_shape(name), name)
    profile = resolve_profile(graph, cost_model, profile_file, same_host=True, say=console.print)
    cost = CostModel(graph, spec, profile)
    snapshot = NetworkState.static(spec).snapshot(0.0)
    planner = make_planner("optimal", graph=graph, spec=spec, cost_model=cost)
    planned = _plan(streams, planner, cost, snapshot, graph, console)
    fps = [s.fps or planned.fps for s in streams.streams]
    if min(fps) <= 0:
        raise StreamsFileError(
            "a stream without fps cannot be served: the planned rate is 0 (an SLO is too tight); "
            "give it an fps or a looser slo_s"
        )
    # static lanes are re-planned only when a worker dies, on the rates they were planned on; adaptive
    # lanes re-plan on the live view then too
    replanners = {
        s.name: replanner(s, planner, snapshot, graph, p.devices)
        for s, p in zip(streams.streams, planned.plans, strict=True)
        if static
    }
    paced = pacing(profile or host_profile(graph, same_host=True, say=console.print), pacing_mode)
    adaptation = None if static else Adaptation(planner, graph, margin=replan_margin)
    with LocalCluster(
        spec, model=name, seed=seed, dilation=dilation, link_schedules=links, **paced
    ) as cluster:
        console.print(f"emulation: time dilation {cluster.dilation:g}")
        events = _chaos(cluster, streams, planned.plans, fps, console) if chaos else []
        run = serve_streams(
            cluster.controller,
            streams.streams,
            planned.plans,
            fps,
            streams.frames,
            model,
            replanners=replanners,
            adaptation=adaptation,
            chaos=events,
            seed=seed,
            restart_clock=links is not None,  # the links' schedules start with the first frame
        )
        emulation = fidelity_fields(
            cluster.controller.fidelity.per_device(), cluster.dilation, cluster.pacing
        )
    print_fidelity(emulation["fidelity"], emulation["dilation"], emulation["pacing"], console)
    kept = "kept static" if static else "re-planned as conditions move"
    title = f"{len(streams.streams)} stream(s) of {name} on {spec.name}, planned {streams.planning}ly, {kept}"
    _write(run, streams, planned, emulation, title, out_dir, json_path, console)
    return run


def _plan(
    streams: StreamsFile,
    planner: Planner,
    cost: CostModel,
    snapshot: Snapshot,
    graph: LayerGraph,
    console: Console,
) -> StreamsPlan:
    """Every stream's plan, as the file's ``planning`` asks, shown as it is made."""
    console.print(f"planning {len(streams.streams)} stream(s) {streams.planning}ly ...")
    planned = plan_streams(streams.streams, streams.planning, planner, cost, snapshot, graph, console.print)
    console.print(f"predicted equal rate: {planned.fps:.3f} frames/s per stream")
    for s, p in zip(streams.streams, planned.plans, strict=True):
        console.print(f"  {s.name}: {p.describe()}")
    return planned


def _chaos(
    cluster: LocalCluster, streams: StreamsFile, plans: Sequence[Plan], fps: Sequence[float], console: Console
) -> list[Chaos]:
    """Kill the ``chaos_victim`` halfway through the slowest stream (nothing if there is none)."""
    victim = chaos_victim(cluster.spec, streams, plans)
    if victim is None:
        console.print(
            "[yellow]--chaos: every device a plan uses is some stream's source or sink, or a relay on every "
            "path between them: none killed"
        )
        return []
    half = streams.frames / 2 / min(fps)
    return [(half, lambda: cluster.kill(victim), f"killed worker {victim}")]


def _write(
    run: StreamsRun,
    streams: StreamsFile,
    planned: StreamsPlan,
    emulation: dict,
    title: str,
    out_dir: Path,
    json_path: Path | None,
    console: Console,
) -> None:
    """The per-stream table on screen, TensorBoard scalars and a plot under ``out_dir``, JSON (with the
    ``emulation``'s dilation and fidelity) if asked."""
    print_table(run, console, title)
    write_tensorboard(run, out_dir / "tensorboard" / "streams")
    plot(run, out_dir / "streams.png")
    console.print(f"wrote {out_dir / 'streams.png'} and TensorBoard scalars under {out_dir / 'tensorboard'}")
    if json_path is not None:
        summary = run.summary() | {"planning": streams.planning, "predicted_fps": planned.fps} | emulation
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2))
        console.print(f"wrote {json_path}")
