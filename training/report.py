"""What a training run tells its user: the console it prints on, and the learning curve it plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cli.output import script_console

console = script_console()


def plot_learning_curve(
    out: Path, history: list[dict], monitor_dir: Path, n_envs: int, bc_metrics: dict
) -> Path:
    """Reward per request (training episodes, smoothed, and the fixed validation worlds) and the
    validation latency relative to the oracle's on the same requests, over PPO timesteps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for csv in sorted(monitor_dir.glob("train_*.monitor.csv")):
        if len(csv.read_text().splitlines()) < 4:  # header lines and fewer than two episodes
            continue
        data = np.atleast_2d(np.genfromtxt(csv, delimiter=",", skip_header=2))
        if data.shape[0] >= 2:
            per_request = data[:, 0] / data[:, 1]
            window = max(1, len(per_request) // 20)
            smooth = np.convolve(per_request, np.ones(window) / window, mode="valid")
            steps = np.cumsum(data[:, 1])[window - 1 :] * n_envs
            ax1.plot(steps, smooth, alpha=0.6, label=f"training episodes ({csv.name.split('.')[0]})")
    if history:
        steps = [h["timesteps"] for h in history]
        ax1.plot(steps, [h["reward_per_request"] for h in history], "o-", label="validation (fixed worlds)")
        ax2.plot(steps, [h["ratio_to_oracle"] for h in history], "o-", label="policy / oracle, same requests")
    ax1.set_xlabel("PPO timesteps (0: after behaviour cloning)")
    ax1.set_ylabel("reward per request (-latency / reference)")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.axhline(1.0, color="gray", lw=0.8)
    ax2.set_xlabel("PPO timesteps (0: after behaviour cloning)")
    ax2.set_ylabel("validation mean latency / oracle's")
    if bc_metrics:
        ax2.set_title(
            f"BC validation regret: {bc_metrics.get('validation_snapshot_regret_pct', float('nan')):.1f} % "
            f"(snapshot), {bc_metrics.get('validation_world_regret_pct', float('nan')):.1f} % (world)",
            fontsize=9,
        )
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = out / "learning_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
