"""MicroSplit's actions: a fixed list of plan shapes, and the one rule for which of them are valid.

Index 0 is always the single-device shape (the whole model on one device, completed onto the best device
for the snapshot): it is the reference every request is measured against, what a failed request is
retried on and what a policy falls back to. The mask is shared by the env (what MaskablePPO trains on)
and the policy planner (agents/ppo.py), so a policy chooses among the same actions in both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from env.completion import shape_valid
from env.net_view import NetView
from env.shapes import Shape
from runtime.graph import LayerGraph


def single_device_shape(graph: LayerGraph) -> Shape:
    """One stage over the whole model, split one way: the reference plan's shape."""
    return Shape((0, len(graph.units)), (1,))


def action_list(graph: LayerGraph, shapes: Sequence[Shape]) -> list[Shape]:
    """``shapes`` as an action list: the single-device shape first, duplicates dropped. ValueError names
    a shape that does not fit the graph's cut points."""
    for s in shapes:
        if not s.fits(graph):
            raise ValueError(f"shapes: {s.describe()} does not fit the cut points of {graph.name}")
    single = single_device_shape(graph)
    return [single, *(s for s in dict.fromkeys(shapes) if s != single)]


def action_mask(graph: LayerGraph, view: NetView, shapes: Sequence[Shape], n_actions: int) -> np.ndarray:
    """Valid actions: a shape whose every stage factor fits the usable devices and the stage's extent;
    the padding beyond the list never. Action 0 is always valid, even with no usable device: a masked
    policy needs one action, and the single-device shape always completes (a stage no usable device can
    take stays where its input is), which is what the env runs for an invalid action anyway.
    Validity depends only on how many devices are usable, so callers cache masks per count."""
    mask = np.zeros(n_actions, dtype=bool)
    mask[: len(shapes)] = [shape_valid(graph, view, s) for s in shapes]
    mask[0] = True
    return mask
