"""Difficulty-based dynamic sampling: the keep-mask on hand-built groups (boundaries dropped), and
no kept group of binary rewards has zero variance (so none has zero advantage)."""
import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from recis.rl import DifficultyFilter, difficulty_mask, group_advantages


def test_hand_built_groups():
    scores = torch.tensor([
        [0, 0, 0, 0],      # mean 0     all wrong
        [1, 0, 0, 0],      # mean 0.25  == low: dropped
        [1, 1, 0, 0],      # mean 0.5   kept
        [1, 1, 1, 0],      # mean 0.75  == high: dropped
        [1, 1, 1, 1],      # mean 1     all right
        [0, 1, 0, 1],      # mean 0.5   kept
    ], dtype=torch.float32)
    assert difficulty_mask(scores, low=0.25, high=0.75).tolist() == [False, False, True, False, False, True]
    assert difficulty_mask(scores, low=0.0, high=1.0).tolist() == [False, True, True, True, False, True]
    assert difficulty_mask(scores, low=0.01, high=0.9).tolist() == [False, True, True, True, False, True]


def test_a_boundary_that_is_not_a_binary_fraction_compares_as_written():
    thirds = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])  # float32 means 0.33333334, 0.6666667
    assert difficulty_mask(thirds, low=1 / 3, high=2 / 3).tolist() == [False, False]
    assert difficulty_mask(thirds, low=0.33, high=0.67).tolist() == [True, True]


def test_bad_bounds_and_shapes_are_named():
    with pytest.raises(ValueError, match=r"difficulty_mask needs finite low < high, got low=0.5, high=0.5"):
        difficulty_mask(torch.zeros(2, 3), 0.5, 0.5)
    with pytest.raises(ValueError, match=r"scores must be a tensor \[num_groups, group_size\], got \(6,\)"):
        difficulty_mask(torch.zeros(6), 0.0, 1.0)


binary_groups = st.integers(2, 16).flatmap(
    lambda g: st.lists(st.lists(st.integers(0, 1), min_size=g, max_size=g), min_size=1, max_size=12))
bounds = st.one_of(st.just((0.0, 1.0)), st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)))


@given(binary_groups, bounds)
def test_kept_groups_of_binary_rewards_have_nonzero_variance(rows, bound):
    low, high = sorted(bound)
    assume(low < high)
    scores = torch.tensor(rows, dtype=torch.float32)
    keep = difficulty_mask(scores, low, high)
    kept = scores[keep].numpy()
    assert (np.var(kept, axis=1) > 0).all()
    assert (group_advantages(scores[keep]).abs().sum(dim=1) > 0).all()  # so each kept group has a signal
    if low == 0.0 and high == 1.0:  # and only the constant groups go
        assert keep.tolist() == [bool(np.var(r) > 0) for r in rows]


def test_the_filter_config_defaults_drop_the_constant_groups():
    f = DifficultyFilter()
    scores = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert difficulty_mask(scores, f.low, f.high).tolist() == [False, True, False]
