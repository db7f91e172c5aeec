"""A comparison's results for people and machines: per-agent summaries (regret against the clairvoyant,
fallbacks, bound gaps), the table, the JSON and the plots."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from agents import planner_labels
from env.cost_model import Objective
from serving.evaluation import CLAIRVOYANT, RequestRecord


def summarize(records: list[RequestRecord], objective: Objective | None = None) -> dict[str, dict]:
    """Per agent: mean/p50/p95 latency, mean energy, mean decision time, output check, first plan;
    ``fallbacks`` (requests answered with a fallback plan), ``failed_requests``, ``rescues`` (restarts
    on a newer plan mid-request, serving/world_rescue.py), ``bound_gap_median``
    and ``bound_gap_p95`` (None when the planner proved no bound; each optimiser's gap is against a bound
    on its own objective: the snapshot's for ``snapshot-optimal``, the robust price for ``optimal``), and
    ``regret_mean`` on ``objective`` (the one the agents planned for; latency by default) when the
    clairvoyant is among the agents (None otherwise)."""
    regret = _regrets(records, objective or Objective())
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
            "rescues": sum(r.rescues for r in mine),
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


def _regrets(records: list[RequestRecord], objective: Objective) -> dict[int, float]:
    """Per record (by id): its score on ``objective`` over the clairvoyant's on the same request, minus 1.
    On the objective the clairvoyant minimised: against its energy, say, plans that spend more energy
    would have a lower latency and a negative regret."""
    out: dict[int, float] = {}
    for request in _requests(records):
        ceiling = next((objective.score(r) for r in request if r.agent == CLAIRVOYANT), None)
        if ceiling is not None:
            out.update((id(r), objective.score(r) / ceiling - 1.0) for r in request)
    return out


def ratios(summary: dict[str, dict], key: str) -> dict[str, dict[str, float]]:
    """``ratios[a][b]`` = b's value / a's value: how many times lower a is than b."""
    return {a: {b: summary[b][key] / summary[a][key] for b in summary if b != a} for a in summary}


def print_summary(summary: dict[str, dict], console: Console, title: str) -> None:
    table = Table(title=title)
    columns = ("agent", "lat mean s", "p50 s", "p95 s", "regret", "energy J", "decide ms", "fallbacks")
    for col in (*columns, "failed", "rescued", "bound gap", "outputs"):
        if col == "agent":  # the whole name, folded if need be: two policies must not look alike
            table.add_column(col, justify="left", overflow="fold", min_width=12)
        else:
            table.add_column(col, justify="right")
    best = min(summary, key=lambda a: summary[a]["latency_mean_s"])
    label = planner_labels(list(summary))
    for agent, s in sorted(summary.items(), key=lambda kv: kv[1]["latency_mean_s"]):
        match = {True: "exact", False: "MISMATCH", None: "-"}[s["outputs_match"]]
        regret, gap = s["regret_mean"], s["bound_gap_median"]
        table.add_row(
            f"[bold]{label[agent]}[/]" if agent == best else label[agent],
            f"{s['latency_mean_s']:.3f}",
            f"{s['latency_p50_s']:.3f}",
            f"{s['latency_p95_s']:.3f}",
            "-" if regret is None else f"{regret:+.1%}",
            f"{s['energy_mean_j']:.2f}",
            f"{s['decision_time_mean_s'] * 1e3:.2f}",
            f"{s['fallbacks']}/{s['requests']}",
            f"{s['failed_requests']}",
            f"{s['rescues']}",
            "-" if gap is None else f"{gap:.1%}",
            match,
        )
    console.print(table)
    others = [a for a in summary if a != best]
    if others:
        lat = ratios(summary, "latency_mean_s")[best]
        energy = ratios(summary, "energy_mean_j")[best]
        console.print(
            f"fastest: {label[best]}; the others' mean latency and energy over its: "
            + ", ".join(f"{label[o]} {lat[o]:.2f}x / {energy[o]:.2f}x" for o in others)
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
