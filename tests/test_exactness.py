"""The one rule of a live result being exact, and the seeded references it is checked against."""

from __future__ import annotations

import torch

from runtime import models
from runtime.exactness import ATOL, RTOL, matches, reference_pool


def test_an_output_matches_within_float32_rounding_and_not_beyond():
    expected = torch.linspace(-2.0, 2.0, 101)
    assert matches(expected + ATOL / 2, expected)
    assert matches(expected * (1 + RTOL / 2), expected)
    assert not matches(expected + 10 * (ATOL + RTOL * 2.0), expected)
    assert not matches(expected[:-1], expected[1:])
    assert not matches(expected, expected[:-1])


def test_small_elements_may_carry_the_rounding_of_the_outputs_scale_but_not_a_wrong_value():
    # logits as a ten-way split of VGG-16 returned them: 1.5e-5 off on a small one, as much as the
    # unsplit float32 model is off float64
    expected = torch.tensor([1.5, -0.8, 0.001, 0.0])
    assert matches(expected + torch.tensor([0.0, 0.0, 1.5e-5, -1.2e-5]), expected)
    assert not torch.allclose(
        expected + torch.tensor([0.0, 0.0, 1.5e-5, 0.0]), expected, rtol=RTOL, atol=ATOL
    )
    # a wrong row: one element off by a hundredth of the scale
    assert not matches(expected + torch.tensor([0.0, 0.0, 0.015, 0.0]), expected)


def test_the_reference_pool_is_seeded_and_holds_the_unsplit_models_outputs():
    model = models.build("tiny", seed=0).eval()
    shape = models.input_shape("tiny")
    pool = reference_pool(model, shape, 3, seed=7)
    again = reference_pool(model, shape, 3, seed=7)
    assert len(pool) == 3 and all(x.shape == (1, *shape) for x, _ in pool)
    assert all(torch.equal(x, y) and torch.equal(a, b) for (x, a), (y, b) in zip(pool, again, strict=True))
    assert not torch.equal(pool[0][0], pool[1][0])
    assert not torch.equal(pool[0][0], reference_pool(model, shape, 1, seed=8)[0][0])
    with torch.no_grad():
        assert all(torch.equal(model(x), y) for x, y in pool)
