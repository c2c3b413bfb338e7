"""Train/test splits as boolean masks: a seeded random split and a per-group "latest" split."""
from fractions import Fraction

import numpy as np


def _fraction(test_fraction: float) -> Fraction:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, Fraction)) \
            or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    return Fraction(test_fraction).limit_denominator(1_000_000)


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return seed


def check_fraction(test_fraction: float) -> float:
    _fraction(test_fraction)
    return test_fraction


def holdout_count(n, test_fraction: float):
    """round(n * test_fraction) with halves rounded up, in exact arithmetic (n: int or int array).

    >>> holdout_count(25, 0.1), holdout_count(24, 0.1), holdout_count(1_000_209, 0.1)
    (3, 2, 100021)
    """
    f = _fraction(test_fraction)
    return (2 * n * f.numerator + f.denominator) // (2 * f.denominator)


def random_test_mask(num_rows: int, test_fraction: float, seed: int) -> np.ndarray:
    """True for the `holdout_count(num_rows)` rows that come first in the seeded permutation
    `numpy.random.default_rng(seed).permutation(num_rows)`."""
    check_seed(seed)
    mask = np.zeros(num_rows, dtype=bool)
    mask[np.random.default_rng(seed).permutation(num_rows)[:holdout_count(num_rows, test_fraction)]] = True
    return mask


def latest_test_mask(groups: np.ndarray, times: np.ndarray, tiebreak: np.ndarray,
                     test_fraction: float) -> np.ndarray:
    """True for the last `holdout_count(n_g)` rows of each group g (n_g rows), ordered by
    (times, tiebreak): equal times are broken by the smaller tiebreak value coming first.

    >>> latest_test_mask(np.array([1, 1, 1, 2, 2]), np.array([5, 9, 7, 1, 1]),
    ...                  np.array([0, 1, 2, 4, 3]), 0.5).tolist()
    [False, True, True, True, False]
    """
    order = np.lexsort((tiebreak, times, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    position = np.arange(len(order)) - np.repeat(starts, sizes)
    from_end = np.repeat(sizes, sizes) - 1 - position
    mask = np.empty(len(order), dtype=bool)
    mask[order] = from_end < np.repeat(holdout_count(sizes, test_fraction), sizes)
    return mask
