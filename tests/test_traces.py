"""Behaviour of env/traces.py and env/trace_files.py: file formats, exact transfer integration,
transforms, generators and config-level trace sources, plus a check of every recorded trace against its
README statistics."""

from __future__ import annotations

import bisect
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from env.trace_files import load_csv, load_mahimahi, load_pensieve, load_trace, load_trace_dir
from env.traces import (
    Trace,
    TraceError,
    TraceSource,
    TraceSpec,
    constant,
    markov_outages,
    random_walk,
    step_drop,
)

SHARED_TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
MB = 1e6  # bytes


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _step_trace(duration: float = 10.0) -> Trace:
    """8 Mbit/s (1 MB/s) for 1 s, then 2 Mbit/s (0.25 MB/s) until `duration`."""
    return Trace([0.0, 1.0], [8.0, 2.0], duration, "step")


# ------------------------------------------------------------------------------------ file formats


def test_mahimahi_counts_1500_byte_packets_per_bin(tmp_path: Path) -> None:
    # period 200 ms; the packet stamped 200 is the next loop's t=0, so bin 0 holds 4 packets
    path = _write(tmp_path, "link.down", "0\n0\n50\n150\n199\n200\n")
    trace = load_mahimahi(path)
    np.testing.assert_allclose(trace.times, [0.0, 0.1])
    np.testing.assert_allclose(trace.mbps, [4 * 1500 * 8 / 0.1 / 1e6, 2 * 1500 * 8 / 0.1 / 1e6])
    assert trace.duration == pytest.approx(0.2)
    assert trace.period_bytes == pytest.approx(6 * 1500)
    assert trace.name == "link.down"


def test_mahimahi_last_bin_is_shorter_when_bin_does_not_divide_period(tmp_path: Path) -> None:
    path = _write(tmp_path, "link.up", "0\n0\n50\n150\n199\n200\n")
    trace = load_mahimahi(path, bin_s=0.15)
    np.testing.assert_allclose(trace.times, [0.0, 0.15])
    np.testing.assert_allclose(trace.mbps, [4 * 12000 / 0.15 / 1e6, 2 * 12000 / 0.05 / 1e6])
    assert trace.mean_mbps(0.0, trace.duration) == pytest.approx(6 * 12000 / 0.2 / 1e6)


def test_pensieve_starts_at_zero_and_last_sample_lasts_median_spacing(tmp_path: Path) -> None:
    # Oboe-style: does not start at 0, TAB and space separators mixed
    path = _write(tmp_path, "oboe.txt", "0.5\t2.0\n1.5\t4.0\n\n3.5 1.0\n4.5\t3.0\n")
    trace = load_pensieve(path)
    np.testing.assert_allclose(trace.times, [0.0, 1.0, 3.0, 4.0])
    np.testing.assert_allclose(trace.mbps, [2.0, 4.0, 1.0, 3.0])
    assert trace.duration == pytest.approx(5.0)  # spacings 1, 2, 1 -> median 1


@pytest.mark.parametrize("header", ["time_s, mbps\n", ""])
def test_csv_with_its_header_or_none(tmp_path: Path, header: str) -> None:
    path = _write(tmp_path, "t.csv", header + "0,5\n2,10\n")
    trace = load_trace(path)
    np.testing.assert_allclose(trace.times, [0.0, 2.0])
    np.testing.assert_allclose(trace.mbps, [5.0, 10.0])
    assert trace.duration == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("name", "text", "loader"),
    [
        ("a.down", "0\n3\n7\n10\n", load_mahimahi),
        ("b.log", "0\t1.5\n1\t2.5\n", load_pensieve),
        ("c.csv", "time_s,mbps\n0,1\n1,2\n", load_csv),
    ],
)
def test_load_trace_detects_format(tmp_path: Path, name: str, text: str, loader) -> None:
    path = _write(tmp_path, name, text)
    auto, explicit = load_trace(path), loader(path)
    np.testing.assert_array_equal(auto.times, explicit.times)
    np.testing.assert_array_equal(auto.mbps, explicit.mbps)
    assert auto.duration == explicit.duration


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("0\n5\n3\n", 3, "must not decrease"),
        ("0\n1.5\n", 2, "non-negative integer"),
        ("0\n0\n", None, "period"),
        ("0 1\n1 x\n", 2, "not a number: 'x'"),
        ("0 1\n1 2 3\n", 2, "expected 2 columns, got 3"),
        ("0 1\n\n0 2\n", 3, "strictly increasing"),
        ("0 1\n1 -2\n", 2, ">= 0"),
        ("0 1\n1 nan\n", 2, "not finite"),
        ("0 1\n5 1e308\n10 3\n", 2, "overflow"),  # finite, but its bytes over the loop are not
        ("0\n5\n99999999999\n", 3, "bins of 0.1 s"),  # three years of 0.1 s bins: refused, not built
        ("0 1\n", None, "at least 2 samples"),
        ("time,mbps\n0,1\n", 1, "needs the header 'time_s,mbps' or none"),  # other units: unknown
        ("0,1\n1,x\n", 2, "not a number: 'x'"),
        ("\ntime_s,mbps\n0,1\n1\n", 4, "expected 2 columns, got 1"),
        ("1 2 3\n", 1, "unrecognised trace format"),
        ("\n\n", None, "no data"),
    ],
)
def test_bad_file_error_names_file_and_line(
    tmp_path: Path, text: str, line: int | None, message: str
) -> None:
    path = _write(tmp_path, "bad.trace", text)
    with pytest.raises(TraceError) as err:
        load_trace(path)
    where = f"{path}:{line}:" if line is not None else str(path)
    assert where in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize("text", ["0\n3\n7\n10\n", "0\t1.5\n1\t2.5\n", "time_s,mbps\n0,1\n1,2\n"])
def test_a_byte_order_mark_and_crlf_endings_load_as_the_plain_file(tmp_path: Path, text: str) -> None:
    plain = load_trace(_write(tmp_path, "plain", text))
    windows = tmp_path / "windows"
    windows.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    np.testing.assert_array_equal(load_trace(windows).mbps, plain.mbps)


def test_missing_file_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="missing.log"):
        load_trace(tmp_path / "missing.log")


def test_load_trace_dir_sorted_and_skips_readme(tmp_path: Path) -> None:
    _write(tmp_path, "b.csv", "time_s,mbps\n0,1\n1,2\n")
    _write(tmp_path, "a.txt", "0 3\n1 4\n")
    _write(tmp_path, "README.md", "# not a trace\n")
    assert [t.name for t in load_trace_dir(tmp_path)] == ["a.txt", "b.csv"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TraceError, match="no trace files"):
        load_trace_dir(empty)


# ------------------------------------------------------------------------- recorded shared traces


def _readme_tables(readme: Path) -> dict[str, dict[str, dict[str, float]]]:
    """README statistics tables: folder -> file -> column -> value."""
    tables: dict[str, dict[str, dict[str, float]]] = {}
    folder, columns = "", []
    for line in readme.read_text().splitlines():
        if line.startswith("## "):
            folder = line[3:].split(":")[0].strip()
        elif line.startswith("| file |"):
            columns = [c.strip() for c in line.strip("|").split("|")]
        elif line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            row = {col: float(cell) for col, cell in zip(columns[1:], cells[1:], strict=True)}
            tables.setdefault(folder, {})[cells[0].strip("`")] = row
    return tables


@pytest.mark.parametrize("folder", ["mahimahi", "pensieve_fcc", "pensieve_norway_hsdpa", "oboe"])
def test_recorded_traces_match_readme_statistics(folder: str) -> None:
    if not SHARED_TRACES.is_dir():
        pytest.skip(f"shared traces not found at {SHARED_TRACES}")
    table = _readme_tables(SHARED_TRACES / "README.md")[folder]
    traces = load_trace_dir(SHARED_TRACES / folder)
    assert sorted(t.name for t in traces) == sorted(table)
    for trace in traces:
        row = table[trace.name]
        if folder == "mahimahi":
            assert trace.period_bytes == pytest.approx(row["lines (packets)"] * 1500)
            assert trace.duration == pytest.approx(row["duration (s)"], abs=0.05)
            assert trace.mean_mbps(0.0, trace.duration) == pytest.approx(row["mean (Mbit/s)"], rel=0.01)
        else:
            # README weights each sample until the next one; the last sample gets no weight
            last = float(trace.times[-1])
            assert last == pytest.approx(row["duration (s)"], abs=0.05)
            assert trace.duration - last == pytest.approx(row["median spacing (s)"], abs=0.006)
            assert trace.mean_mbps(0.0, last) == pytest.approx(row["time-weighted mean"], rel=0.01, abs=5e-4)


# ------------------------------------------------------------------------------- trace arithmetic


def test_transfer_time_across_a_bandwidth_step() -> None:
    # from 0.5: 0.5 s at 1 MB/s carries 0.5 MB, then 1 MB at 0.25 MB/s takes 4 s
    assert _step_trace().transfer_time(1.5 * MB, 0.5) == pytest.approx(4.5)


def test_transfer_time_across_the_wrap() -> None:
    trace = _step_trace(duration=2.0)
    # [1.5,2): 0.125 MB, [2,3): 1 MB, [3,4): 0.25 MB, then 0.125 MB at 1 MB/s -> ends at 4.125
    assert trace.transfer_time(1.5 * MB, 1.5) == pytest.approx(2.625)
    # one period carries 1.25 MB: 100 periods' worth from t=0 takes exactly 100 periods
    assert trace.transfer_time(125 * MB, 0.0) == pytest.approx(200.0)
    # absolute time far into the loop behaves like the same phase of the first period
    assert trace.transfer_time(1.5 * MB, 1.5 + 2.0 * 5000) == pytest.approx(2.625)


def test_transfer_time_waits_out_an_outage() -> None:
    trace = Trace([0.0, 1.0, 3.0], [8.0, 0.0, 8.0], 4.0)
    assert trace.transfer_time(1.5 * MB, 0.5) == pytest.approx(3.5)  # 0.5 MB, wait 2 s, 1 MB
    assert trace.transfer_time(1.0 * MB, 2.0) == pytest.approx(2.0)  # starts inside the outage
    assert trace.transfer_time(1.0 * MB, 0.0) == pytest.approx(1.0)  # done as the outage begins
    assert trace.transfer_time(0.0, 2.0) == 0.0


def test_transfer_time_matches_fine_grained_integration_of_bandwidth_at() -> None:
    trace = markov_outages([1.0, 5.0, 20.0], 0.3, 0.1, 2.0, 60.0, rng=np.random.default_rng(3))
    dt = 1e-3
    grid = np.arange(0.0, 10 * trace.duration, dt)
    carried = np.cumsum(trace.bandwidth_at(grid) * dt * 1e6 / 8)
    for t0, nbytes in [(0.0, 2 * MB), (7.3, 10 * MB), (41.0, 40 * MB)]:
        start = int(round(t0 / dt))
        before = carried[start - 1] if start else 0.0
        end = int(np.searchsorted(carried, before + nbytes))
        assert trace.transfer_time(nbytes, t0) == pytest.approx((end + 1) * dt - t0, abs=2 * dt)


def test_zero_throughput_trace_cannot_carry_bytes() -> None:
    with pytest.raises(TraceError, match="no bytes"):
        Trace([0.0], [0.0], 5.0).transfer_time(1.0, 0.0)
    with pytest.raises(TraceError, match="no bytes"):
        _step_trace().scaled(0.0).transfer_time(1.0, 3.0)


def test_bandwidth_at_is_vectorised_and_wraps() -> None:
    trace = _step_trace(duration=2.0)
    t = np.array([0.0, 0.99, 1.0, 1.5, 2.0, 2.5, -0.5, 4000.2])
    np.testing.assert_array_equal(trace.bandwidth_at(t), [8, 8, 2, 2, 8, 8, 2, 8])
    assert trace.bandwidth_at(t.reshape(2, 4)).shape == (2, 4)
    assert isinstance(trace.bandwidth_at(1.5), float)


def test_mean_mbps_is_time_weighted() -> None:
    trace = _step_trace(duration=2.0)
    assert trace.mean_mbps(0.5, 1.25) == pytest.approx((0.5 * 8 + 0.25 * 2) / 0.75)
    assert trace.mean_mbps(1.5, 2.5) == pytest.approx(5.0)  # across the wrap
    assert trace.mean_mbps(3.0, 43.0) == pytest.approx(5.0)  # whole periods
    assert trace.mean_mbps(1.2, 1.2) == 2.0
    assert trace.bytes_between(0.0, 2.0) == pytest.approx(1.25 * MB)
    with pytest.raises(ValueError):
        trace.mean_mbps(2.0, 1.0)


@pytest.mark.parametrize(
    ("times", "mbps", "duration", "message"),
    [
        ([0.5, 1.0], [1.0, 1.0], 2.0, "start at 0"),
        ([0.0, 1.0, 1.0], [1.0, 1.0, 1.0], 2.0, "strictly increasing"),
        ([0.0], [-1.0], 2.0, ">= 0"),
        ([0.0, 1.0], [1.0, 1.0], 1.0, "duration"),
        ([0.0, 1.0], [1.0], 2.0, "equal"),
    ],
)
def test_invalid_series_rejected(times, mbps, duration, message) -> None:
    with pytest.raises(TraceError, match=message):
        Trace(times, mbps, duration)


def test_trace_is_immutable() -> None:
    trace = _step_trace()
    with pytest.raises(ValueError):
        trace.mbps[0] = 100.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        trace.duration = 1.0  # type: ignore[misc]


def test_scaled_and_capped() -> None:
    trace = _step_trace()
    np.testing.assert_allclose(trace.scaled(0.5).mbps, [4.0, 1.0])
    np.testing.assert_allclose(trace.capped(5.0).mbps, [5.0, 2.0])
    assert trace.capped(5.0).duration == trace.duration
    np.testing.assert_allclose(trace.mbps, [8.0, 2.0])  # original untouched
    with pytest.raises(ValueError):
        trace.scaled(-1.0)


@pytest.mark.parametrize("offset", [0.5, 1.0, 0.0, 2.5, -0.25, 7.75])
def test_shifted_starts_the_loop_at_the_offset(offset: float) -> None:
    trace = _step_trace(duration=2.0)
    moved = trace.shifted(offset)
    t = np.linspace(0.0, 6.0, 601)
    np.testing.assert_array_equal(moved.bandwidth_at(t), trace.bandwidth_at(t + offset))
    assert moved.period_bytes == pytest.approx(trace.period_bytes)
    assert moved.times[0] == 0.0


def test_shifted_real_trace_keeps_every_value() -> None:
    trace = random_walk(10.0, 3.0, 97.3, step=0.7, rng=np.random.default_rng(0))
    moved = trace.shifted(41.13)
    t = np.linspace(0.0, 200.0, 4001)
    np.testing.assert_array_equal(moved.bandwidth_at(t), trace.bandwidth_at(t + 41.13))
    assert moved.transfer_time(3 * MB, 5.0) == pytest.approx(trace.transfer_time(3 * MB, 46.13))


@pytest.mark.parametrize(("t0", "length"), [(0.5, 1.0), (3.0, 2.5), (9.5, 1.0), (-0.5, 3.0), (4.0, 25.0)])
def test_a_window_repeats_those_seconds_of_the_series(t0: float, length: float) -> None:
    trace = _step_trace(duration=10.0)
    window = trace.window(t0, length)
    assert window.duration == length and window.times[0] == 0.0
    t = np.linspace(0.0, 3 * length, 3001, endpoint=False)
    np.testing.assert_array_equal(window.bandwidth_at(t), trace.bandwidth_at(t0 + np.mod(t, length)))
    assert window.period_bytes == pytest.approx(trace.bytes_between(t0, t0 + length))
    with pytest.raises(ValueError, match="length > 0"):
        trace.window(1.0, 0.0)


# ------------------------------------------------------------------------------- property checks


@st.composite
def traces(draw) -> Trace:
    n = draw(st.integers(1, 8))
    widths = draw(st.lists(st.floats(0.01, 10.0), min_size=n, max_size=n))
    rates = draw(st.lists(st.just(0.0) | st.floats(0.1, 100.0), min_size=n, max_size=n))
    if not any(rates):
        rates[0] = 1.0
    times = np.concatenate(([0.0], np.cumsum(widths)[:-1]))
    return Trace(times, rates, float(np.sum(widths)))


@settings(max_examples=150, deadline=None)
@given(
    trace=traces(),
    t0=st.floats(-50.0, 1000.0),
    a=st.floats(1.0, 5e7),
    b=st.floats(1.0, 5e7),
)
def test_transfer_time_is_monotone_and_additive(trace: Trace, t0: float, a: float, b: float):
    ta = trace.transfer_time(a, t0)
    tab = trace.transfer_time(a + b, t0)
    assert ta <= tab
    assert ta + trace.transfer_time(b, t0 + ta) == pytest.approx(tab, rel=1e-9, abs=1e-6)
    assert trace.bytes_between(t0, t0 + ta) == pytest.approx(a, rel=1e-6)


@settings(max_examples=150, deadline=None)
@given(trace=traces(), offset=st.floats(-100.0, 100.0), factor=st.floats(0.0, 10.0), cap=st.floats(0.0, 50.0))
def test_derived_traces_are_what_the_checked_constructor_builds(trace, offset, factor, cap):
    """Shift, scale and cap skip the constructor's checks; their results pass them and match exactly."""
    for derived in (trace.shifted(offset), trace.scaled(factor), trace.capped(cap)):
        checked = Trace(derived.times, derived.mbps, derived.duration, derived.name)
        for name in ("times", "mbps", "rate", "cum_bytes"):
            np.testing.assert_array_equal(getattr(derived, name), getattr(checked, name))
            assert not getattr(derived, name).flags.writeable
        assert derived.duration == trace.duration and derived._max_rate == checked._max_rate


# ------------------------------------------------------------------------------------- generators


def test_constant() -> None:
    trace = constant(12.0, duration=3.0)
    assert trace.bandwidth_at(2.9) == 12.0
    assert trace.transfer_time(3 * MB, 1.0) == pytest.approx(2.0)


def test_random_walk_seeded_bounded_and_mean_reverting() -> None:
    def walk(seed: int) -> Trace:
        return random_walk(20.0, 2.0, 5000.0, lo=5.0, hi=30.0, rng=np.random.default_rng(seed))

    first, again, other = walk(1), walk(1), walk(2)
    np.testing.assert_array_equal(first.mbps, again.mbps)
    assert not np.array_equal(first.mbps, other.mbps)
    assert first.mbps.min() >= 5.0 and first.mbps.max() <= 30.0
    np.testing.assert_allclose(np.diff(first.times), 1.0)
    assert first.duration == 5000.0
    assert abs(first.mean_mbps(0.0, first.duration) - 20.0) < 2.0
    assert first.mbps.std() > 1.0


def test_markov_outages_seeded_levels_and_outage_runs() -> None:
    def chain(seed: int) -> Trace:
        return markov_outages(
            [2.0, 10.0, 30.0], 0.2, 0.05, 3.0, 2000.0, step=0.5, rng=np.random.default_rng(seed)
        )

    first, again, other = chain(5), chain(5), chain(6)
    np.testing.assert_array_equal(first.mbps, again.mbps)
    assert not np.array_equal(first.mbps, other.mbps)
    assert set(np.unique(first.mbps)) == {0.0, 2.0, 10.0, 30.0}
    # outages last outage_len / step = 6 steps (back-to-back outages give multiples)
    down = np.concatenate(([0], (first.mbps == 0).astype(int), [0]))
    starts, ends = np.flatnonzero(np.diff(down) == 1), np.flatnonzero(np.diff(down) == -1)
    runs = (ends - starts)[ends < first.mbps.size]  # a run cut by the end of the trace is shorter
    assert runs.size > 0 and np.all(runs % 6 == 0)


def test_markov_outages_transition_matrix_and_no_outages() -> None:
    rng = np.random.default_rng(0)
    stuck = markov_outages([4.0, 8.0], [[1.0, 0.0], [0.0, 1.0]], 0.0, 1.0, 100.0, rng=rng)
    assert np.unique(stuck.mbps).size == 1
    flip = markov_outages([4.0, 8.0], [[0.0, 1.0], [1.0, 0.0]], 0.0, 1.0, 100.0, rng=rng)
    assert np.all(np.diff(flip.mbps) != 0)
    with pytest.raises(TraceError, match="2x2"):
        markov_outages([4.0, 8.0], [[0.5, 0.6], [1.0, 0.0]], 0.0, 1.0, 10.0, rng=rng)


@pytest.mark.parametrize(
    ("mean", "sigma", "lo", "hi", "reversion"),
    [
        (20.0, 2.0, 5.0, 30.0, 0.1),
        (0.65, 0.05, 0.3, 1.0, 0.1),
        (1.0, 3.0, 0.0, float("inf"), 0.0),
        (5, 1, 4, 6, 1),
    ],
)
def test_random_walk_equals_the_plain_recurrence_bit_for_bit(mean, sigma, lo, hi, reversion) -> None:
    """The compiled walk must reproduce the Python loop exactly (recorded episodes stay identical)."""
    for seed in range(5):
        trace = random_walk(mean, sigma, 700.0, 0.5, lo, hi, reversion, rng=np.random.default_rng(seed))
        noise = np.random.default_rng(seed).normal(0.0, sigma, size=trace.times.size)
        expected, x = [], mean
        for n in noise:
            expected.append(x)
            x = min(hi, max(lo, x + reversion * (mean - x) + n))
        assert trace.mbps.tolist() == expected


@pytest.mark.parametrize("transition", [0.3, [[0.1, 0.6, 0.3], [0.0, 0.5, 0.5], [0.7, 0.2, 0.1]]])
def test_markov_outages_equals_the_plain_chain(transition) -> None:
    """The compiled chain: same draws, same states as a plain loop with bisect over cumulative rows."""
    levels, p_out, steps = [2.0, 10.0, 30.0], 0.05, 3
    matrix = (
        np.where(np.eye(3, dtype=bool), 1.0 - 0.3, 0.3 / 2)
        if isinstance(transition, float)
        else np.array(transition)
    )
    for seed in range(5):
        trace = markov_outages(levels, transition, p_out, 3.0, 400.0, rng=np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        draws, state = rng.random((400, 2)), int(rng.integers(3))
        expected, down = [], 0
        for start, move in draws:
            down = steps if down == 0 and start < p_out else down
            expected.append(0.0 if down > 0 else levels[state])
            down = max(down - 1, 0)
            state = min(bisect.bisect_right(np.cumsum(matrix[state]).tolist(), move), 2)
        assert trace.mbps.tolist() == expected


def test_step_drop_shape() -> None:
    trace = step_drop(20.0, 2.0, t_drop=30.0, drop_len=30.0, duration=120.0)
    np.testing.assert_array_equal(trace.times, [0.0, 30.0, 60.0])
    np.testing.assert_array_equal(trace.mbps, [20.0, 2.0, 20.0])
    np.testing.assert_array_equal(step_drop(20.0, 2.0, 0.0, 30.0, 60.0).mbps, [2.0, 20.0])
    np.testing.assert_array_equal(step_drop(20.0, 2.0, 30.0, 30.0, 60.0).mbps, [20.0, 2.0])
    # 2.5 MB at 29 s: 1 s at 2.5 MB/s carries it all -> 1 s; 5 MB needs 2.5 MB more at 0.25 MB/s
    assert trace.transfer_time(2.5 * MB, 29.0) == pytest.approx(1.0)
    assert trace.transfer_time(5.0 * MB, 29.0) == pytest.approx(11.0)
    with pytest.raises(TraceError, match="t_drop"):
        step_drop(20.0, 2.0, 100.0, 30.0, 120.0)


# ---------------------------------------------------------------------------------- trace sources


def test_source_from_folder_picks_files_with_random_offset(tmp_path: Path) -> None:
    folder = tmp_path / "traces"
    folder.mkdir()
    _write(folder, "a.log", "0 1\n10 2\n")
    _write(folder, "b.log", "0 30\n10 40\n")
    source = TraceSource({"kind": "dir", "path": "traces", "scale": 2.0}, base_dir=tmp_path)
    samples = [source.sample(np.random.default_rng(seed)) for seed in range(20)]
    assert {s.name.split("@")[0] for s in samples} == {"a.log", "b.log"}
    assert len({s.times[1] for s in samples}) > 2  # start offsets differ
    for s in samples:
        assert s.mean_mbps(0.0, s.duration) in (pytest.approx(3.0), pytest.approx(70.0))
    replay = source.sample(np.random.default_rng(7))
    np.testing.assert_array_equal(replay.mbps, samples[7].mbps)
    np.testing.assert_array_equal(replay.times, samples[7].times)


def test_source_from_path_string_and_cap(tmp_path: Path) -> None:
    path = _write(tmp_path, "one.csv", "time_s,mbps\n0,5\n1,50\n")
    source = TraceSource({"kind": "file", "path": str(path), "cap_mbps": 20.0, "random_offset": False})
    np.testing.assert_array_equal(source.sample(np.random.default_rng(0)).mbps, [5.0, 20.0])
    assert TraceSource(path).sample(np.random.default_rng(0)).name.startswith("one.csv@")


def test_source_generator_spec_gives_fresh_seeded_traces() -> None:
    spec = TraceSpec.model_validate({"kind": "random_walk", "mean": 20, "sigma": 2, "lo": 1})
    source = TraceSource(spec)
    rng = np.random.default_rng(0)
    one, two = source.sample(rng), source.sample(rng)
    assert not np.array_equal(one.mbps, two.mbps)
    np.testing.assert_array_equal(one.mbps, source.sample(np.random.default_rng(0)).mbps)
    drop = TraceSource(
        {"kind": "step_drop", "high": 20, "low": 2, "t_drop": 30, "drop_len": 30, "duration": 120}
    ).sample(rng)
    assert drop.bandwidth_at(45.0) == 2.0  # generators keep their timeline unless asked


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "random_walk", "mean": -1, "sigma": 2}, "random_walk.mean"),
        ({"kind": "random_walk", "mean": 5, "sigma": 1, "lo": 10}, "lo <= mean"),
        ({"kind": "markov_outages", "levels_mbps": [], "outage_len": 1}, "levels_mbps"),
        ({"kind": "constant", "mbps": 5, "speed": 1}, "constant.speed"),
        ({"kind": "wavelet"}, "'kind'"),
        ({"kind": "file", "path": "nowhere.log"}, "nowhere.log"),
        (
            {"kind": "step_drop", "high": 9, "low": 1, "t_drop": 5, "drop_len": 9, "duration": 10},
            "t_drop + drop_len",
        ),
    ],
)
def test_source_errors_name_origin_and_field(tmp_path: Path, spec: dict, message: str) -> None:
    with pytest.raises(TraceError) as err:
        TraceSource(spec, base_dir=tmp_path, origin="configs/train/x.yaml: trace")
    assert str(err.value).startswith("configs/train/x.yaml: trace: ")
    assert message in str(err.value)
