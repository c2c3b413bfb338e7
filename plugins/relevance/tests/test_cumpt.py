"""CumPT tiering and the ranking score against hand-computed cases and an exact (dyadic) reference,
and the properties of methods.md section 6."""
from relevance_testing import WORDS  # noqa: F401 (first: puts the plugin on the path)
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from recis_relevance.cumpt import TAU_GRID, choose_tau, cumpt_tier, label_probs, ranking_score


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# p, tau, tier; tails S_k = sum_{j>=k} p_j worked out in the comment
@pytest.mark.parametrize("p, tau, tier", [
    ([0.4, 0.0, 0.3, 0.3], 0.5, 3),    # S = 1, .6, .6, .3: argmax would say 1
    ([0.4, 0.0, 0.3, 0.3], 0.6, 3),    # S_3 = .6 >= .6 (ties count)
    ([0.4, 0.0, 0.3, 0.3], 0.61, 1),   # S_2 = S_3 = .6 < .61
    ([0.4, 0.0, 0.3, 0.3], 0.25, 4),
    ([0.1, 0.5, 0.25, 0.15], 0.5, 2),  # S = 1, .9, .4, .15
    ([0.1, 0.5, 0.25, 0.15], 0.4, 3),
    ([0.1, 0.5, 0.25, 0.15], 1.0, 1),
    ([0.0, 0.5, 0.5, 0.0], 1.0, 2),    # tau = 1: the lowest grade with mass
    ([0.0, 0.0, 0.0, 1.0], 1.0, 4),
])
def test_tier_by_hand(p, tau, tier):
    assert cumpt_tier(t([p]), tau).tolist() == [tier]


def test_tier_differs_from_argmax_where_the_upper_tail_is_heavy():
    p = t([[0.4, 0.0, 0.3, 0.3], [0.35, 0.3, 0.35, 0.0]])
    assert p.argmax(-1).add(1).tolist() == [1, 1]
    assert cumpt_tier(p, 0.5).tolist() == [3, 2]  # S_2 = .65 >= .5 > S_3 = .35


def test_one_hot_returns_its_class_for_every_tau():
    eye = torch.eye(4, dtype=torch.float64)
    for tau in (1e-9, 0.1, 0.5, 0.999, 1.0):
        assert cumpt_tier(eye, tau).tolist() == [1, 2, 3, 4]
        assert cumpt_tier(eye.float(), tau).tolist() == [1, 2, 3, 4]


def test_ranking_score_and_label_probs_by_hand():
    assert ranking_score(t([[0.1, 0.5, 0.25, 0.15], [0, 0, 0, 1]])).tolist() == pytest.approx([2.45, 4.0])
    logits = torch.tensor([[1.0, 2.0, 0.0, -1.0]])
    e = np.exp([1.0, 2.0, 0.0, -1.0])
    assert label_probs(logits)[0].tolist() == pytest.approx((e / e.sum()).tolist())
    # from full-vocabulary logits: only the four label tokens' logits count
    vocab = torch.full((2, 10), 50.0)
    vocab[:, [7, 3, 9, 4]] = logits
    assert torch.allclose(label_probs(vocab, label_ids=[7, 3, 9, 4]), label_probs(logits).expand(2, 4))


def test_bad_input_is_named():
    p = t([[0.25] * 4])
    for tau in (0, 0.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.5", None):
        with pytest.raises(ValueError, match=r"tau must be a number in \(0, 1\]"):
            cumpt_tier(p, tau)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 4\]"):
        cumpt_tier(t([[0.5, 0.5]]), 0.5)
    with pytest.raises(ValueError, match="sum to 1"):
        cumpt_tier(t([[0.5, 0.5, 0.5, 0.5]]), 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        ranking_score(t([[1.5, -0.5, 0.0, 0.0]]))
    with pytest.raises(TypeError, match="float tensor"):
        cumpt_tier(torch.tensor([[0, 0, 0, 1]]), 0.5)
    with pytest.raises(ValueError, match="4 distinct token ids"):
        label_probs(torch.zeros(1, 10), label_ids=[1, 1, 2, 3])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        label_probs(torch.zeros(1, 10), label_ids=[1, 2, 3, 10])
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 4\] \(or pass label_ids\)"):
        label_probs(torch.zeros(1, 10))


# Exact reference: probabilities and tau are multiples of 1/64, so float64 sums are exact.
counts64 = st.lists(st.integers(0, 16), min_size=4, max_size=4).filter(lambda c: sum(c) > 0)


def as_dyadic(c):
    """Counts scaled to a distribution whose entries are multiples of 1/64 (exact in float)."""
    total = sum(c)
    # put the rounding remainder on the largest entry, keeping every entry a multiple of 1/64
    q = [x * 64 // total for x in c]
    q[int(np.argmax(c))] += 64 - sum(q)
    return [Fraction(x, 64) for x in q]


def reference_tier(p, tau):
    return max(k for k in range(1, 5) if sum(p[k - 1:]) >= tau)


@settings(max_examples=300, deadline=None)
@given(counts64, st.integers(1, 64))
def test_matches_an_exact_reference(c, tau64):
    p = as_dyadic(c)
    tau = Fraction(tau64, 64)
    assert cumpt_tier(t([[float(x) for x in p]]), float(tau)).item() == reference_tier(p, tau)
    assert ranking_score(t([[float(x) for x in p]])).item() == float(sum(k * x for k, x in zip(range(1, 5), p)))


probs = st.lists(st.floats(-20, 20), min_size=4, max_size=4).map(lambda x: torch.softmax(t([x]), -1))


@settings(max_examples=300, deadline=None)
@given(probs, st.floats(1e-6, 1.0), st.floats(1e-6, 1.0))
def test_tier_is_non_increasing_in_tau(p, a, b):
    lo, hi = min(a, b), max(a, b)
    assert cumpt_tier(p, lo).item() >= cumpt_tier(p, hi).item()


@settings(max_examples=200, deadline=None)
@given(probs)
def test_tau_limits(p):
    assume(p[0, 3] > 0)
    tiny = float(p[0, 3]) / 2
    if tiny > 0:
        assert cumpt_tier(p, tiny).item() == 4  # tau -> 0+ gives 4 whenever p_4 > 0
    assert cumpt_tier(p, 5e-324).item() == 4
    # p_1 large enough that the tail p_2 + p_3 + p_4 stays below 1 in float64 whatever the order of
    # summation (p_1 = 5e-17 next to p_2 = 1 - 6e-8 rounds away in one order and not in another)
    assume(float(p[0, 0]) > 1e-12)
    assert cumpt_tier(p, 1.0).item() == 1


@settings(max_examples=300, deadline=None)
@given(probs, st.floats(1e-6, 1.0), st.data())
def test_permuting_mass_below_the_crossing_keeps_the_tier(p, tau, data):
    k = cumpt_tier(p, tau).item()
    below = list(range(k - 1))  # the classes 1..k-1 below the crossing
    q = p.clone()
    q[0, below] = p[0, data.draw(st.permutations(below))]
    assert cumpt_tier(q, tau).item() == k


def test_permuting_mass_across_the_crossing_can_change_the_tier():
    p = t([[0.5, 0.1, 0.1, 0.3]])  # S = 1, .5, .4, .3
    assert cumpt_tier(p, 0.4).item() == 3
    assert cumpt_tier(p[:, [1, 0, 2, 3]], 0.4).item() == 3  # below the crossing
    assert cumpt_tier(p[:, [3, 1, 2, 0]], 0.4).item() == 4  # p_1 <-> p_4: S_4 = .5


def test_choose_tau_takes_the_best_validation_macro_f1_as_scikit_learn_computes_it():
    """Every tau's score equals scikit-learn's macro-F1 (over the four grades) of the tiers
    computed here in numpy; the choice is the first tau with the best score."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    p = rng.dirichlet([0.5, 0.5, 0.5, 0.5], size=96)
    true = np.where(rng.random(96) < 0.7, p.argmax(1) + 1, rng.integers(1, 5, 96))  # argmax-ish labels
    true[p[:, 2:].sum(1) > 0.6] = 3  # rows with a heavy upper tail are 3s: argmax often says 4 or 1
    tau, scores = choose_tau(torch.tensor(p), true.tolist())
    assert list(scores) == list(TAU_GRID)
    tails = np.cumsum(p[:, ::-1], 1)[:, ::-1]
    for t, score in scores.items():
        tier = np.array([max([1] + [k + 1 for k in range(1, 4) if row[k] >= t]) for row in tails])  # 1 always
        assert score == pytest.approx(f1_score(true, tier, labels=[1, 2, 3, 4], average="macro", zero_division=0))
    best = max(scores.values())
    assert scores[tau] == best and all(s < best for t, s in scores.items() if t < tau)
    assert len(set(scores.values())) > 1  # tau matters on these rows
    with pytest.raises(ValueError, match="p \\[N, 4\\] and N grades"):
        choose_tau(torch.tensor(p), true.tolist()[:-1])
    with pytest.raises(ValueError, match="tau must be a number in \\(0, 1\\], got 0"):
        choose_tau(torch.tensor(p), true.tolist(), taus=[0, 0.5])
