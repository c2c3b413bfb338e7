"""Soft-logic aggregators against a plain-Python reference, and their algebraic properties."""
from relevance_testing import WORDS, tiny, tiny_encoder  # noqa: F401 (first: puts the plugin on the path)
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recis_relevance.logic import TNORMS, soft_and, soft_or

probs = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=0, max_size=8)


def ref_and(p, w, tnorm):
    q = [1 - wi * (1 - pi) for pi, wi in zip(p, w)]
    if tnorm == "product":
        return math.prod(q)
    if tnorm == "godel":
        return min(q, default=1.0)
    return max(0.0, sum(q) - (len(q) - 1)) if q else 1.0


def t(x):
    return torch.tensor(x, dtype=torch.float64)


@settings(max_examples=200, deadline=None)
@given(probs, st.data())
def test_matches_reference_and_bounds(p, data):
    w = data.draw(st.lists(st.floats(0.0, 1.0), min_size=len(p), max_size=len(p)))
    vals = {}
    for tn in TNORMS:
        got = float(soft_and(t(p), weights=t(w), tnorm=tn))
        assert got == pytest.approx(ref_and(p, w, tn), abs=1e-12)
        vals[tn] = float(soft_and(t(p), tnorm=tn))
    eps = 1e-12
    assert vals["lukasiewicz"] <= vals["product"] + eps <= vals["godel"] + 2 * eps
    assert all(vals["godel"] <= x + eps for x in p)


@settings(max_examples=150, deadline=None)
@given(probs, st.sampled_from(TNORMS))
def test_or_is_the_dual_of_and(p, tn):
    assert float(soft_or(t(p), tnorm=tn)) == pytest.approx(1 - float(soft_and(1 - t(p), tnorm=tn)), abs=1e-12)
    assert float(soft_or(t([]), tnorm=tn)) == 0.0 and float(soft_and(t([]), tnorm=tn)) == 1.0


@settings(max_examples=150, deadline=None)
@given(probs, st.sampled_from(TNORMS))
def test_an_entity_with_score_one_is_neutral(p, tn):
    assert float(soft_and(t(p + [1.0]), tnorm=tn)) == pytest.approx(float(soft_and(t(p), tnorm=tn)), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8), st.data(), st.sampled_from(TNORMS))
def test_lowering_a_score_never_raises_the_item_score(p, data, tn):
    i = data.draw(st.integers(0, len(p) - 1))
    lower = list(p)
    lower[i] = data.draw(st.floats(0.0, p[i]))
    assert float(soft_and(t(lower), tnorm=tn)) <= float(soft_and(t(p), tnorm=tn)) + 1e-12
    assert float(soft_or(t(lower), tnorm=tn)) <= float(soft_or(t(p), tnorm=tn)) + 1e-12


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8), st.data(), st.sampled_from(["product", "godel"]))
def test_a_zero_forces_zero(p, data, tn):
    i = data.draw(st.integers(0, len(p) - 1))
    p = list(p)
    p[i] = 0.0
    assert float(soft_and(t(p), tnorm=tn)) == 0.0


def test_mask_ignores_padding_and_bad_input_is_named():
    p = torch.tensor([[0.5, 0.0], [0.2, 0.9]])
    mask = torch.tensor([[True, False], [True, True]])
    assert soft_and(p, mask).tolist() == pytest.approx([0.5, 0.18])
    with pytest.raises(ValueError, match="tnorm must be one of"):
        soft_and(p, tnorm="min")
    with pytest.raises(ValueError, match="mask has shape"):
        soft_and(p, mask[:1])


def test_gradients_flow_through_every_tnorm():
    for tn in TNORMS:
        p = torch.tensor([0.9, 0.8, 0.95], requires_grad=True)
        soft_and(p, tnorm=tn).backward()
        assert p.grad.abs().sum() > 0, tn
