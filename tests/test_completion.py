"""The compiled pieces of env/completion.py against their definitions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from env.completion import split_rows
from runtime.halo import split_by_shares


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=5000),
    st.lists(st.floats(min_value=1e-6, max_value=1e6, allow_nan=False), min_size=1, max_size=8),
)
def test_split_rows_is_split_by_shares(total, shares):
    """The completion's compiled largest-remainder split gives exactly runtime.halo's sizes, including
    ties (earlier entry first) and shares that are already whole rows."""
    assert split_rows(total, np.array(shares)).tolist() == split_by_shares(total, shares)
    whole = [float(int(s) + 1) for s in shares]
    assert split_rows(int(sum(whole)), np.array(whole)).tolist() == split_by_shares(int(sum(whole)), whole)
