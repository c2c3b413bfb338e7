"""recis.metrics against scikit-learn (roc_auc_score, log_loss) and brute-force references.

Inputs come from hypothesis: few distinct scores (many ties), optional sample weights, and
random splits into update() batches, so streaming and compaction are exercised too.
"""
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import log_loss, roc_auc_score

import recis.metrics.auc as auc_module
from recis.metrics import AUC, GAUC, Calibration, LogLoss, MetricCollection, UndefinedMetricError
from recis.metrics.auc import segmented_cumsum

TOL = 1e-9


@st.composite
def examples(draw, min_size=1, max_size=60, weighted=None, soft=False):
    n = draw(st.integers(min_size, max_size))
    distinct = draw(st.integers(1, 8))  # few distinct scores: many ties
    levels = draw(st.lists(st.floats(0, 1, allow_nan=False), min_size=distinct, max_size=distinct))
    preds = [levels[draw(st.integers(0, distinct - 1))] for _ in range(n)]
    if soft:
        labels = draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
    else:
        labels = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    if weighted is None:
        weighted = draw(st.booleans())
    weights = draw(st.lists(st.floats(0, 5, allow_nan=False), min_size=n, max_size=n)) if weighted else None
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    return np.array(preds), np.array(labels, dtype=np.float64), None if weights is None else np.array(weights), cuts


def feed(metric, preds, labels, weights, cuts, groups=None, dtype=torch.float64):
    """update() over the batches given by `cuts` (empty batches included)."""
    bounds = [0] + cuts + [len(preds)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        kw = {} if groups is None else {"groups": torch.as_tensor(groups[a:b])}
        w = None if weights is None else torch.as_tensor(weights[a:b])
        metric.update(torch.as_tensor(preds[a:b], dtype=dtype), torch.as_tensor(labels[a:b]), w, **kw)
    return metric


def sklearn_auc_or_nan(labels, preds, weights):
    """sklearn >= 1.6 returns NaN (with a warning) for one class; older versions raise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        try:
            return roc_auc_score(labels, preds, sample_weight=weights)
        except ValueError:
            return math.nan


def assert_close_or_both_nan(got, expected, tol=TOL):
    if math.isnan(expected):
        assert math.isnan(got), got
    elif math.isinf(expected):  # e.g. calibration over a subnormal label mass
        assert got == expected, (got, expected)
    else:
        assert abs(got - expected) <= tol, (got, expected)


# ============================================================================ AUC
@settings(max_examples=70, deadline=None)
@given(examples())
@example((np.array([0.7, 0.5]), np.array([1.0, 0.0]), np.array([5e-324, 5e-324]), []))  # P * N underflowed: NaN
@example((np.array([0.7, 0.5, 0.5]), np.array([1.0, 0.0, 1.0]), np.array([1e-200, 3e-200, 2e-200]), [1]))
@example((np.array([0.7, 0.5, 0.5]), np.array([1.0, 0.0, 1.0]), np.array([1e200, 3e200, 2e200]), [2]))  # inf / inf
def test_auc_matches_roc_auc_score(data):
    preds, labels, weights, cuts = data
    expected = sklearn_auc_or_nan(labels, preds, weights)
    if weights is not None and not (weights[labels == 1].sum() > 0 and weights[labels == 0].sum() > 0):
        expected = math.nan  # sklearn divides by a zero weight of one class: undefined here
    got = feed(AUC(), preds, labels, weights, cuts).compute()
    assert_close_or_both_nan(got, expected)


@settings(max_examples=20, deadline=None)
@given(examples(min_size=10, max_size=120, weighted=False))
def test_auc_compaction_in_many_small_steps_is_exact(data):
    preds, labels, _, _ = data
    old = auc_module._MIN_BUFFER
    auc_module._MIN_BUFFER = 3  # compact after nearly every batch
    try:
        metric = AUC()
        for i in range(0, len(preds), 7):
            metric.update(torch.tensor(preds[i:i + 7]), torch.tensor(labels[i:i + 7]))
        got = metric.compute()
        assert metric.state()["scores"].numel() == len(np.unique(preds))
    finally:
        auc_module._MIN_BUFFER = old
    assert_close_or_both_nan(got, sklearn_auc_or_nan(labels, preds, None))


def test_auc_float32_scores_keep_their_exact_values_and_ties():
    g = torch.Generator().manual_seed(3)
    preds = torch.rand(5000, generator=g).to(torch.float32)
    preds[::3] = preds[1::3][: preds[::3].numel()]  # ties across positives and negatives
    labels = (torch.rand(5000, generator=g) < 0.3).long()
    got = AUC()
    got.update(preds, labels)
    assert abs(got.compute() - roc_auc_score(labels.numpy(), preds.numpy())) <= TOL


def test_perfectly_ranked_weighted_data_never_give_an_auc_above_one():
    # 86 rows, weights from a seeded generator: the class shares summed to 1 + 2 ulp before the
    # result was held to [0, 1]
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        n = int(torch.randint(2, 300, (1,), generator=g))
        labels = (torch.rand(n, generator=g) < 0.5).float()
        preds = labels * 0.5 + 0.25 + 0.2 * torch.rand(n, generator=g)
        weights = torch.rand(n, generator=g)
        if labels.min() == labels.max():
            continue
        auc, gauc = AUC(), GAUC()
        auc.update(preds, labels, weights)
        gauc.update(preds, labels, weights, groups=torch.zeros(n, dtype=torch.int64))
        assert 1 - 1e-12 <= auc.compute() <= 1.0 and 1 - 1e-12 <= gauc.compute() <= 1.0


def test_auc_one_class_is_nan_or_raises_and_sklearn_agrees_it_is_undefined():
    preds, labels = torch.tensor([0.1, 0.5]), torch.tensor([1, 1])
    assert math.isnan(sklearn_auc_or_nan(labels.numpy(), preds.numpy(), None))
    m = AUC()
    m.update(preds, labels)
    assert math.isnan(m.compute())
    strict = AUC(undefined="raise")
    strict.update(preds, labels)
    with pytest.raises(UndefinedMetricError, match="both classes"):
        strict.compute()
    with pytest.raises(UndefinedMetricError, match="no examples"):
        AUC(undefined="raise").compute()
    assert math.isnan(AUC().compute())


def test_reset_forgets_everything():
    m = AUC()
    m.update(torch.tensor([0.1, 0.9]), torch.tensor([1, 0]))
    assert m.compute() == 0.0
    m.reset()
    m.update(torch.tensor([0.1, 0.9]), torch.tensor([0, 1]))
    assert m.compute() == 1.0


# ============================================================================ GAUC
def pairwise_auc(preds, labels, w):
    """AUC by its definition: the weighted share of (positive, negative) pairs ranked right, ties 1/2.
    In exact rational arithmetic: a pair's weight w_pos * w_neg computed in float64 underflows to 0
    (or loses its digits) for tiny weights, and then the reference, not the metric, would be wrong."""
    pos = [(p, Fraction(float(x))) for p, x, y in zip(preds, w, labels) if y == 1]
    neg = [(p, Fraction(float(x))) for p, x, y in zip(preds, w, labels) if y == 0]
    right = total = Fraction(0)
    for sp, wp in pos:
        for sn, wn in neg:
            total += wp * wn
            right += wp * wn * (1 if sp > sn else Fraction(1, 2) if sp == sn else 0)
    return right / total


def brute_force_gauc(preds, labels, groups, weights, weighting):
    """Per-group pairwise AUC, weighted by impressions (summed weights) or clicks (positives); exact
    (fractions) up to the final rounding, so it holds for weights of any scale, subnormal included."""
    w = np.ones_like(preds) if weights is None else weights
    num = den = Fraction(0)
    skipped = 0
    for g in np.unique(groups):
        m = groups == g
        pos = sum((Fraction(float(x)) for x, y in zip(w[m], labels[m]) if y == 1), Fraction(0))
        neg = sum((Fraction(float(x)) for x, y in zip(w[m], labels[m]) if y == 0), Fraction(0))
        if not (pos > 0 and neg > 0):
            skipped += 1
            continue
        weight = pos + neg if weighting == "impressions" else pos
        num += weight * pairwise_auc(preds[m], labels[m], w[m])
        den += weight
    return (float(num / den) if den > 0 else math.nan), skipped, len(np.unique(groups))


GROUP_IDS = [-(2 ** 63), 2 ** 63 - 1, 0, -5, 17, 10 ** 12]


@st.composite
def grouped_examples(draw, max_size=80):
    """examples() plus a group id per example, from the first 1 to 6 of GROUP_IDS."""
    data = draw(examples(max_size=max_size))
    pool = GROUP_IDS[:draw(st.integers(1, len(GROUP_IDS)))]
    n = len(data[0])
    return data, np.array(draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)), dtype=np.int64)


def one_group(preds, labels, weights):
    data = (np.array(preds, dtype=np.float64), np.array(labels, dtype=np.float64),
            np.array(weights, dtype=np.float64), [])
    return data, np.zeros(len(preds), dtype=np.int64)


@settings(max_examples=60, deadline=None)
@given(grouped_examples(), st.sampled_from(GAUC.WEIGHTINGS))
# Found by hypothesis: the clicks weight (5.3e-217) times the pair count (2.6e-217) underflowed to 0
# before the division, so the one group's AUC of 0.5 came out as GAUC 0.
@example(one_group([0.0] * 7, [0, 0, 1, 0, 0, 0, 0], [0, 0, 5.28372271e-217, 0, 0, 0, 1]), "clicks")
# A subnormal positive weight ranked above a negative: AUC 1, but GAUC(clicks) said 0.
@example(one_group([0.9, 0.1], [1, 0], [5e-324, 1.0]), "clicks")
# Subnormal weights in both classes: P * N underflowed to 0, and 0 / 0 made the whole GAUC NaN.
@example(one_group([0.5, 0.5, 0.7], [1, 0, 1], [5e-324, 1e-323, 2e-323]), "impressions")
# Huge weights: P * N overflowed to inf (inf / inf: NaN) though every sum is finite.
@example(one_group([0.2, 0.6, 0.6, 0.4], [1, 1, 0, 0], [1e200, 2e200, 1e200, 3e200]), "impressions")
def test_gauc_matches_per_group_pairwise_reference(grouped, weighting):
    (preds, labels, weights, cuts), groups = grouped
    expected, skipped, n_seen = brute_force_gauc(preds, labels, groups, weights, weighting)
    metric = feed(GAUC(weighting), preds, labels, weights, cuts, groups=groups)
    assert_close_or_both_nan(metric.compute(), expected)
    d = metric.details()
    assert (d["groups"], d["skipped_groups"], d["used_groups"]) == (n_seen, skipped, n_seen - skipped)


@settings(max_examples=40, deadline=None)
@given(grouped_examples(max_size=40), st.lists(st.integers(0, 7), min_size=40, max_size=40),
       st.integers(-1074, 1010))
@example(one_group([0.3, 0.3, 0.8], [1, 0, 0], [1.0, 1.0, 1.0]), [1, 3, 2] + [0] * 37, -1074)
@example(one_group([0.3, 0.3, 0.8], [1, 0, 0], [1.0, 1.0, 1.0]), [5, 3, 7] + [0] * 37, 1010)
def test_auc_and_gauc_do_not_depend_on_the_scale_of_the_weights(grouped, ints, k):
    # Small integer weights times 2**k are exact for every k from -1074 (subnormal: multiples of the
    # smallest float64) to 1010 (the sums stay finite), so the data are the same up to scale and
    # every metric must come out exactly as with the integer weights.
    (preds, labels, _, cuts), groups = grouped
    weights = np.array(ints[:len(preds)], dtype=np.float64)
    scaled = np.ldexp(weights, k)
    assert np.array_equal(np.ldexp(scaled, -k), weights)  # the scaling is exact
    for make in (AUC, lambda: GAUC("impressions"), lambda: GAUC("clicks")):
        kw = {"groups": groups} if make is not AUC else {}
        plain = feed(make(), preds, labels, weights, cuts, **kw)
        big_or_tiny = feed(make(), preds, labels, scaled, cuts, **kw)
        assert_close_or_both_nan(big_or_tiny.compute(), plain.compute(), tol=0)
    expected, _, _ = brute_force_gauc(preds, labels, groups, scaled, "clicks")
    assert_close_or_both_nan(big_or_tiny.compute(), expected)


def test_auc_and_gauc_refuse_summed_weights_beyond_float64_naming_them():
    huge = torch.tensor([1e308, 1e308, 1.0], dtype=torch.float64)
    preds, labels = torch.tensor([0.2, 0.7, 0.5]), torch.tensor([1, 1, 0])
    auc = AUC()
    auc.update(preds, labels, huge)
    with pytest.raises(ValueError, match=r"AUC: the summed positive weight overflows float64.*divide all weights"):
        auc.compute()
    gauc = GAUC()
    gauc.update(preds, labels, huge.flip(0), groups=torch.tensor([4, 42, 42]))
    gauc.update(torch.tensor([0.1]), torch.tensor([0]), torch.tensor([1e308], dtype=torch.float64),
                groups=torch.tensor([42]))
    with pytest.raises(ValueError, match=r"GAUC: the summed negative weight of group 42 overflows float64"):
        gauc.compute()
    # each weight alone is fine: 1e308 against 1 is an AUC like any other
    ok = AUC()
    ok.update(preds[1:], labels[1:], huge[1:])
    assert ok.compute() == 1.0


def test_gauc_many_users_against_brute_force_and_scan():
    g = torch.Generator().manual_seed(7)
    n = 8000
    groups = torch.randint(0, 250, (n,), generator=g) * 1_000_003
    preds = torch.randint(0, 50, (n,), generator=g).double() / 50  # ties within users
    labels = (torch.rand(n, generator=g) < 0.4).double()
    weights = torch.rand(n, generator=g) * 3
    for weighting in GAUC.WEIGHTINGS:
        m = GAUC(weighting)
        m.update(preds, labels, weights, groups=groups)
        expected, skipped, _ = brute_force_gauc(preds.numpy(), labels.numpy(), groups.numpy(), weights.numpy(),
                                                weighting)
        assert abs(m.compute() - expected) <= TOL
        assert m.details()["skipped_groups"] == skipped


def test_segmented_cumsum_matches_a_loop():
    g = torch.Generator().manual_seed(1)
    seg = torch.sort(torch.randint(0, 30, (500,), generator=g)).values
    x = torch.rand(500, generator=g, dtype=torch.float64)
    expected, running = [], {}
    for v, s in zip(x.tolist(), seg.tolist()):
        running[s] = running.get(s, 0.0) + v
        expected.append(running[s])
    assert torch.allclose(segmented_cumsum(x, seg), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_gauc_all_groups_one_class_is_undefined():
    m = GAUC(undefined="raise")
    m.update(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1, 1, 0]), groups=torch.tensor([1, 1, 2]))
    assert m.details()["skipped_groups"] == 2
    with pytest.raises(UndefinedMetricError, match="no group has both classes"):
        m.compute()


# ============================================================================ log loss, calibration
@settings(max_examples=70, deadline=None)
@given(examples(soft=False))
def test_logloss_matches_sklearn_including_clipped_zero_and_one(data):
    preds, labels, weights, cuts = data
    preds = preds.copy()
    preds[::5] = np.round(preds[::5])  # exact 0 and 1 predictions: clipped to [eps, 1 - eps]
    got = feed(LogLoss(), preds, labels, weights, cuts).compute()
    if weights is not None and weights.sum() == 0:
        assert math.isnan(got)
        return
    expected = log_loss(labels, preds, sample_weight=weights, labels=[0, 1])
    assert abs(got - expected) <= TOL * max(1.0, abs(expected)), (got, expected)


@settings(max_examples=40, deadline=None)
@given(examples(soft=True), st.floats(0.5, 30))
def test_logloss_from_logits_matches_bce_with_logits(data, scale):
    preds, labels, weights, cuts = data
    logits = (preds - 0.5) * scale
    got = feed(LogLoss(from_logits=True), logits, labels, weights, cuts).compute()
    w = torch.ones(len(preds), dtype=torch.float64) if weights is None else torch.tensor(weights)
    if w.sum() == 0:
        assert math.isnan(got)
        return
    per = F.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(labels), reduction="none")
    expected = float((per * w).sum() / w.sum())
    assert abs(got - expected) <= TOL * max(1.0, abs(expected))


@settings(max_examples=40, deadline=None)
@given(examples(soft=True))
@example((np.ones(4), np.array([0.0, 0.0, 0.0, 2.22507386e-311]), None, []))  # subnormal label mass: inf
def test_calibration_is_weighted_mean_prediction_over_mean_label(data):
    preds, labels, weights, cuts = data
    w = np.ones_like(preds) if weights is None else weights
    m = feed(Calibration(), preds, labels, weights, cuts)
    label_sum = float((w * labels).sum())
    expected = float((w * preds).sum()) / label_sum if label_sum > 0 and w.sum() > 0 else math.nan
    assert_close_or_both_nan(m.compute(), expected, tol=TOL * max(1.0, abs(expected) if expected == expected else 1))
    if w.sum() > 0:
        assert abs(m.details()["mean_label"] - (w * labels).sum() / w.sum()) <= TOL


def test_calibration_without_positives_is_undefined():
    m = Calibration(undefined="raise")
    m.update(torch.tensor([0.3]), torch.tensor([0]))
    with pytest.raises(UndefinedMetricError, match="no positive labels"):
        m.compute()


# ============================================================================ merge, collection, errors
@settings(max_examples=40, deadline=None)
@given(examples(min_size=2), st.integers(0, 60))
def test_merge_equals_metric_on_concatenated_data(data, cut):
    preds, labels, weights, _ = data
    cut = min(cut, len(preds))
    groups = (np.arange(len(preds)) % 3).astype(np.int64)
    for make in (AUC, lambda: GAUC("clicks"), LogLoss, Calibration):
        whole = feed(make(), preds, labels, weights, [], groups=groups if make not in (AUC, LogLoss, Calibration)
                     else None)
        a = feed(make(), preds[:cut], labels[:cut], None if weights is None else weights[:cut], [],
                 groups=groups[:cut] if whole.needs_groups else None)
        b = feed(make(), preds[cut:], labels[cut:], None if weights is None else weights[cut:], [],
                 groups=groups[cut:] if whole.needs_groups else None)
        assert_close_or_both_nan(a.merge(b).compute(), whole.compute(), tol=1e-12)


def test_merge_refuses_other_types_and_configs():
    with pytest.raises(ValueError, match="cannot merge"):
        AUC().merge(LogLoss())
    with pytest.raises(ValueError, match="weighting"):
        GAUC("clicks").merge(GAUC("impressions"))


def test_collection_validates_once_and_a_bad_batch_changes_nothing():
    c = MetricCollection({"auc": AUC(), "logloss": LogLoss(), "calibration": Calibration(), "gauc": GAUC()})
    c.update(torch.tensor([0.2, 0.8]), torch.tensor([0, 1]), groups=torch.tensor([1, 1]))
    before = c.compute()
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        c.update(torch.tensor([0.5]), torch.tensor([0.5]), groups=torch.tensor([1]))  # fine for logloss, not AUC
    with pytest.raises(ValueError, match=r"\['gauc'\] need groups"):
        c.update(torch.tensor([0.5]), torch.tensor([1]))
    assert c.compute() == before
    assert set(c) == {"auc", "logloss", "calibration", "gauc"} and isinstance(c["auc"], AUC)


@pytest.mark.parametrize("call, match", [
    (lambda: AUC().update(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1])), "preds must be finite.*index 1"),
    (lambda: AUC().update(torch.tensor([0.1, 0.2]), torch.tensor([0, 2])), "labels must be 0 or 1, got 2.0 at index 1"),
    (lambda: AUC().update(torch.tensor([0.1, 0.2]), torch.tensor([0])), "preds has 2 values but labels has 1"),
    (lambda: AUC().update(torch.zeros(2, 2), torch.zeros(2, 2)), r"preds must be 1-D.*\(2, 2\)"),
    (lambda: AUC().update(torch.tensor([0.1]), torch.tensor([1]), torch.tensor([-1.0])), "weights must be >= 0"),
    (lambda: GAUC().update(torch.tensor([0.1]), torch.tensor([1])), "needs groups="),
    (lambda: GAUC().update(torch.tensor([0.1]), torch.tensor([1]), groups=torch.tensor([0.5])), "integer ids"),
    (lambda: LogLoss().update(torch.tensor([1.5]), torch.tensor([1])), "probabilities in \\[0, 1\\].*from_logits"),
    (lambda: LogLoss().update(torch.tensor([0.5]), torch.tensor([1.5])), r"labels must be in \[0, 1\]"),
    (lambda: GAUC(weighting="users"), "weighting must be one of"),
    (lambda: AUC(undefined="zero"), "undefined must be"),
])
def test_bad_input_names_the_problem(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_sync_without_process_group_is_a_noop_and_guards_updates():
    m = AUC()
    m.update(torch.tensor([0.3, 0.6]), torch.tensor([0, 1]))
    assert m.sync().compute() == 1.0
    with pytest.raises(RuntimeError, match="after sync"):
        m.update(torch.tensor([0.3]), torch.tensor([0]))
    with pytest.raises(RuntimeError, match="already synced"):
        m.sync()
    m.unsync().update(torch.tensor([0.9]), torch.tensor([0]))
    assert m.compute() == 0.5
