"""Trace files: Mahimahi packet-delivery traces, Pensieve/Oboe `time mbps` logs and `time_s,mbps` CSV
(with that header or none).

Each loader returns a `Trace` (runtime/schedule.py) and names the file and line of anything it cannot
use; `load_trace` detects the format from the first non-blank line, `load_trace_dir` loads a folder.
Units: seconds and Mbit/s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import NoReturn

import numpy as np

from runtime.schedule import BYTES_PER_MBIT, Trace, TraceError

MAHIMAHI_PACKET_BYTES = 1500
MAHIMAHI_MAX_BINS = 1_000_000  # 28 h at 0.1 s; a 32-device world of such traces already takes ~4.4 GB
CSV_HEADER = "time_s,mbps"


def _read_lines(path: Path) -> list[str]:
    """The file's lines, without a byte-order mark an editor on Windows may have put first."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: cannot read trace file ({e})") from e


@dataclass(frozen=True)
class _Rows:
    """Numeric rows parsed from a trace file, able to name the file line of a bad row."""

    path: Path
    lines: Sequence[str]
    first_lineno: int
    data: np.ndarray

    def check(self, bad: np.ndarray, message: str, row_offset: int = 0) -> None:
        """Raise `message` at the line of the first True row of `bad` (row = index + offset)."""
        if bad.any():
            row = int(bad.argmax()) + row_offset
            numbered = (no for no, ln in enumerate(self.lines, self.first_lineno) if ln.strip())
            raise TraceError(f"{self.path}:{next(islice(numbered, row, None))}: {message}")


def _parse_rows(path: Path, lines: Sequence[str], first_lineno: int, ncols: int, sep: str | None) -> _Rows:
    """Non-blank lines -> float rows of `ncols` columns (np.loadtxt, C speed on 300k-line files)."""
    if not any(ln.strip() for ln in lines):
        raise TraceError(f"{path}: no data lines")
    try:
        data = np.loadtxt(lines, dtype=np.float64, delimiter=sep, comments=None, ndmin=2)
    except ValueError:
        data = None
    if data is None or data.shape[1] != ncols:
        _raise_first_bad_row(path, lines, first_lineno, ncols, sep)
    rows = _Rows(path, lines, first_lineno, data)
    rows.check(~np.all(np.isfinite(data), axis=1), "value is not finite")
    return rows


def _raise_first_bad_row(
    path: Path, lines: Sequence[str], first_lineno: int, ncols: int, sep: str | None
) -> NoReturn:
    """Find why np.loadtxt refused the file, in our own words and with the line number."""
    for no, ln in enumerate(lines, first_lineno):
        if not ln.strip():
            continue
        row = ln.split(sep)
        if len(row) != ncols:
            raise TraceError(f"{path}:{no}: expected {ncols} columns, got {len(row)}")
        for value in row:
            try:
                float(value)
            except ValueError:
                raise TraceError(f"{path}:{no}: not a number: {value.strip()!r}") from None
    raise TraceError(f"{path}: unparsable trace rows")


def load_mahimahi(path: str | os.PathLike, bin_s: float = 0.1) -> Trace:
    """Mahimahi packet-delivery trace -> bins of `bin_s` seconds (packets * 1500 B * 8 / bin).

    Each line is a millisecond timestamp offering one 1500-byte packet; the loop period is the last
    timestamp. A packet stamped exactly at the period belongs to the next loop's t=0, so it is
    binned at 0 and every packet of the file is counted once per period.
    """
    path = Path(path)
    if not bin_s > 0:
        raise ValueError(f"bin_s must be > 0, got {bin_s}")
    rows = _parse_rows(path, _read_lines(path), 1, 1, None)
    ms = rows.data[:, 0]
    rows.check((ms < 0) | (ms != np.floor(ms)), "timestamp must be a non-negative integer (ms)")
    rows.check(np.diff(ms) < 0, "timestamps must not decrease", row_offset=1)
    period_ms = float(ms[-1])
    if period_ms <= 0:
        raise TraceError(f"{path}: loop period (last timestamp) must be > 0 ms")
    bin_ms = bin_s * 1000.0
    longest_ms = MAHIMAHI_MAX_BINS * bin_ms
    too_long = f"timestamp beyond {longest_ms:.0f} ms: a loop of over {MAHIMAHI_MAX_BINS} bins of {bin_s:g} s"
    rows.check(ms > longest_ms, f"{too_long} would not fit in memory once per link")
    n_bins = math.ceil(period_ms / bin_ms)
    starts_ms = np.arange(n_bins) * bin_ms
    widths_s = np.diff(np.append(starts_ms, period_ms)) / 1000.0
    idx = np.minimum(np.floor(np.mod(ms, period_ms) / bin_ms).astype(np.int64), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    mbps = counts * MAHIMAHI_PACKET_BYTES * 8 / widths_s / 1e6
    return Trace(starts_ms / 1000.0, mbps, period_ms / 1000.0, path.name)


def _from_samples(rows: _Rows) -> Trace:
    """(time_s, mbps) samples -> Trace starting at 0; the last sample lasts the median spacing."""
    if len(rows.data) < 2:
        raise TraceError(f"{rows.path}: need at least 2 samples to know how long the last lasts")
    times, mbps = rows.data[:, 0], rows.data[:, 1]
    rows.check(np.diff(times) <= 0, "times must be strictly increasing", row_offset=1)
    rows.check(mbps < 0, "throughput must be >= 0 Mbit/s")
    times = times - times[0]
    duration = times[-1] + float(np.median(np.diff(times)))
    _check_bytes_fit(rows, mbps, duration)
    return Trace(times, mbps, duration, rows.path.name)


def _check_bytes_fit(rows: _Rows, mbps: np.ndarray, duration: float) -> None:
    """Refuse a value so large that the bytes it carries over one loop overflow a float: every integral
    of the trace (its mean, the rescale to a link's bandwidth) would be inf or NaN."""
    most = np.finfo(np.float64).max / (BYTES_PER_MBIT * duration)
    rows.check(mbps > most, f"throughput above {most:.3g} Mbit/s: its bytes over the trace overflow")


def load_pensieve(path: str | os.PathLike) -> Trace:
    """`time_s<whitespace>throughput_Mbps` lines (Pensieve FCC/Norway, Oboe); times start at 0."""
    path = Path(path)
    return _from_samples(_parse_rows(path, _read_lines(path), 1, 2, None))


def _numbers(line: str) -> bool:
    try:
        [float(x) for x in line.split(",")]
    except ValueError:
        return False
    return True


def load_csv(path: str | os.PathLike) -> Trace:
    """CSV of ``seconds,Mbit/s`` rows, with the header `time_s,mbps` or none (the units of Pensieve's
    logs); same semantics as `load_pensieve`. Any other header is an error: its units are unknown."""
    path = Path(path)
    lines = _read_lines(path)
    first = next((i for i, ln in enumerate(lines) if ln.strip()), len(lines))
    if first < len(lines) and _numbers(lines[first]):
        return _from_samples(_parse_rows(path, lines[first:], first + 1, 2, ","))
    if first == len(lines) or lines[first].replace(" ", "") != CSV_HEADER:
        raise TraceError(f"{path}:{first + 1}: CSV trace needs the header '{CSV_HEADER}' or none")
    return _from_samples(_parse_rows(path, lines[first + 1 :], first + 2, 2, ","))


def load_trace(path: str | os.PathLike, bin_s: float = 0.1) -> Trace:
    """Load a trace file, detecting the format from its first non-blank line."""
    path = Path(path)
    lines = _read_lines(path)
    no, first = next(((i, ln) for i, ln in enumerate(lines, 1) if ln.strip()), (0, ""))
    if not no:
        raise TraceError(f"{path}: no data lines")
    if "," in first:
        return load_csv(path)
    ncols = len(first.split())
    if ncols == 1:
        return load_mahimahi(path, bin_s)
    if ncols == 2:
        return load_pensieve(path)
    raise TraceError(
        f"{path}:{no}: unrecognised trace format (expected 1 column for Mahimahi, 2 for "
        f"Pensieve/Oboe, or a '{CSV_HEADER}' CSV header)"
    )


def trace_files(folder: Path) -> list[Path]:
    """The files of ``folder`` a trace set is made of: every file but README* and hidden ones, by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(("README", ".")))


def load_trace_dir(path: str | os.PathLike, bin_s: float = 0.1) -> list[Trace]:
    """Every trace file of a folder (``trace_files``)."""
    path = Path(path)
    if not path.is_dir():
        raise TraceError(f"{path}: not a directory")
    files = trace_files(path)
    if not files:
        raise TraceError(f"{path}: no trace files")
    return [load_trace(p, bin_s) for p in files]
