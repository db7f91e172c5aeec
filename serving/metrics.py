"""Per-request serving metrics, streamed to CSV and TensorBoard as they come."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from serving.records import RequestLog


def fresh_tensorboard(folder: Path):
    """A TensorBoard writer for ``folder`` with the event files of an earlier run there removed: a reused
    output folder would otherwise show both runs' curves as one (the CSVs beside them are overwritten)."""
    from torch.utils.tensorboard import SummaryWriter

    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()
    return SummaryWriter(str(folder))


class MetricsWriter:
    """Per-request metrics to CSV and TensorBoard."""

    def __init__(self, out_dir: Path, agent: str):
        agent = re.sub(
            r"[:/\\]", "_", agent
        )  # a planner label such as ppo:FILE or ppo:DIR/FILE, as a file name
        out_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = out_dir / f"{agent}.csv"
        self._file = self.csv_path.open("w", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(
            [
                "index",
                "rid",
                "time_s",
                "latency_s",
                "waited_s",
                "energy_j",
                "outputs_match",
                "replanned",
                "rescues",
            ]
        )
        self._tb = fresh_tensorboard(out_dir / "tensorboard" / agent)

    def __call__(self, r: RequestLog) -> None:
        self._csv.writerow(
            [
                r.index,
                r.rid,
                f"{r.time_s:.4f}",
                f"{r.latency_s:.6f}",
                f"{r.waited_s:.6f}",
                f"{r.energy_j:.6f}",
                r.outputs_match,
                r.replanned,
                r.rescues,
            ]
        )
        self._tb.add_scalar("serve/latency_s", r.response_s, r.index)
        self._tb.add_scalar("serve/energy_j", r.energy_j, r.index)
        self._tb.add_scalar("serve/replanned", float(r.replanned), r.index)

    def close(self) -> None:
        self._file.close()
        self._tb.close()
