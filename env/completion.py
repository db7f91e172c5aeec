"""Analytic completion: from a plan *shape* (cut points + split factor per stage) to a full Plan.

The policy only decides the shape of a plan: where the vertical cuts go and across how many devices each
stage is split. Which devices, in which row order and with which shares, follows from the snapshot by a
small load-balancing model, so the learning problem stays small and the same shape keeps its meaning on
any cluster. Everything here is a pure function of ``(graph, snapshot)``; planners may reuse it.

Model of one stage ``[start, end)`` split ``k`` ways (seconds; x = a device's share of the output):

    t_d(x) = a_d + x * c_d
    c_d = in_bytes * spb_in(d) + flops / speed(d) + out_bytes * spb_out(d)   (the whole stage on d)
    a_d = the halo a band of a k-way split adds (its extra input rows and FLOPs), or, for a flat
          stage, the whole input tensor (every device needs all of it)

``spb_in(d)`` is the seconds per byte from the previous stage's devices to ``d`` (route store-and-forward,
weighted by the previous shares; 0 on the same device), ``spb_out(d)`` the same towards the sink for the
last stage (0 otherwise). The ``k`` devices with the smallest single-device time ``a_d + c_d`` are chosen
and their shares equalise finish times, ``x_d = (T - a_d) / c_d`` with ``sum x_d = 1`` (the divisible-load
solution); a device that would get ``x_d <= 0`` is dropped. Shares are then rounded to whole rows (largest
remainder), so a plan is canonical: equal conditions give the identical plan. Row order: neighbouring
bands exchange halo rows at every stage boundary, so the first stage lays its devices out along short
routes (cheapest insertion on seconds per byte), and each later stage keeps the order of the devices it
shares with the one before (their rows stay where they are) and puts its new ones after them.
Devices that are down, unreachable (a zero-bandwidth hop or a relay that is down) or lack memory for the
stage's weights are never chosen, and ``k`` is clamped to what is usable and to the stage's extent.

A stage's work is its FLOPs, or with a ``profile`` its measured seconds on the profile's reference device
(``stage_info``): the optimisers and the env of the policy for any cluster (env/staged_env.py) pass their
cost model's profile, and that policy does when its file says it was trained so; the fixed-slot policy
(agents/ppo.py) and its env complete on FLOPs, what it was trained on.

The model is deliberately simple: the cost model (and the runtime) decide the actual latency, and the
policy learns which shapes work under which conditions. It runs once or twice per env step, so the whole
per-stage loop is one numba kernel (``_complete``); its whole-row rounding ``split_rows`` compiles
``runtime.halo.largest_remainder``, the rule ``split_by_shares`` runs in Python. ``complete_arrays`` returns
the plan as the kernel's arrays (``PlanArrays``) for callers that only cost it. Shapes and the search
over them live in env/shapes.py; the snapshot as arrays (``NetView``) in env/net_view.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from env.net_view import UNREACHABLE, NetView
from env.plan_arrays import PlanArrays
from env.shapes import Shape
from runtime.graph import LayerGraph
from runtime.halo import largest_remainder
from runtime.plan import Plan

if TYPE_CHECKING:
    from env.cost_model import Profile


@dataclass(frozen=True)
class StageInfo:
    """What the balancing model needs of one stage split ``k`` ways; static per graph, so cached."""

    extent: int
    flat: bool
    in_bytes: float
    flops: float
    out_bytes: float
    halo_bytes: float  # extra input bytes one band of a k-way split needs (a middle band, the worst case)
    halo_flops: float  # extra FLOPs that band computes
    param_bytes: int


@lru_cache(maxsize=8192)
def stage_info(graph: LayerGraph, start: int, end: int, k: int, profile: Profile | None = None) -> StageInfo:
    """Stage ``[start, end)`` split ``k`` ways. Its work is FLOPs, or with ``profile`` the profile's
    seconds as FLOPs of its reference device (seconds x reference GFLOP/s), so a device's time is work /
    its FLOP/s either way and the balancing model reads both alike."""
    extent = graph.extent(end)
    flat = graph.stage_kind(end) == "flat"

    def work(rows: tuple[int, int]) -> float:
        if profile is None:
            return float(graph.band_flops(start, end, rows))
        return graph.band_seconds(profile.unit_seconds, start, end, rows) * profile.reference_gflops * 1e9

    flops = work((0, extent))
    in_bytes = float(graph.extent(start) * graph.row_bytes(start))
    out_bytes = float(extent * graph.row_bytes(end))
    halo_bytes = halo_flops = 0.0
    if k > 1 and not flat:
        rows = max(1, extent // k)
        lo = (extent - rows) // 2
        band_in = graph.input_rows(start, end, (lo, lo + rows))
        halo_bytes = max(0.0, (band_in[1] - band_in[0]) * graph.row_bytes(start) - in_bytes * rows / extent)
        halo_flops = max(0.0, work((lo, lo + rows)) - flops * rows / extent)
    return StageInfo(
        extent, flat, in_bytes, flops, out_bytes, halo_bytes, halo_flops, graph.stage_param_bytes(start, end)
    )


@lru_cache(maxsize=1024)
def _shape_arrays(graph: LayerGraph, shape: Shape, profile: Profile | None = None) -> tuple[np.ndarray, ...]:
    """Per stage of ``shape``, what ``_complete`` needs: the clamped factor and the ``StageInfo`` fields."""
    infos, ks = [], []
    for start, end, factor in shape.stages:
        k = max(1, min(factor, graph.extent(end)))
        infos.append(stage_info(graph, start, end, k, profile))
        ks.append(k)
    floats = np.array(
        [(i.in_bytes, i.flops, i.out_bytes, i.halo_bytes, i.halo_flops) for i in infos], dtype=np.float64
    ).T
    ints = np.array([(i.extent, i.param_bytes, k) for i, k in zip(infos, ks, strict=True)], dtype=np.int64).T
    # contiguous rows: one compiled signature for every shape (see env/cost_kernels.py on the numba cache)
    columns = [np.ascontiguousarray(c) for c in (*floats, *ints)]
    return (np.array([i.flat for i in infos], dtype=np.bool_), *columns)


def complete(graph: LayerGraph, view: NetView, shape: Shape, profile: Profile | None = None) -> Plan:
    """The plan for ``shape`` under the conditions in ``view`` (see the module docstring).

    Factors larger than the usable devices or the stage's extent are clamped; the result always
    validates against the graph.
    """
    return complete_arrays(graph, view, shape, profile).plan


def complete_arrays(
    graph: LayerGraph, view: NetView, shape: Shape, profile: Profile | None = None
) -> PlanArrays:
    """``complete`` as the arrays the compiled ``_complete`` returns (the per-stage choice and balancing),
    for callers that only cost the plan: the Plan's objects are built when ``.plan`` is first asked for."""
    stage_ptr, devices, sizes = _complete(
        view.sec_per_byte, view.usable_mask, view.memory_bytes, view.inv_speed, view.index[view.source],
        view.index[view.sink], *_shape_arrays(graph, shape, profile),
    )  # fmt: skip
    return PlanArrays(
        view.devices,
        view.index[view.source],
        view.index[view.sink],
        shape.spans,
        stage_ptr,
        devices,
        sizes.astype(np.float64),
    )


@njit(cache=True)
def _complete(
    spb, usable, memory, inv_speed, source, sink, flat, in_bytes, flops, out_bytes, halo_bytes, halo_flops,
    extent, param_bytes, k,
):  # fmt: skip
    """Every stage's devices (in row order) and rows: ``devices[stage_ptr[s]:stage_ptr[s+1]]`` and ``sizes``.

    Per stage: ``_choose`` the devices and shares, whole rows by ``split_rows``, then the devices that got
    rows in row order (``_row_order``).
    """
    n = spb.shape[0]
    n_stages = flat.size
    prev_dev = np.full(1, source, dtype=np.int64)  # previous stage's devices and shares, in row order
    prev_w = np.ones(1)
    used_memory = np.zeros(n)
    stage_ptr = np.zeros(n_stages + 1, dtype=np.int64)
    out_dev = np.empty(n_stages * n, dtype=np.int64)
    out_rows = np.empty(n_stages * n, dtype=np.int64)
    for s in range(n_stages):
        chosen, shares, spb_in = _choose(
            spb, usable, memory, inv_speed, used_memory, prev_dev, prev_w, sink if s == n_stages - 1 else -1,
            flat[s], in_bytes[s], flops[s], out_bytes[s], halo_bytes[s], halo_flops[s], param_bytes[s], k[s],
        )  # fmt: skip
        sizes = split_rows(extent[s], shares)
        order = _row_order(chosen, sizes, spb_in, spb, prev_dev, n, s == 0)
        m = order.size
        prev_dev = np.empty(m, dtype=np.int64)
        prev_w = np.empty(m)
        base = stage_ptr[s]
        for i in range(m):
            j = order[i]
            prev_dev[i] = chosen[j]
            prev_w[i] = sizes[j] / extent[s]
            out_dev[base + i] = chosen[j]
            out_rows[base + i] = sizes[j]
            used_memory[chosen[j]] += param_bytes[s]
        stage_ptr[s + 1] = base + m
    return stage_ptr, out_dev[: stage_ptr[n_stages]], out_rows[: stage_ptr[n_stages]]


_largest_remainder = njit(largest_remainder)  # runtime.halo's rule, compiled into split_rows


@njit  # called only by _complete, whose cache holds it
def _row_order(chosen, sizes, spb_in, spb, prev_dev, n, first):
    """The indices into ``chosen`` of the devices that got rows, in row order.

    After the first stage: by (rank in the previous stage, ``spb_in``, index), which keeps data local and
    transfers short. The first stage (whose previous stage is the source alone): the source first if it
    computes, then each other device, nearest the source first, inserted where it adds the fewest seconds
    per byte between neighbouring bands (cheapest insertion), so neighbours' halo exchanges take short
    routes rather than relays.
    """
    rank = np.full(n, n, dtype=np.int64)
    for r in range(prev_dev.size):
        rank[prev_dev[r]] = r
    order = np.empty(chosen.size, dtype=np.int64)
    m = 0
    for j in range(chosen.size):  # insertion sort of the devices with rows by (rank, spb_in, index)
        if sizes[j] <= 0:
            continue
        d = chosen[j]
        i = m - 1
        while i >= 0:
            e = chosen[order[i]]
            if rank[e] > rank[d] or (
                rank[e] == rank[d] and (spb_in[e] > spb_in[d] or (spb_in[e] == spb_in[d] and e > d))
            ):
                order[i + 1] = order[i]
                i -= 1
            else:
                break
        order[i + 1] = j
        m += 1
    if not first or m < 3:
        return order[:m]
    path = np.empty(m, dtype=np.int64)
    path[0] = order[0]
    for t in range(1, m):  # insert order[t] into path[:t] at its cheapest position
        d = chosen[order[t]]
        best, best_pos = np.inf, t
        for pos in range(t + 1):  # between path[pos - 1] (a) and path[pos] (b), where they exist
            a = chosen[path[pos - 1]] if pos > 0 else -1
            b = chosen[path[pos]] if pos < t else -1
            added = 0.0
            if a >= 0:
                added += spb[a, d] + spb[d, a]
            if b >= 0:
                added += spb[d, b] + spb[b, d]
                if a >= 0:
                    added -= spb[a, b] + spb[b, a]
            if added < best:
                best, best_pos = added, pos
        for i in range(t, best_pos, -1):
            path[i] = path[i - 1]
        path[best_pos] = order[t]
    return path


@njit(cache=True)
def split_rows(total, shares):
    """``runtime.halo.split_by_shares`` compiled: integer sizes proportional to ``shares`` summing to
    ``total`` (largest remainder, ties to the earlier entry), as an int64 array."""
    sizes = np.zeros(shares.size, dtype=np.int64)
    _largest_remainder(total, shares, sizes)
    return sizes


@njit  # called only by _complete, whose cache holds it
def _choose(
    spb, usable, memory, inv_speed, used_memory, prev_dev, prev_w, sink, flat, in_bytes, flops, out_bytes,
    halo_bytes, halo_flops, param_bytes, k,
):  # fmt: skip
    """One stage's devices and shares (module docstring): returns the chosen devices (the ``k`` best by
    single-device time), their shares (equal finish times; 0 for a device whose fixed cost alone exceeds
    the common finish) and ``spb_in`` per device. ``sink`` >= 0 only for the last stage."""
    spb_in = _seconds_per_byte_in(spb, prev_dev, prev_w)
    cand, fixed, per_share = _candidates(
        spb, usable, memory, inv_speed, used_memory, spb_in, prev_dev, sink, flat, in_bytes, flops, out_bytes,
        halo_bytes, halo_flops, param_bytes,
    )  # fmt: skip
    _sort_by_single_device_time(cand, fixed, per_share)
    chosen = cand[: min(k, cand.size)].copy()
    x = _equal_finish_shares(chosen, fixed, per_share)
    shares = np.empty(chosen.size)
    for j in range(chosen.size):
        shares[j] = max(0.0, x[chosen[j]])
    return chosen, shares, spb_in


@njit  # called only by _complete, whose cache holds it
def _seconds_per_byte_in(spb, prev_dev, prev_w):
    """Per device, the seconds per byte from the previous stage's devices, weighted by their shares."""
    n = spb.shape[0]
    spb_in = np.zeros(n)
    for p in range(prev_dev.size):
        w = prev_w[p]
        for d in range(n):
            spb_in[d] = spb_in[d] + w * spb[prev_dev[p], d]
    return spb_in


@njit  # called only by _complete, whose cache holds it
def _candidates(
    spb, usable, memory, inv_speed, used_memory, spb_in, prev_dev, sink, flat, in_bytes, flops, out_bytes,
    halo_bytes, halo_flops, param_bytes,
):  # fmt: skip
    """The devices that can take the stage (up, with memory for its weights, reachable from the previous
    stage and to the sink), each with its ``fixed`` (a_d) and ``per_share`` (c_d) seconds; when none can,
    the previous stage's first device, which keeps the data where it is."""
    n = spb.shape[0]
    fixed = np.zeros(n)
    per_share = np.zeros(n)
    cand = np.empty(n, dtype=np.int64)
    m = 0
    for d in range(n):
        if not usable[d] or used_memory[d] + param_bytes > memory[d] or spb_in[d] == UNREACHABLE:
            continue
        to_sink = spb[d, sink] if sink >= 0 else 0.0
        if to_sink == UNREACHABLE:
            continue
        compute = flops * inv_speed[d] + out_bytes * to_sink
        if flat:
            fixed[d], per_share[d] = in_bytes * spb_in[d], compute
        else:
            fixed[d] = halo_bytes * spb_in[d] + halo_flops * inv_speed[d]
            per_share[d] = in_bytes * spb_in[d] + compute
        cand[m] = d
        m += 1
    if m == 0:  # nothing usable can take it: stay where the data is
        d = prev_dev[0]
        cand[0], fixed[d], per_share[d] = d, 0.0, 1.0
        m = 1
    return cand[:m], fixed, per_share


@njit  # called only by _complete, whose cache holds it
def _sort_by_single_device_time(cand, fixed, per_share):
    """Sort ``cand`` in place by (single-device time ``fixed + per_share``, index): insertion sort."""
    for i in range(1, cand.size):
        d = cand[i]
        key = fixed[d] + per_share[d]
        j = i - 1
        while j >= 0 and (
            fixed[cand[j]] + per_share[cand[j]] > key
            or (fixed[cand[j]] + per_share[cand[j]] == key and cand[j] > d)
        ):
            cand[j + 1] = cand[j]
            j -= 1
        cand[j + 1] = d


@njit  # called only by _complete, whose cache holds it
def _equal_finish_shares(chosen, fixed, per_share):
    """Shares (per device index) over ``chosen`` that equalise ``fixed + share * per_share``, dropping the
    devices that would get <= 0; if every device would, the whole stage goes to the smallest fixed cost."""
    x = np.zeros(fixed.size)
    active = chosen.copy()
    while True:
        num, den = 0.0, 0.0
        for d in active:
            v = 1.0 / max(per_share[d], 1e-15)
            num += fixed[d] * v
            den += v
        finish = (1.0 + num) / den
        x[:] = 0.0
        kept = 0
        for d in active:
            x[d] = (finish - fixed[d]) * (1.0 / max(per_share[d], 1e-15))
            kept += x[d] > 0
        if kept == active.size or kept == 0:
            break
        active = np.array([d for d in active if x[d] > 0])
    if kept == 0:
        best = active[0]
        for d in active:
            if fixed[d] < fixed[best]:
                best = d
        x[:] = 0.0
        x[best] = 1.0
    return x


def shape_valid(graph: LayerGraph, view: NetView, shape: Shape) -> bool:
    """Whether every stage's factor fits the usable devices and the stage's extent (the action mask)."""
    usable = view.n_usable
    return all(k <= usable and k <= graph.extent(e) for _, e, k in shape.stages)
