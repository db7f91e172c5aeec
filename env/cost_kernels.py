"""The cost model's compiled kernels: a plan's bands and skeleton from flat arrays, and the replay.

env/cost_model.py's ``CostModel`` is the readable side: it caches a plan's skeleton (everything about
the plan that does not depend on the network's state) and turns the replay's per-device seconds into a
``Prediction``. The kernels here do the work, over the flat arrays its module docstring describes:

- ``plan_tasks``: ``Plan.bands`` (each stage's extent split by ``split_by_shares``), with each band's input
  rows and seconds at nominal speed read from the stage's ``BandTables``;
- ``compile_skeleton``: runtime/layout.py's transfer rule (``band_transfers``, compiled) turned into the
  skeleton's CSR tables of tasks, routes and hops;
- ``replay``: the discrete-event simulation of one or several requests, integrating the world's traces
  with runtime/schedule.py's routine (env/trace_kernels.py).

Kernels that Python calls are compiled with ``cache=True`` (first use in a fresh checkout compiles for a
few seconds, later processes load them) and always receive the same argument types (contiguous int64 and
float64 arrays), so each has one compiled signature: processes that compile at the same time (vectorised
envs on a cold cache) then write identical cache entries. Helpers are compiled into their callers.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from env.completion import split_rows
from env.trace_kernels import carry_seconds, locate, segment_at
from runtime.layout import band_transfers
from runtime.schedule import BYTES_PER_MBIT

_band_transfers = njit(band_transfers)  # the layout's transfer rule, compiled (into compile_skeleton)


@njit(cache=True)
def plan_tasks(
    ptr, devices, shares, extents, offsets, in_first, in_end, work_first, work_end, work_size, rate
):
    """``Plan.bands`` over flat arrays (stage ``s``'s assignments are ``ptr[s]..ptr[s+1]-1``): each
    stage's extent split by ``split_rows`` (= ``split_by_shares``) into consecutive row ranges in listed
    order, empty ones dropped; each band's input rows and seconds at nominal speed read from the stage's
    ``BandTables`` rows at ``offsets[s]`` (work / ``rate`` of its device). Returns the bands' stage_ptr,
    device, out_lo, out_hi, in_lo, in_hi and seconds, and how many seconds are NaN (a flat stage's band
    size the tables do not know yet)."""
    n_stages = extents.size
    stage_ptr = np.zeros(n_stages + 1, dtype=np.int64)
    band_device = np.empty(devices.size, dtype=np.int64)
    out_lo = np.empty(devices.size, dtype=np.int64)
    out_hi = np.empty(devices.size, dtype=np.int64)
    in_lo = np.empty(devices.size, dtype=np.int64)
    in_hi = np.empty(devices.size, dtype=np.int64)
    seconds = np.empty(devices.size)
    n, new_sizes = 0, 0
    for s in range(n_stages):
        sizes = split_rows(extents[s], shares[ptr[s] : ptr[s + 1]])
        o, lo = offsets[s], 0
        for j in range(sizes.size):
            hi = lo + sizes[j]
            if hi > lo:
                d = devices[ptr[s] + j]
                band_device[n], out_lo[n], out_hi[n] = d, lo, hi
                in_lo[n], in_hi[n] = in_first[o + lo], in_end[o + hi]
                work = work_end[o + hi] - work_first[o + lo] + work_size[o + hi - lo]
                seconds[n] = work / rate[d]
                new_sizes += math.isnan(work)
                n += 1
            lo = hi
        stage_ptr[s + 1] = n
    return stage_ptr, band_device[:n], out_lo[:n], out_hi[:n], in_lo[:n], in_hi[:n], seconds[:n], new_sizes


@njit(cache=True)
def compile_skeleton(
    n_dev,
    stage_ptr,
    band_device,
    out_lo,
    out_hi,
    in_lo,
    in_hi,
    row_bytes,
    source,
    sink,
    pair_lo,
    pair_hi,
    pair_src,
    pair_dst,
    pair_link,
    pair_latency,
):
    """A plan's ``Skeleton`` arrays from its bands (``band_transfers``' inputs plus each band's device and
    the bytes per row of each stage's input and of the output): the CSR tables, routes and hops over the
    route table ``pair_*`` (pair ``a * D + b``). Returns them followed by the sink's input count, a mask of
    the participating devices and the first device pair without a route (-1: none)."""
    n_tasks = band_device.size
    n_stages = stage_ptr.size - 1
    cap = (stage_ptr[1] - stage_ptr[0]) + (stage_ptr[n_stages] - stage_ptr[n_stages - 1])  # source, sink
    for s in range(1, n_stages):
        cap += (stage_ptr[s] - stage_ptr[s - 1]) * (stage_ptr[s + 1] - stage_ptr[s])
    t_stage = np.empty(cap, dtype=np.int64)
    t_src = np.empty(cap, dtype=np.int64)
    t_dst = np.empty(cap, dtype=np.int64)
    t_lo = np.empty(cap, dtype=np.int64)
    t_hi = np.empty(cap, dtype=np.int64)
    n = _band_transfers(stage_ptr, out_lo, out_hi, in_lo, in_hi, t_stage, t_src, t_dst, t_lo, t_hi)
    inputs = np.zeros(n_tasks, dtype=np.int64)
    send_ptr = np.zeros(n_tasks + 3, dtype=np.int64)  # row x (the source: n_tasks) counts at x + 2
    local_ptr = np.zeros(n_tasks + 3, dtype=np.int64)
    used = np.zeros(n_dev, dtype=np.bool_)
    used[source] = used[sink] = True
    sink_inputs, n_routes, n_hops, missing = 0, 0, 0, -1
    for i in range(n):  # count
        q, r = t_src[i], t_dst[i]
        a = source if q < 0 else band_device[q]
        b = sink if r < 0 else band_device[r]
        sender = n_tasks if q < 0 else q
        used[a] = used[b] = True
        if r >= 0:
            inputs[r] += 1
        else:
            sink_inputs += 1
        if a == b:
            local_ptr[sender + 2] += 1
        else:
            send_ptr[sender + 2] += 1
            n_routes += 1
            if pair_lo[a * n_dev + b] < 0:
                missing = a * n_dev + b if missing < 0 else missing
            else:
                n_hops += pair_hi[a * n_dev + b] - pair_lo[a * n_dev + b]
    send_ptr = np.cumsum(send_ptr)  # row x fills from send_ptr[x + 1] on, which ends as its end
    local_ptr = np.cumsum(local_ptr)
    send_route = np.empty(n_routes, dtype=np.int64)
    local_task = np.empty(local_ptr[-1], dtype=np.int64)
    route_ptr = np.zeros(n_routes + 1, dtype=np.int64)
    route_bytes = np.empty(n_routes)
    route_task = np.empty(n_routes, dtype=np.int64)
    hop_src = np.empty(n_hops, dtype=np.int64)
    hop_dst = np.empty(n_hops, dtype=np.int64)
    hop_link = np.empty(n_hops, dtype=np.int64)
    hop_latency = np.empty(n_hops)
    link_matrix = np.zeros((n_dev, n_dev), dtype=np.int64)
    if missing >= 0:
        n = 0
    route, hop = 0, 0
    for i in range(n):  # fill, in transfer order
        q, r = t_src[i], t_dst[i]
        a = source if q < 0 else band_device[q]
        b = sink if r < 0 else band_device[r]
        sender = n_tasks if q < 0 else q
        if a == b:
            local_task[local_ptr[sender + 1]] = r
            local_ptr[sender + 1] += 1
            continue
        send_route[send_ptr[sender + 1]] = route
        send_ptr[sender + 1] += 1
        nbytes = (t_hi[i] - t_lo[i]) * row_bytes[t_stage[i]]
        for h in range(pair_lo[a * n_dev + b], pair_hi[a * n_dev + b]):
            hop_src[hop], hop_dst[hop] = pair_src[h], pair_dst[h]
            hop_link[hop], hop_latency[hop] = pair_link[h], pair_latency[h]
            link_matrix[pair_src[h], pair_dst[h]] += nbytes
            used[pair_src[h]] = used[pair_dst[h]] = True
            hop += 1
        route_bytes[route] = nbytes
        route_task[route] = r
        route += 1
        route_ptr[route] = hop
    return (
        inputs,
        send_ptr[:-1],
        send_route,
        local_ptr[:-1],
        local_task,
        route_ptr,
        route_bytes,
        route_task,
        hop_src,
        hop_dst,
        hop_link,
        hop_latency,
        link_matrix,
        sink_inputs,
        used,
        missing,
    )


@njit  # called only by replay, whose cache holds it
def _push(heap_t, heap_s, heap_a, heap_b, n, t, seq, a, b):
    """Push event (t, seq) carrying (a, b) on a binary min-heap ordered by (time, seq); returns size."""
    i = n
    while i > 0:
        parent = (i - 1) // 2
        pt, ps = heap_t[parent], heap_s[parent]
        if pt < t or (pt == t and ps < seq):
            break
        heap_t[i], heap_s[i], heap_a[i], heap_b[i] = pt, ps, heap_a[parent], heap_b[parent]
        i = parent
    heap_t[i], heap_s[i], heap_a[i], heap_b[i] = t, seq, a, b
    return n + 1


@njit  # called only by replay, whose cache holds it
def _pop(heap_t, heap_s, heap_a, heap_b, n):
    """Remove the smallest event; returns (time, a, b, new size)."""
    t, a, b = heap_t[0], heap_a[0], heap_b[0]
    n -= 1
    lt, ls, la, lb = heap_t[n], heap_s[n], heap_a[n], heap_b[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and (
            heap_t[c + 1] < heap_t[c] or (heap_t[c + 1] == heap_t[c] and heap_s[c + 1] < heap_s[c])
        ):
            c += 1
        if lt < heap_t[c] or (lt == heap_t[c] and ls < heap_s[c]):
            break
        heap_t[i], heap_s[i], heap_a[i], heap_b[i] = heap_t[c], heap_s[c], heap_a[c], heap_b[c]
        i = c
    if n > 0:
        heap_t[i], heap_s[i], heap_a[i], heap_b[i] = lt, ls, la, lb
    return t, a, b, n


@njit(cache=True)
def replay(
    starts,
    task_device,
    task_seconds,
    task_inputs,
    send_ptr,
    send_route,
    local_ptr,
    local_task,
    route_ptr,
    route_bytes,
    route_task,
    hop_src,
    hop_dst,
    hop_link,
    hop_latency,
    sink_inputs,
    constant,
    link_mbps,
    speed,
    l_times,
    l_rate,
    l_cum,
    l_lo,
    l_hi,
    l_duration,
    l_period,
    l_max_rate,
    s_times,
    s_rate,
    s_lo,
    s_hi,
    s_duration,
    devices,
    compute_w,
    transmit_w,
    receive_w,
    idle_w,
    out,
    finishes,
    carried_at,
    carried,
    on_air,
):
    """Discrete-event replay (env/cost_model.py's module docstring) of requests whose sources hold their
    inputs at ``starts``. Fills ``out`` rows compute, send, recv, idle and energy seconds/joules per device (idle and energy for
    the participating ``devices`` only, over the span from the first start to the last finish),
    ``finishes`` (the time each request's sink holds its whole output; NaN if it never does) and
    ``carried`` (the radio bytes every hop had carried by ``carried_at``, and all of them) and ``on_air``
    (per link carrying a hop still on the air at ``carried_at``: that hop's bytes and start, the one with
    the fewest bytes a second since it began where two are; rows of the other links untouched), and
    returns the total energy.

    Request ``k``'s source is CSR row ``n_tasks + k`` and its sink is task ``-1 - k``. Events are
    source-ready (kind -2, b = request), task-ready (kind -1, b = task) and hop-ready (a = route, b = hop
    index) on one heap ordered by (time, sequence number), so simultaneous events keep the order in which
    they arose.
    """
    n_tasks = task_device.size
    n_dev = out.shape[1]
    n_req = starts.size
    t0 = starts.min()
    compute_free = np.full(n_dev, t0)
    radio_free = np.full(n_dev, t0)
    waiting = task_inputs.copy()
    ready_at = np.full(n_tasks, t0)
    cap = n_tasks + hop_src.size + n_req
    heap_t = np.empty(cap)
    heap_s = np.empty(cap, dtype=np.int64)
    heap_a = np.empty(cap, dtype=np.int64)
    heap_b = np.empty(cap, dtype=np.int64)
    n, seq = 0, 0
    sink_waiting = sink_inputs.copy()
    finishes[:] = starts
    for q in range(n_req):
        n = _push(heap_t, heap_s, heap_a, heap_b, n, starts[q], seq, -2, q)
        seq += 1
    # arrivals at a_at to handle before the next event: the local hand-overs local_task[a_lo:a_hi], or
    # (a_lo == a_hi == -1) one route's receiving task a_task
    a_lo, a_hi, a_at, a_task = 0, 0, t0, 0
    while True:
        for k in range(a_lo, a_hi) if a_lo >= 0 else range(1):
            task = local_task[k] if a_lo >= 0 else a_task
            if task < 0:
                q = -1 - task
                sink_waiting[q] -= 1
                finishes[q] = a_at if a_at > finishes[q] else finishes[q]
                continue
            waiting[task] -= 1
            if a_at > ready_at[task]:
                ready_at[task] = a_at
            if waiting[task] == 0:
                n = _push(heap_t, heap_s, heap_a, heap_b, n, ready_at[task], seq, -1, task)
                seq += 1
        if n == 0:
            break
        at, a, b, n = _pop(heap_t, heap_s, heap_a, heap_b, n)
        if a == -2:  # request b's source holds its input
            for k in range(send_ptr[n_tasks + b], send_ptr[n_tasks + b + 1]):
                r = send_route[k]
                n = _push(heap_t, heap_s, heap_a, heap_b, n, at, seq, r, route_ptr[r])
                seq += 1
            a_lo, a_hi, a_at = local_ptr[n_tasks + b], local_ptr[n_tasks + b + 1], at
            continue
        if a == -1:  # task b is ready
            d = task_device[b]
            start = at if at > compute_free[d] else compute_free[d]
            if constant:
                factor = speed[d]
            else:
                factor = s_rate[segment_at(s_times, s_lo[d], s_hi[d], s_duration[d], start)] / BYTES_PER_MBIT
            end = start + task_seconds[b] / factor
            compute_free[d] = end
            out[0, d] += end - start
            for k in range(send_ptr[b], send_ptr[b + 1]):
                r = send_route[k]
                n = _push(heap_t, heap_s, heap_a, heap_b, n, end, seq, r, route_ptr[r])
                seq += 1
            a_lo, a_hi, a_at = local_ptr[b], local_ptr[b + 1], end
            continue
        src, dst, link = hop_src[b], hop_dst[b], hop_link[b]
        free = radio_free[src]
        start = at if at > free else free
        nbytes = route_bytes[a]
        if nbytes == 0:
            airtime = 0.0
        elif constant:
            mbps = link_mbps[link]
            airtime = nbytes * 8 / (mbps * 1e6) if mbps > 0 else math.inf
        else:
            if l_period[link] <= 0:
                raise ValueError("cost model: a link trace carries no bytes in a whole period")
            lo, hi, dur = l_lo[link], l_hi[link], l_duration[link]
            _, r0, c0 = locate(l_times, l_rate, l_cum, lo, hi, dur, start)
            airtime = carry_seconds(
                l_times, l_rate, l_cum, lo, hi, dur, l_period[link], l_max_rate[link], nbytes, start, r0, c0
            )
        radio_free[src] = start + airtime
        carried[1] += nbytes
        if start + airtime <= carried_at:
            carried[0] += nbytes
        elif start < carried_at:  # on the air at carried_at: what the link carried since it began
            if constant:
                so_far = (carried_at - start) * link_mbps[link] * BYTES_PER_MBIT
            else:
                k0, _, c0 = locate(l_times, l_rate, l_cum, l_lo[link], l_hi[link], l_duration[link], start)
                k1, _, c1 = locate(
                    l_times, l_rate, l_cum, l_lo[link], l_hi[link], l_duration[link], carried_at
                )
                so_far = (k1 - k0) * l_period[link] + c1 - c0
            carried[0] += so_far if so_far < nbytes else nbytes
            held, since = on_air[link, 0], on_air[link, 1]
            if held == 0.0 or nbytes * (carried_at - since) < held * (carried_at - start):
                on_air[link, 0], on_air[link, 1] = nbytes, start
        out[1, src] += airtime
        out[2, dst] += airtime
        arrival = start + airtime + hop_latency[b]
        if b + 1 < route_ptr[a + 1]:
            n = _push(heap_t, heap_s, heap_a, heap_b, n, arrival, seq, a, b + 1)
            seq += 1
            a_lo, a_hi = 0, 0
        else:
            a_lo, a_hi, a_at, a_task = -1, -1, arrival, route_task[a]
    for q in range(n_req):
        if sink_waiting[q]:
            finishes[q] = math.nan
    makespan = finishes.max() - t0 if not np.isnan(finishes).any() else 0.0
    total = 0.0
    for d in devices:
        busy = out[0, d] + out[1, d] + out[2, d]
        out[3, d] = max(0.0, makespan - busy)
        out[4, d] = (
            out[0, d] * compute_w[d]
            + out[1, d] * transmit_w[d]
            + out[2, d] * receive_w[d]
            + out[3, d] * idle_w[d]
        )
        total += out[4, d]
    return total
