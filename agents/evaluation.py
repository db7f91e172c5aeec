"""Side-by-side comparison of planners on identical snapshots: records, summaries, table, JSON, plots.

Every agent sees the same sequence of snapshots (the same world, the same request times); what differs
is only the plan it chooses. A request's outcome comes from an ``executor`` callable: the cost model in
the trace-driven world (``sim``) or a live cluster (``live``), so both backends share all the reporting.

Each request records the planner's ``Decision`` as well as its outcome, so the summary says what a mean
latency alone hides: how many requests a planner answered with a fallback plan, how far the optimiser's
plans are from its certified bound, and, when ``clairvoyant`` is among the agents, every agent's regret
(latency over the clairvoyant's on the same request, minus 1).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from env.backends import Outcome
from env.cost_model import CostModel
from env.net_view import net_view
from env.network import NetworkState
from env.simulator import charge, reference_plan
from env.snapshot import Snapshot
from runtime.cluster import LocalCluster
from runtime.plan import Plan

CLAIRVOYANT = "clairvoyant"  # the agent every other agent's regret is measured against


@dataclass(frozen=True)
class RequestRecord:
    agent: str
    index: int
    time_s: float
    latency_s: float
    energy_j: float
    decision_s: float
    outputs_match: bool | None
    plan: str
    fallback: str | None = None  # why the planner fell back (Decision.fallback), None when it planned
    bound_gap: float | None = None  # Decision.gap: predicted objective over the certified bound, minus 1
    failed: bool = False


Executor = Callable[[str, int, float, Plan], Outcome]  # (agent, request index, time, plan) -> outcome
SnapshotAt = Callable[[int], Snapshot]  # request index -> what the planners may know before it


class SimExecutor:
    """Requests priced by the cost model in the trace-driven world, with the env's failure rule: a
    request fails when a device its plan touches (relays included) is down at some moment of it, and is
    then retried on the best single device of the snapshot, which it pays for on top of the failed attempt."""

    def __init__(self, cost_model: CostModel, world: NetworkState):
        self.cost_model, self.world = cost_model, world

    def __call__(self, agent: str, index: int, t: float, plan: Plan) -> Outcome:
        cost = self.cost_model.cost(plan, self.world, t)
        devices = self.cost_model.skeleton(plan).devices
        failed = self.world.down_during(devices, t, t + cost.latency_s)
        outcome = Outcome(cost.latency_s, cost.energy_j, failed=failed)
        if not failed:
            return outcome
        retry_plan = reference_plan(self.cost_model.graph, net_view(self.world.snapshot(t))).plan
        return charge(outcome, self.cost_model.cost(retry_plan, self.world, t))


def run_comparison(
    planners: dict,
    snapshot_at: SnapshotAt,
    requests: int,
    graph,
    objective,
    execute: Executor,
    *,
    console: Console | None = None,
) -> list[RequestRecord]:
    """For each request, every planner plans on the same snapshot and its plan is executed.

    Request-major order keeps the agents' requests of one index close in time on a live cluster.
    """
    records = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("requests", total=requests * len(planners))
        for i in range(requests):
            snap = snapshot_at(i)
            for name, planner in planners.items():
                start = time.perf_counter()
                decision = planner.decide(snap, graph, objective)
                decision_s = time.perf_counter() - start
                outcome = execute(name, i, snap.time, decision.plan)
                records.append(
                    RequestRecord(
                        name,
                        i,
                        snap.time,
                        outcome.latency_s,
                        outcome.energy_j,
                        decision_s,
                        outcome.outputs_match,
                        decision.plan.to_json(),
                        decision.fallback,
                        decision.gap,
                        outcome.failed,
                    )
                )
                progress.advance(task)
    return records


class LiveSession:
    """A running local emulated cluster plus the reference model that checks its outputs."""

    def __init__(self, cluster: LocalCluster, model, world, seed: int):
        self.cluster, self.model, self.world, self.seed = cluster, model, world, seed
        self.controller = cluster.controller
        self._inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def snapshot_at(self, index: int) -> Snapshot:
        """What planners may know now: the world's snapshot at the cluster's current time."""
        return self.world.snapshot(max(0.0, self.controller.now()))

    def run(self, index: int, plan: Plan) -> tuple[Outcome, float]:
        """Run request ``index`` (a seeded input) on ``plan``; returns the outcome and its start time."""
        if index not in self._inputs:
            gen = torch.Generator().manual_seed(self.seed + index)
            x = torch.randn(1, *self.controller.input_shape, generator=gen)
            with torch.no_grad():
                self._inputs[index] = (x, self.model(x))
        x, reference = self._inputs[index]
        if self.controller.plan != plan:
            self.controller.deploy(plan)
        start = self.controller.now()
        result = self.controller.infer(x)
        match = bool(torch.allclose(result.output, reference, rtol=1e-4, atol=1e-5))
        return Outcome(result.latency_s, result.energy_j, match), start

    def execute(self, agent: str, index: int, t: float, plan: Plan) -> Outcome:
        return self.run(index, plan)[0]


@contextmanager
def live_session(spec, model_name: str, model, world, *, seed: int = 0, **cluster_options):
    """A local emulated cluster whose links and device speeds follow ``world``'s schedules."""
    links = {(link.a, link.b): world.link_schedule(link.a, link.b) for link in spec.links}
    speeds = {d: world.speed_schedule(d) for d in spec.devices}
    with LocalCluster(
        spec, model=model_name, seed=seed, link_schedules=links, speed_schedules=speeds, **cluster_options
    ) as cluster:
        yield LiveSession(cluster, model, world, seed)


def calibration_report(rows: list[dict], predictors: list[str]) -> dict:
    """Absolute relative errors of each predictor against the measurements, summarised per quantity.

    The first predictor's summary sits at the top level (the documented interface); every predictor's
    summary is under ``predictors``.
    """

    def summary(name: str) -> dict:
        out = {}
        for key, quantity in (("latency_s", "latency"), ("energy_j", "energy")):
            errors = np.array([abs(r[name][key] - r["measured"][key]) / r["measured"][key] for r in rows])
            out[quantity] = {
                "median_abs_rel_error": float(np.median(errors)),
                "p90_abs_rel_error": float(np.percentile(errors, 90)),
            }
        return out

    per = {name: summary(name) for name in predictors}
    best = predictors[-1]
    return {
        "plans": len(rows),
        "predictor": best,
        **per[best],
        "predictors": per,
        "outputs_match": all(r["outputs_match"] for r in rows),
        "per_plan": rows,
    }


def print_calibration(report: dict, console: Console, title: str) -> None:
    table = Table(title=title)
    for col in (
        "#",
        "measured s",
        *[f"{p} s" for p in report["predictors"]],
        "measured J",
        *[f"{p} J" for p in report["predictors"]],
    ):
        table.add_column(col, justify="right")
    for i, row in enumerate(report["per_plan"]):
        table.add_row(
            str(i),
            f"{row['measured']['latency_s']:.3f}",
            *[f"{row[p]['latency_s']:.3f}" for p in report["predictors"]],
            f"{row['measured']['energy_j']:.2f}",
            *[f"{row[p]['energy_j']:.2f}" for p in report["predictors"]],
        )
    console.print(table)
    for name, s in report["predictors"].items():
        console.print(
            f"{name:8s} latency error median {s['latency']['median_abs_rel_error']:.1%} "
            f"p90 {s['latency']['p90_abs_rel_error']:.1%}; energy error median "
            f"{s['energy']['median_abs_rel_error']:.1%} p90 {s['energy']['p90_abs_rel_error']:.1%}"
        )
    console.print(f"outputs exact on every plan: {report['outputs_match']}")


def summarize(records: list[RequestRecord]) -> dict[str, dict]:
    """Per agent: mean/p50/p95 latency, mean energy, mean decision time, output check, first plan;
    ``fallbacks`` (requests answered with a fallback plan), ``failed_requests``, ``bound_gap_median``
    and ``bound_gap_p95`` (None when the planner proved no bound), and ``regret_mean`` when the
    clairvoyant is among the agents (None otherwise)."""
    regret = _regrets(records)
    summary = {}
    for agent in dict.fromkeys(r.agent for r in records):
        mine = [r for r in records if r.agent == agent]
        regrets = [regret[id(r)] for r in mine if id(r) in regret]
        lat = np.array([r.latency_s for r in mine])
        checks = [r.outputs_match for r in mine if r.outputs_match is not None]
        gaps = [r.bound_gap for r in mine if r.bound_gap is not None]
        summary[agent] = {
            "requests": len(mine),
            "latency_mean_s": float(lat.mean()),
            "latency_p50_s": float(np.percentile(lat, 50)),
            "latency_p95_s": float(np.percentile(lat, 95)),
            "energy_mean_j": float(np.mean([r.energy_j for r in mine])),
            "decision_time_mean_s": float(np.mean([r.decision_s for r in mine])),
            "outputs_match": all(checks) if checks else None,
            "fallbacks": sum(r.fallback is not None for r in mine),
            "failed_requests": sum(r.failed for r in mine),
            "regret_mean": float(np.mean(regrets)) if regrets else None,
            "bound_gap_median": float(np.median(gaps)) if gaps else None,
            "bound_gap_p95": float(np.percentile(gaps, 95)) if gaps else None,
            "plan": json.loads(mine[0].plan),
        }
    return summary


def _requests(records: list[RequestRecord]) -> list[list[RequestRecord]]:
    """The records grouped by request: ``run_comparison`` is request-major, so a request's records are
    consecutive, and a new one starts where the index or time changes or an agent comes again (the same
    index and time in the next world of one record list)."""
    out: list[list[RequestRecord]] = []
    for r in records:
        last = out[-1] if out else None
        if (
            last
            and (last[0].index, last[0].time_s) == (r.index, r.time_s)
            and r.agent not in {x.agent for x in last}
        ):
            last.append(r)
        else:
            out.append([r])
    return out


def _regrets(records: list[RequestRecord]) -> dict[int, float]:
    """Per record (by id): its latency over the clairvoyant's on the same request, minus 1."""
    out: dict[int, float] = {}
    for request in _requests(records):
        ceiling = next((r.latency_s for r in request if r.agent == CLAIRVOYANT), None)
        if ceiling is not None:
            out.update((id(r), r.latency_s / ceiling - 1.0) for r in request)
    return out


def ratios(summary: dict[str, dict], key: str) -> dict[str, dict[str, float]]:
    """``ratios[a][b]`` = b's value / a's value: how many times lower a is than b."""
    return {a: {b: summary[b][key] / summary[a][key] for b in summary if b != a} for a in summary}


def print_summary(summary: dict[str, dict], console: Console, title: str) -> None:
    table = Table(title=title)
    columns = ("agent", "lat mean s", "p50 s", "p95 s", "regret", "energy J", "decide ms", "fallbacks")
    for col in (*columns, "failed", "bound gap", "outputs"):
        table.add_column(col, justify="right" if col != "agent" else "left")
    best = min(summary, key=lambda a: summary[a]["latency_mean_s"])
    for agent, s in sorted(summary.items(), key=lambda kv: kv[1]["latency_mean_s"]):
        match = {True: "exact", False: "MISMATCH", None: "-"}[s["outputs_match"]]
        regret, gap = s["regret_mean"], s["bound_gap_median"]
        table.add_row(
            f"[bold]{agent}[/]" if agent == best else agent,
            f"{s['latency_mean_s']:.3f}",
            f"{s['latency_p50_s']:.3f}",
            f"{s['latency_p95_s']:.3f}",
            "-" if regret is None else f"{regret:+.1%}",
            f"{s['energy_mean_j']:.2f}",
            f"{s['decision_time_mean_s'] * 1e3:.2f}",
            f"{s['fallbacks']}/{s['requests']}",
            f"{s['failed_requests']}",
            "-" if gap is None else f"{gap:.1%}",
            match,
        )
    console.print(table)
    others = [a for a in summary if a != best]
    if others:
        lat = ratios(summary, "latency_mean_s")[best]
        energy = ratios(summary, "energy_mean_j")[best]
        console.print(
            f"{best}: "
            + ", ".join(
                f"{lat[o]:.2f}x lower latency / {energy[o]:.2f}x lower energy than {o}" for o in others
            )
        )


def report_json(summary: dict[str, dict], records: list[RequestRecord], **context) -> dict:
    """The machine-readable result: context keys, per-agent summaries, all pairwise ratios, raw records."""
    return {
        **context,
        "agents": summary,
        "latency_ratio": ratios(summary, "latency_mean_s"),
        "energy_ratio": ratios(summary, "energy_mean_j"),
        "records": [asdict(r) | {"plan": json.loads(r.plan)} for r in records],
    }


def plot(summary: dict[str, dict], records: list[RequestRecord], out_dir: Path) -> list[Path]:
    """Latency CDF per agent and bars of mean latency and energy; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    cdf_path, bars_path = out_dir / "latency_cdf.png", out_dir / "agents.png"
    fig, ax = plt.subplots(figsize=(6, 4))
    for agent in summary:
        lat = np.sort([r.latency_s for r in records if r.agent == agent])
        ax.step(lat, np.arange(1, len(lat) + 1) / len(lat), where="post", label=agent)
    ax.set_xscale("log")
    ax.set_xlabel("latency (s)")
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(cdf_path, dpi=120)
    plt.close(fig)
    names = sorted(summary, key=lambda a: summary[a]["latency_mean_s"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.bar(names, [summary[a]["latency_mean_s"] for a in names], color="tab:blue")
    ax1.set_ylabel("mean latency (s)")
    ax2.bar(names, [summary[a]["energy_mean_j"] for a in names], color="tab:orange")
    ax2.set_ylabel("mean energy (J)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=45)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(bars_path, dpi=120)
    plt.close(fig)
    return [cdf_path, bars_path]
