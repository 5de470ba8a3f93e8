"""rules.windows helpers against their numpy references."""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rules.windows import row_nanmedian

_cells = st.one_of(st.just(np.nan), st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([0.0, -0.0, 1.0]))


@settings(max_examples=300, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=40), elements=_cells))
def test_row_nanmedian_is_numpys_nanmedian(a: np.ndarray) -> None:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
        expected = np.nanmedian(a, axis=1) if a.shape[1] else np.full(a.shape[0], np.nan)
    np.testing.assert_array_equal(row_nanmedian(a), expected)


def test_row_nanmedian_of_a_window() -> None:
    a = np.array([[1.0, np.nan, 3.0, 2.0],  # odd count: the middle one
                  [4.0, 1.0, np.nan, np.nan],  # even: the mean of the two middle ones
                  [np.nan] * 4,  # nothing yet
                  [np.inf, 1.0, 2.0, np.nan]])
    np.testing.assert_array_equal(row_nanmedian(a), [2.0, 2.5, np.nan, 2.0])
