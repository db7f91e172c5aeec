"""A streams run for people and machines: the per-stream table, TensorBoard scalars and a plot over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from serving.metrics import fresh_tensorboard
from serving.streams import StreamsRun

WINDOW_S = 10.0  # frames per second over time are counted over this sliding window


def fps_over_time(done_s: np.ndarray, until_s: float, step_s: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(times, frames completed in the ``WINDOW_S`` before each time / the window) every ``step_s``."""
    times = np.arange(step_s, max(until_s, step_s) + step_s, step_s)
    done = np.sort(done_s)
    counts = np.searchsorted(done, times, side="right") - np.searchsorted(
        done, times - WINDOW_S, side="right"
    )
    return times, counts / np.minimum(times, WINDOW_S)


def print_table(run: StreamsRun, console: Console, title: str) -> None:
    table = Table(title=title)
    columns = (
        "stream",
        "fps target",
        "fps sustained",
        "p50 s",
        "p95 s",
        "SLO s",
        "SLO misses",
        "sent",
        "lost",
        "outputs",
        "met",
    )
    for col in columns:
        table.add_column(col, justify="left" if col == "stream" else "right")
    for r in run.reports:
        table.add_row(
            r.name,
            f"{r.fps_target:.3f}",
            f"{r.fps_sustained:.3f}",
            f"{r.p50_s:.2f}",
            f"{r.p95_s:.2f}",
            f"{r.slo_s:.2f}",
            str(r.slo_misses),
            str(r.sent),
            str(r.lost),
            "exact" if r.wrong == 0 else f"{r.wrong} WRONG",
            "yes" if r.met else "no",
        )
    console.print(table)
    for t, what in run.events:
        console.print(f"  at {t:.1f} s: {what}")


def write_tensorboard(run: StreamsRun, out_dir: Path) -> None:
    """Per stream: each frame's latency (by frame index) and the frames per second sustained (by second)."""
    with fresh_tensorboard(out_dir) as tb:
        end = max((f.done_s for f in run.frames), default=0.0)
        for r in run.reports:
            frames = sorted((f for f in run.frames if f.stream == r.name), key=lambda f: f.index)
            for f in frames:
                tb.add_scalar(f"streams/{r.name}/latency_s", f.latency_s, f.index)
            times, fps = fps_over_time(np.array([f.done_s for f in frames]), end)
            for t, v in zip(times, fps, strict=True):
                tb.add_scalar(f"streams/{r.name}/fps", v, int(t))


def plot(run: StreamsRun, path: Path) -> None:
    """Latency of every frame by arrival (SLO dashed) and frames per second over time, per stream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    end = max((f.done_s for f in run.frames), default=0.0)
    for k, r in enumerate(run.reports):
        color = f"C{k}"
        frames = [f for f in run.frames if f.stream == r.name]
        top.plot([f.arrival_s for f in frames], [f.latency_s for f in frames], ".", color=color, label=r.name)
        top.axhline(r.slo_s, color=color, linestyle="--", linewidth=0.8)
        times, fps = fps_over_time(np.array([f.done_s for f in frames]), end)
        bottom.plot(times, fps, color=color, label=f"{r.name} (target {r.fps_target:.2f})")
        bottom.axhline(r.fps_target, color=color, linestyle=":", linewidth=0.8)
    for t, _ in run.events:
        for ax in (top, bottom):
            ax.axvline(t, color="red", linewidth=0.8)
    top.set_ylabel("latency s (SLO dashed)")
    bottom.set_ylabel(f"frames/s ({WINDOW_S:.0f} s window)")
    bottom.set_xlabel("seconds into the run (red: chaos events)")
    top.legend(loc="upper left", fontsize=8)
    bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
