"""How well each predictor (cost model, profile) foresaw the measured latency and energy of live plans."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table


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
