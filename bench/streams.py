"""Many cameras, one mesh: frames per second sustained by one stream and by three, planned alone and jointly.

VGG-16 (bn) on configs/clusters/mesh0.yaml capped at 15 Mbit/s (configs/scenarios/mesh0-15.yaml);
streams to sink 4, stream one from device 8 (the mesh's source), streams two and three from devices 1 and
6; every stream's p95 latency must stay within the SLO (``--slo``, 5 s at full size and speed). Four
figures, each planned on the cost model's contention pricing (env/contention.py) and then served live on
an emulated cluster:

  single_device_fps  one stream, the whole model on the best single device;
  single_device_no_slo_fps  the same device's throughput with no SLO (one frame after another): the
                     second reading, for a host where no single device meets the SLO and the first is 0;
  pipelined_fps      one stream, the joint planner's plan (agents/streams.py), frames pipelined;
  independent_fps    three streams, each planned alone by the optimiser, at an equal rate;
  joint_fps          three streams planned jointly, at an equal rate (the best of ``--restarts`` searches
                     from other seeds, 8 rounds of 2000 plans each; all the planning takes ~14 minutes).

A fifth, predicted only, asks whether planning jointly matters beyond the throughput objective:
``independent_pipelined`` is each of the three streams planned alone by the joint planner (the plan
``pipelined`` finds for one stream, from each source), then priced together. ``--groupings`` adds a
sixth, also predicted only, the joint planner's yardstick: ``best_disjoint_grouping``, the highest equal
rate over every assignment of the devices to the three streams' disjoint groups, each stream on the best
of the joint planner's plans for its group (agents/streams.py ``best_disjoint_grouping``; a few minutes).
Last, ``compute_bound_fps``: what no plan can beat, every device computing whole frames all the time.

Live, each configuration is served open loop for ``--frames`` frames per stream (after one warm-up frame
per stream), ``--tries`` times: first at its predicted rate, then 15% higher after a rate every stream met
and 15% lower after one a stream missed (p95 over the SLO, below 90% of the rate, a frame lost or wrong),
until there is one of each, then halfway between the highest met and the lowest missed (``next_rate``), so
every figure is searched alike, up as well as down (with no SLO, a rate is met when it is sustained and no
frame is lost or wrong). The live figure is the highest rate every stream met (0 if none; a figure
predicted 0, whose frame alone misses the SLO, is not served, and a ratio over a 0 figure is n/a, null in
the JSON). ``--kill`` kills a worker the joint plans use halfway through the joint
run (in every try). Every output is checked against the unsplit model. Targets: pipelined_fps >= 4x
single_device_fps (read over single_device_no_slo_fps too, which favours the single device), joint_fps >=
1.3x independent_fps, 0 lost, every output exact.

The host computes every frame for real and cannot run ten emulated devices at their nominal speed at
once, so the live cluster runs with a time dilation D (runtime/emulation.py; automatic for this host by
default, ``--dilation D`` to force): D x slower on the wall clock, while arrivals, latencies, rates and the
SLO are in the emulated cluster's time (serving/streams.py). Each figure prints the emulation's fidelity
(achieved over nominal compute speed, runtime/fidelity.py: each device's lowest over the figure's timed
runs), with a warning below 0.95; the JSON records ``dilation`` and ``fidelity_min`` per figure under
``emulation``.

Every predicted rate reads p95 over replays whose band and transfer seconds vary by up to ``JITTER``
(10%, env/contention.py), as a live run's do.

Planning uses this host's profile of the model and the emulated devices are paced by it (env/profiles.py),
so a live figure differs from its prediction only by what the runtime does; a reduced ``--input-size`` has
no profile, so it is planned on FLOPs alone and paced by CPU time (the JSON records ``cost_model`` and
``pacing``).

``--slowdown K`` plans and serves a cluster whose every device and link is K times slower, and
``--input-size S`` serves S x S images (compute and bytes scale with the area); both scale every time
alike (the SLO too), so the ratios keep their meaning, and the JSON records both. The dilation makes
``--slowdown`` unnecessary for fidelity: it changes the problem, not the emulation's accuracy.

Rerun: python -m bench.streams [--json PATH] [--frames 12] [--tries 4] [--kill] [--dilation D]
       [--slowdown 1] [--input-size 224] [--slo 5] [--groupings] [--no-live] [--restarts 3]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field, replace

import torch
from rich.table import Table

from agents import make_planner
from agents.base import build_plan
from agents.streams import JointPlanner, best_disjoint_grouping
from cli import flags
from cli.output import script_console, write_json
from cli.scenarios import load_scenario
from env.contention import JITTER, Contention
from env.cost_model import CostModel, Profile
from env.network import NetworkState
from env.profiles import host_profile, pacing
from runtime import models
from runtime.cluster import LocalCluster
from runtime.fidelity import fidelity_fields, print_fidelity
from runtime.graph import LayerGraph
from runtime.plan import Plan
from runtime.spec import ClusterSpec
from serving.streams import StreamSpec, plan_streams, replanner, serve_streams, stream_demands

SCENARIO = load_scenario("mesh0-15")
MODEL, SINK, SOURCES = SCENARIO.model, "4", ("8", "1", "6")
console = script_console()


@dataclass
class Figure:
    name: str
    streams: list[StreamSpec]
    plans: tuple[Plan, ...]
    predicted_fps: float
    live_fps: float = 0.0
    tries: list[dict] = field(default_factory=list)
    replanners: dict = field(default_factory=dict)
    served: bool = True  # served live (False: a predicted comparison only)

    @property
    def fidelity(self) -> dict[str, float]:
        """Each device's lowest emulation fidelity over the live runs: a miss in a run the host could not
        emulate faithfully says nothing about the plan."""
        worst: dict[str, float] = {}
        for t in self.tries:
            for d, f in t["fidelity"].items():
                worst[d] = min(f, worst.get(d, f))
        return worst


SEARCH = {"rounds": 8, "budget": 2000}  # the joint planner's: a round stops the search when it gains < 0.1%
STEP = 0.15  # how far from the last rate tried the search steps until it has a rate met and one missed


def next_rate(tried: list[tuple[float, bool]]) -> float:
    """The next rate to serve after the (rate, met) pairs ``tried``: ``STEP`` above the highest rate met
    while none was missed, ``STEP`` below the lowest missed while none was met, else halfway between the
    highest met and the lowest missed."""
    met = [rate for rate, ok in tried if ok]
    missed = [rate for rate, ok in tried if not ok]
    if not missed:
        return max(met) * (1 + STEP)
    if not met:
        return min(missed) * (1 - STEP)
    return (max(met) + min(missed)) / 2


def serve_live(cluster, figure: Figure, reference, args, kill: str | None) -> None:
    """Serve ``figure`` ``--tries`` times at the rates ``next_rate`` picks, from its predicted rate; keep
    the highest rate met (none when no rate is predicted to meet the SLO: a frame alone misses it)."""
    fps = figure.predicted_fps
    if fps <= 0:
        console.print(f"  {figure.name}: not served (a frame alone misses the SLO on its plan)")
        return
    ctl = cluster.controller
    tried: list[tuple[float, bool]] = []
    for _ in range(args.tries):
        warm_up(ctl, figure)
        chaos = []
        if kill is not None:
            chaos = [(args.frames / 2 / fps, lambda: cluster.kill(kill), f"killed worker {kill}")]
        started = time.time()
        run = serve_streams(
            ctl,
            figure.streams,
            figure.plans,
            [fps] * len(figure.streams),
            args.frames,
            reference,
            replanners=figure.replanners,
            chaos=chaos,
        )
        if kill is not None:
            cluster.restart(kill)
        met = all(r.met for r in run.reports)
        fidelity = ctl.fidelity.per_device()
        wall = time.time() - started
        figure.tries.append({"fps": fps, "met": met, "wall_s": wall, "fidelity": fidelity} | run.summary())
        worst = max(r.p95_s for r in run.reports)
        console.print(
            f"  {figure.name}: {fps:.3f} frames/s per stream: {'met' if met else 'missed'} "
            f"(worst p95 {worst:.2f} s, sustained {min(r.fps_sustained for r in run.reports):.3f}, "
            f"lost {sum(r.lost for r in run.reports)}, wrong {sum(r.wrong for r in run.reports)}, "
            f"fidelity {min(fidelity.values(), default=float('nan')):.3f}, {wall:.0f} s wall)"
        )
        tried.append((fps, met))
        if met:
            figure.live_fps = max(figure.live_fps, fps)
        fps = next_rate(tried)


def warm_up(ctl, figure: Figure) -> None:
    """Deploy the figure's plans and run one untimed frame per stream (weights paged in), once every
    worker they use is up (one killed in the last try is back); the fidelity meter starts afresh after."""
    while not set(ctl.available) >= {d for p in figure.plans for d in p.devices}:
        ctl.ping(0.5)
    warm = set()
    for s, p in zip(figure.streams, figure.plans, strict=True):
        ctl.deploy(p, lane=s.name)
        warm.add(ctl.submit(torch.zeros(1, *ctl.input_shape), lane=s.name))
    while warm:
        warm -= {r.rid for r in ctl.collect(0.05)}
    ctl.fidelity.clear()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    flags.add_json(parser)
    parser.add_argument("--frames", type=int, default=12, help="frames per stream per live run")
    parser.add_argument(
        "--tries",
        type=int,
        default=4,
        help="live runs per figure: at the predicted rate, then 15%% up or down, then halving the gap",
    )
    parser.add_argument("--kill", action="store_true", help="kill a worker halfway through the joint run")
    flags.add_dilation(parser)
    parser.add_argument(
        "--slowdown",
        type=float,
        default=1.0,
        help="plan and serve every device and link this much slower (not needed for fidelity: --dilation)",
    )
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--slo", type=float, default=5.0, help="p95 SLO in s at full size and speed")
    parser.add_argument("--no-live", action="store_true", help="the cost model's figures only")
    parser.add_argument(
        "--restarts",
        type=flags.at_least_one,
        default=3,
        help="searches from other seeds when planning three streams jointly (the best is kept)",
    )
    parser.add_argument(
        "--groupings",
        action="store_true",
        help="also the joint planner's yardstick: the best of every disjoint grouping (predicted only)",
    )
    args = parser.parse_args(argv)
    if args.frames < 2 or args.tries < 1 or args.slowdown <= 0 or args.input_size < 32 or args.slo <= 0:
        parser.error("--frames >= 2, --tries >= 1, --slowdown > 0, --input-size >= 32, --slo > 0")
    return args


def slowed(base: ClusterSpec, slowdown: float) -> ClusterSpec:
    """The cluster as planners see it: every device and link ``slowdown`` times slower."""
    return replace(
        base,
        devices={d: replace(v, gflops=v.gflops / slowdown) for d, v in base.devices.items()},
        links=tuple(replace(ln, mbps=ln.mbps / slowdown) for ln in base.links),
    )


def plan_figures(
    spec: ClusterSpec,
    graph: LayerGraph,
    slo: float,
    profile: Profile | None,
    groupings: bool = False,
    restarts: int = 1,
) -> list[Figure]:
    """The figures, planned on the cost model's contention pricing (on ``profile``, else FLOPs), printed;
    ``groupings``: with the best disjoint grouping too; ``restarts``: the joint planner's for three streams."""
    cost = CostModel(graph, spec, profile)
    snapshot = NetworkState.static(spec).snapshot(0.0)
    planner = make_planner("optimal", graph=graph, spec=spec, cost_model=cost)
    contention = Contention(cost)

    def stream(source: str) -> StreamSpec:
        return StreamSpec(name=f"cam{source}", source=source, sink=SINK, model=MODEL, slo_s=slo)

    one, three = [stream(SOURCES[0])], [stream(s) for s in SOURCES]
    view = replace(snapshot, source=SOURCES[0], sink=SINK)
    singles = [build_plan(view, [(0, len(graph.units), (d,))]) for d in spec.device_ids]
    rates = [contention.equal_rate([p], [slo], snapshot) for p in singles]
    alone = [cost.latency(p, view) for p in singles]
    best = max(range(len(singles)), key=lambda i: (rates[i], -alone[i]))  # the fastest if none meets the SLO
    fastest = min(range(len(singles)), key=lambda i: alone[i])
    console.print(f"  the best single device takes {alone[best]:.2f} s per frame alone (SLO {slo:.2f} s)")
    no_slo = [one[0].model_copy(update={"slo_s": math.inf})]
    joint_planner = JointPlanner(planner, cost, say=console.print, **SEARCH)
    pipelined = joint_planner.plan(snapshot, graph, stream_demands(one))
    # each stream planned alone for throughput (stream one's plan is the pipelined figure's)
    others = stream_demands(three[1:])
    each_alone = (pipelined.plans[0], *(joint_planner.plan(snapshot, graph, [d]).plans[0] for d in others))
    figures = [
        Figure("single_device", one, (singles[best],), rates[best]),
        Figure(
            "single_device_no_slo",
            no_slo,
            (singles[fastest],),
            contention.equal_rate([singles[fastest]], [math.inf], snapshot),
        ),
        Figure("pipelined", one, pipelined.plans, pipelined.fps),
        Figure(
            "independent",
            three,
            *_planned(plan_streams(three, "independent", planner, cost, snapshot, graph)),
        ),
        Figure(
            "joint",
            three,
            *_planned(
                JointPlanner(planner, cost, restarts=restarts, say=console.print, **SEARCH).plan(
                    snapshot, graph, stream_demands(three)
                )
            ),
        ),
        Figure(
            "independent_pipelined",
            three,
            each_alone,
            contention.equal_rate(each_alone, [slo] * len(three), snapshot),
            served=False,
        ),
    ]
    if groupings:
        console.print("the best disjoint grouping (every assignment of devices to the streams) ...")
        best = best_disjoint_grouping(
            joint_planner, snapshot, graph, stream_demands(three), say=console.print
        )
        figures.append(Figure("best_disjoint_grouping", three, best.plans, best.fps, served=False))
    for f in figures:
        f.replanners = {
            s.name: replanner(s, planner, snapshot, graph, p.devices)
            for s, p in zip(f.streams, f.plans, strict=True)
        }
        console.print(f"  {f.name}: predicted {f.predicted_fps:.3f} frames/s per stream")
        for s, p in zip(f.streams, f.plans, strict=True):
            console.print(f"    {s.name}: {p.describe()}")
    return figures


def compute_bound_fps(cost: CostModel, snapshot) -> float:
    """Frames/s of one stream if every device computed whole frames all the time: the sum over devices of
    1 / its whole-model compute seconds. No plan sustains more (a band's halo only adds work, radios only
    add waiting, and the cost model scales every unit's seconds alike across devices), and ``n`` equal
    streams at most 1 / ``n`` of it each."""
    whole = len(cost.graph.units)
    busy = Contention(cost).busy
    ids = cost.spec.device_ids
    return sum(
        1.0 / busy([build_plan(replace(snapshot, source=d, sink=d), [(0, whole, (d,))])], snapshot)[0][i]
        for i, d in enumerate(ids)
    )


def serve_figures(
    figures: list[Figure], spec: ClusterSpec, shape: tuple[int, int, int], args, profile: Profile | None
) -> tuple[float, str]:
    """Serve every figure live on one emulated cluster of ``spec`` (the one they were planned on) dilated
    ``--dilation`` times (default: automatic), printing each figure's fidelity (``--kill``: a worker of
    the joint plans dies halfway through the joint run); the dilation used and what compute was paced by
    (the profile the figures were planned on; CPU time for a reduced input, which no profile covers)."""
    with (
        torch.no_grad(),
        LocalCluster(
            spec,
            model=MODEL,
            input_shape=shape,
            dilation=args.dilation,
            start_timeout_s=600.0,  # ten workers loading VGG-16 on a busy host
            **({} if profile is None else pacing(profile)),
        ) as cluster,
    ):
        console.print(f"emulation: time dilation {cluster.dilation:g}")
        reference = models.build(MODEL)
        for f in (f for f in figures if f.served):
            kill = None
            if args.kill and f.name == "joint":
                ends = set(SOURCES) | {SINK}
                kill = next((d for p in f.plans for d in p.devices if d not in ends), None)
            serve_live(cluster, f, reference, args, kill)
            print_fidelity(f.fidelity, cluster.dilation, cluster.pacing, console, f" of {f.name}")
        return cluster.dilation, cluster.pacing


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    started = time.time()
    shape = (3, args.input_size, args.input_size)
    slo = args.slo * (args.slowdown * (args.input_size / 224) ** 2)  # compute and bytes scale with the area
    base = SCENARIO.cluster_spec()
    graph = LayerGraph.from_model(models.skeleton(MODEL), shape, MODEL)
    console.print(
        f"planning (SLO {slo:.2f} s, slowdown {args.slowdown:g}, {args.input_size}x{args.input_size}) ..."
    )
    spec = slowed(base, args.slowdown)
    profile = None
    if shape == models.input_shape(MODEL):
        profile = host_profile(graph, same_host=True, say=console.print)
    else:
        console.print(
            f"no profile covers {args.input_size}x{args.input_size} inputs: planning on FLOPs alone"
        )
    figures = plan_figures(spec, graph, slo, profile, args.groupings, args.restarts)
    bound = compute_bound_fps(CostModel(graph, spec, profile), NetworkState.static(spec).snapshot(0.0))
    dilation, paced_by = (None, None) if args.no_live else serve_figures(figures, spec, shape, args, profile)
    cost_model = "flops" if profile is None else "profile"
    report(figures, args, started, slo, dilation, paced_by, cost_model, compute_bound=bound)


def _planned(planned) -> tuple[tuple[Plan, ...], float]:
    return planned.plans, planned.fps


def report(
    figures: list[Figure],
    args,
    started: float,
    slo: float,
    dilation: float | None,
    pacing: str | None,
    cost_model: str,
    compute_bound: float | None = None,
) -> None:
    """The table, the ratios and the JSON (``dilation``, ``pacing``: the live runs', None without them;
    ``cost_model``: what the figures were planned on; ``compute_bound``: ``compute_bound_fps``)."""
    by = {f.name: f for f in figures}
    table = Table(
        title=f"{MODEL} on disnet-mesh0 at 15 Mbit/s, frames/s per stream ({time.time() - started:.0f} s)"
    )
    for col in ("figure", "streams", "predicted", "live"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for f in figures:
        live = f"{f.live_fps:.3f}" if f.served and not args.no_live else "-"
        table.add_row(f.name, str(len(f.streams)), f"{f.predicted_fps:.3f}", live)
    console.print(table)

    def ratio(a: str, b: str, live: bool) -> float | None:
        """``a`` over ``b``; None (JSON null) when ``b`` sustains no rate within the SLO."""
        x, y = (by[a].live_fps, by[b].live_fps) if live else (by[a].predicted_fps, by[b].predicted_fps)
        return x / y if y > 0 else None

    ratios = {
        "pipelined_over_single": {"predicted": ratio("pipelined", "single_device", False)},
        "pipelined_over_single_no_slo": {"predicted": ratio("pipelined", "single_device_no_slo", False)},
        "joint_over_independent": {"predicted": ratio("joint", "independent", False)},
        "joint_over_independent_pipelined": {"predicted": ratio("joint", "independent_pipelined", False)},
    }
    if "best_disjoint_grouping" in by:
        ratios["joint_over_best_disjoint_grouping"] = {
            "predicted": ratio("joint", "best_disjoint_grouping", False)
        }
    if not args.no_live:
        ratios["pipelined_over_single"]["live"] = ratio("pipelined", "single_device", True)
        ratios["pipelined_over_single_no_slo"]["live"] = ratio("pipelined", "single_device_no_slo", True)
        ratios["joint_over_independent"]["live"] = ratio("joint", "independent", True)
    for name, values in ratios.items():
        console.print(
            f"{name}: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}x'}" for k, v in values.items())
        )
    result = {f"{f.name}_fps": (f.predicted_fps if args.no_live else f.live_fps) for f in figures if f.served}
    result |= {
        "predicted": {f.name: f.predicted_fps for f in figures},
        "ratios": ratios,
        "settings": {
            "dilation": dilation,
            "slowdown": args.slowdown,
            "input_size": args.input_size,
            "cost_model": cost_model,
            "slo_s": slo,
            "frames": args.frames,
            "joint_search": SEARCH | {"restarts": args.restarts},
            "pricing_jitter": JITTER,
        },
        "plans": {f.name: [p.describe() for p in f.plans] for f in figures},
        "live_runs": {f.name: f.tries for f in figures if f.served} if not args.no_live else {},
        "emulation": {f.name: fidelity_fields(f.fidelity, dilation, pacing) for f in figures if f.served}
        if not args.no_live
        else {},
    }
    if compute_bound is not None:
        streams = len(by["joint"].streams)
        result["compute_bound_fps"] = {"one_stream": compute_bound, "per_stream": compute_bound / streams}
        console.print(
            f"compute bound (every device computing whole frames all the time): {compute_bound:.3f} "
            f"frames/s for one stream, {compute_bound / streams:.3f} per stream for {streams}"
        )
    for key in (
        "single_device_fps",
        "single_device_no_slo_fps",
        "pipelined_fps",
        "independent_fps",
        "joint_fps",
    ):
        console.print(f"{key}: {result[key]:.3f}")
    if args.json is not None:
        write_json(args.json, result, console)


if __name__ == "__main__":
    main()
