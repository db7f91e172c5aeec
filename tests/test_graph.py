"""LayerGraph figures match the published ones, and the halo arithmetic is right."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from runtime import models
from runtime.graph import LayerGraph
from runtime.halo import LayerGeom, layer_input_rows, split_by_shares

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("name", "params", "gmacs"),
    [
        ("vgg16_bn", 138_365_992, 15.47),
        ("resnet18", 11_689_512, 1.81),
        ("mobilenet_v2", 3_504_872, 0.30),
    ],
)
def test_totals_match_published_figures(name, params, gmacs):
    graph = LayerGraph.from_model(models.build(name), models.input_shape(name), name)
    assert graph.total_params == params
    assert graph.total_flops / 2e9 == pytest.approx(gmacs, rel=0.02)  # FLOPs are 2 x MACs


def test_vgg16_groups_are_the_papers_layers():
    graph = LayerGraph.from_model(models.build("vgg16_bn"), (3, 32, 32), "vgg16_bn")
    assert len(graph.groups) == 21  # 13 conv + 5 pool + 3 fully connected
    first = [type(graph.units[s].ops[0].module).__name__ for s, _ in graph.groups[:18]]
    assert first[:5] == ["Conv2d", "Conv2d", "MaxPool2d", "Conv2d", "Conv2d"]
    assert first.count("Conv2d") == 13 and first.count("MaxPool2d") == 5
    assert [graph.units[s].kind for s, _ in graph.groups[18:]] == ["flat"] * 3


def test_cut_only_after_activation_or_pool():
    graph = LayerGraph.from_model(models.build("vgg16_bn"), (3, 32, 32), "vgg16_bn")
    first_conv_unit = graph.units[0]
    assert not first_conv_unit.cut_after  # conv is followed by its batch norm
    assert 1 not in graph.cut_points and 0 in graph.cut_points


def test_layer_input_rows_conv_and_strided():
    conv = LayerGeom(kernel=3, stride=1, pad_top=1, pad_bottom=1, dilation=1, in_rows=10, out_rows=10)
    assert layer_input_rows(conv, (0, 5)) == (0, 6)
    assert layer_input_rows(conv, (5, 10)) == (4, 10)
    strided = LayerGeom(kernel=7, stride=2, pad_top=3, pad_bottom=3, dilation=1, in_rows=224, out_rows=112)
    assert layer_input_rows(strided, (10, 20)) == (17, 42)
    dilated = LayerGeom(kernel=3, stride=1, pad_top=2, pad_bottom=2, dilation=2, in_rows=20, out_rows=20)
    assert layer_input_rows(dilated, (5, 6)) == (3, 8)


def test_largest_remainder_split():
    assert split_by_shares(10, [1, 1, 1]) == [4, 3, 3]
    assert split_by_shares(7, [0.5, 0.25, 0.25]) == [3, 2, 2]  # remainders .5, .75, .75
    assert sum(split_by_shares(224, [3.3, 1.7, 9.1, 0.01])) == 224


def test_residual_halo_covers_every_branch():
    graph = LayerGraph.from_model(models.build("resnet18"), (3, 64, 64), "resnet18")
    block = next(u for u in graph.units if u.name.startswith("layer2") and u.cut_after)
    i = block.index
    # layer2.0: conv 3x3/2 then conv 3x3/1 on the main branch, conv 1x1/2 on the shortcut.
    # Rows [3,5) need conv1 rows [2,6), i.e. input rows [2*2-1, 5*2-1+3) = [3,12); the shortcut
    # needs only [6,10), inside that.
    assert graph.input_rows(i, i + 1, (3, 5)) == (3, 12)


def test_unsupported_layer_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU())
    with pytest.raises(ValueError, match="zero padding"):
        LayerGraph.from_model(model, (3, 8, 8))
