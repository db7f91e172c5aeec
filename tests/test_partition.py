"""Micro-split execution is exact: every partitioned run equals the unsplit forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import models
from runtime.executor import compute_band, run_plan
from runtime.graph import LayerGraph
from runtime.layout import layout
from runtime.plan import Plan, random_plan

torch.set_num_threads(1)

# Small inputs keep the suite fast; the geometry (strides, paddings, blocks) is the full model's.
SMALL_INPUTS = {
    "tiny": (3, 32, 32),
    "vgg16_bn": (3, 32, 32),
    "resnet18": (3, 64, 64),
    "mobilenet_v2": (3, 64, 64),
    "yolov2_tiny": (3, 64, 64),
}
DEVICES = [f"d{i}" for i in range(10)]


@pytest.fixture(scope="module", params=sorted(SMALL_INPUTS))
def zoo(request):
    name = request.param
    model = models.build(name, seed=1)
    shape = SMALL_INPUTS[name]
    graph = LayerGraph.from_model(model, shape, name)
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(x)
    return graph, x, expected


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_plans_match_unsplit_forward(zoo, seed):
    graph, x, expected = zoo
    plan = random_plan(graph, DEVICES, np.random.default_rng(seed))
    out, _ = run_plan(graph, plan, x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_one_row_bands_and_every_cut(zoo):
    """Cut at every allowed point, each stage split into 1-row bands plus a remainder."""
    graph, x, expected = zoo
    stages = []
    for start, end in graph.groups:
        extent = graph.extent(end)
        k = min(8, extent)
        sizes = [1] * (k - 1) + [extent - (k - 1)]
        stages.append((start, end, {DEVICES[i]: s for i, s in enumerate(sizes)}))
    plan = Plan.build("d0", "d9", stages)
    out, _ = run_plan(graph, plan, x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_whole_model_fused_in_one_split_stage(zoo):
    """One stage fusing every spatial unit: the halo grows through the whole network."""
    graph, x, expected = zoo
    last_spatial = max(i + 1 for i, u in enumerate(graph.units) if u.kind == "spatial")
    k = min(3, graph.extent(last_spatial))
    stages = [(0, last_spatial, {f"d{i + 1}": i + 1 for i in range(k)})]
    if last_spatial < len(graph.units):
        stages.append((last_spatial, len(graph.units), {"d4": 1, "d5": 1}))
    out, _ = run_plan(graph, Plan.build("d0", "d0", stages), x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_vgg16_full_size_split_matches():
    model = models.build("vgg16_bn", seed=0)
    graph = LayerGraph.from_model(model, models.input_shape("vgg16_bn"), "vgg16_bn")
    x = torch.randn(1, *models.input_shape("vgg16_bn"), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    cut = graph.groups[9][1]  # after conv3_2... a mid-network cut
    fc = graph.groups[18][0]
    plan = Plan.build(
        "a",
        "d",
        [
            (0, cut, {"a": 1, "b": 2, "c": 3, "d": 1}),
            (cut, fc, {"b": 1, "c": 1}),
            (fc, len(graph.units), {"a": 1, "d": 3}),
        ],
    )
    out, acct = run_plan(graph, plan, x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert sum(acct.flops.values()) > graph.total_flops  # halo and FC-input redundancy cost extra


def test_accounting_counts_halo_flops_and_peer_bytes():
    model = models.build("tiny", seed=0)
    graph = LayerGraph.from_model(model, SMALL_INPUTS["tiny"], "tiny")
    first = graph.groups[0]  # the first conv layer group, 3x3 padding 1 keeps 32 rows
    plan = Plan.build(
        "s", "s", [(first[0], first[1], {"a": 1, "b": 1}), (first[1], len(graph.units), {"c": 1})]
    )
    lay = layout(graph, plan)
    a, b = lay.tasks[0]
    assert a.out_rows == (0, 16) and b.out_rows == (16, 32)
    assert a.in_rows == (0, 17) and b.in_rows == (15, 32)  # one halo row each side of the cut
    flops_per_row = graph.units[first[0]].flops // 32
    assert a.flops == 16 * flops_per_row
    row_bytes = 3 * 32 * 4
    acct = run_plan(graph, plan, torch.randn(1, *SMALL_INPUTS["tiny"]))[1]
    assert acct.bytes_received[("s", "a")] == 17 * row_bytes
    assert acct.bytes_received[("s", "b")] == 17 * row_bytes
    out_row_bytes = graph.row_bytes(first[1])
    assert acct.bytes_received[("a", "c")] == 16 * out_row_bytes
    assert ("c", "s") in acct.bytes_received  # the result goes to the sink


def test_compute_band_is_the_worker_entry_point():
    model = models.build("tiny", seed=3)
    graph = LayerGraph.from_model(model, SMALL_INPUTS["tiny"], "tiny")
    x = torch.randn(1, *SMALL_INPUTS["tiny"])
    end = graph.groups[2][1]  # after the pool: 8 rows
    with torch.no_grad():
        full = compute_band(graph, 0, end, x, (0, 32), (0, graph.extent(end)))
    out_rows = (2, 5)
    need = graph.input_rows(0, end, out_rows)
    band = compute_band(graph, 0, end, x[..., need[0] : need[1], :], need, out_rows)
    torch.testing.assert_close(band, full[..., 2:5, :], rtol=1e-4, atol=1e-5)
