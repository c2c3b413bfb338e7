"""Label-token confidence and the confidence pool filter (DyKnow-RAG's RL pool): the confidence is
the softmax over the K label tokens only, the pool keeps exactly conf < threshold, balancing is
seeded and per stratum cell, and bad options are named."""
import math
from collections import Counter

import pytest
import torch

from recis.rl import ConfidenceFilter, confidence_pool, label_confidence

LABELS = [2, 3, 4, 5]  # the four label tokens' ids in a vocabulary of 8


def by_hand(row, ids):
    """max softmax over the logits at `ids` and over the whole row, written out."""
    e = [math.exp(x) for x in row]
    over_labels = max(e[i] for i in ids) / sum(e[i] for i in ids)
    over_vocab = max(e) / sum(e)
    return over_labels, over_vocab


def test_the_pool_keeps_exactly_conf_below_threshold_over_the_label_tokens_not_the_vocabulary():
    rows = [
        [0.0, 0.0, 3.0, 0.9, 0.2, 0.2, 4.5, 4.5],   # labels sure (0.80); the vocabulary's mass is elsewhere
        [6.0, 0.0, 1.0, 0.9, 0.8, 0.7, 0.0, 0.0],   # labels unsure (~0.28); a non-label token dominates
        [0.0, 0.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0],   # labels ~0.63
        [0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0],   # labels ~0.98
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],   # uniform: 0.25
    ]
    logits = torch.tensor(rows)
    p, conf = label_confidence(logits, LABELS)
    expected = [by_hand(r, LABELS) for r in rows]
    assert torch.allclose(conf, torch.tensor([e[0] for e in expected]), atol=1e-6)
    assert torch.allclose(p.sum(-1), torch.ones(5)) and p.shape == (5, 4)
    kept = confidence_pool(conf, ConfidenceFilter(threshold=0.7, balance=False))
    assert kept == [i for i, e in enumerate(expected) if e[0] < 0.7] == [1, 2, 4]
    # the vocabulary's softmax would choose another pool (the two rows where they differ)
    vocab = torch.tensor([e[1] for e in expected])
    vocab_pool = confidence_pool(vocab, ConfidenceFilter(threshold=0.7, balance=False))
    assert vocab_pool == [0, 2, 4] and vocab_pool != kept
    # a softmax over the whole vocabulary read at the label tokens also differs
    at_labels = logits.softmax(-1)[:, LABELS].max(-1).values
    assert confidence_pool(at_labels, ConfidenceFilter(balance=False)) == [0, 1, 2, 4]


def test_the_threshold_is_strict_and_compared_as_written():
    conf = torch.tensor([0.7, 0.6999, 0.7001, 0.0, 1.0])
    assert confidence_pool(conf, ConfidenceFilter(balance=False)) == [1, 3]
    assert confidence_pool(torch.tensor([0.7, 0.6999, 0.7001, 0.0, 1.0], dtype=torch.float64),
                           ConfidenceFilter(balance=False)) == [1, 3]
    assert confidence_pool(conf, ConfidenceFilter(threshold=1.0, balance=False)) == [0, 1, 2, 3]
    assert confidence_pool(conf, ConfidenceFilter(threshold=0.0, balance=False)) == []


def test_balancing_keeps_the_smallest_cells_count_per_cell_seeded():
    strata = [("negation", 4, "adopt")] * 6 + [("plain", 2, "ignore")] * 3 + [("plain", 4, "partial")] * 5
    conf = torch.full((len(strata),), 0.5)
    conf[0] = 0.9  # dropped by the threshold before balancing: the first cell has 5 unsure inputs
    cfg = ConfidenceFilter(seed=3)
    kept = confidence_pool(conf, cfg, strata)
    assert kept == sorted(kept) and 0 not in kept
    assert Counter(strata[i] for i in kept) == {("negation", 4, "adopt"): 3, ("plain", 2, "ignore"): 3,
                                                ("plain", 4, "partial"): 3}
    assert confidence_pool(conf, cfg, strata) == kept  # same seed, same pool
    others = {tuple(confidence_pool(conf, ConfidenceFilter(seed=s), strata)) for s in range(8)}
    assert len(others) > 1  # the draw depends on the seed
    capped = confidence_pool(conf, ConfidenceFilter(per_stratum=4), strata)
    assert Counter(strata[i] for i in capped) == {("negation", 4, "adopt"): 4, ("plain", 2, "ignore"): 3,
                                                  ("plain", 4, "partial"): 4}
    # without balancing every unsure input stays
    assert confidence_pool(conf, ConfidenceFilter(balance=False), strata) == list(range(1, len(strata)))


def test_bad_options_and_inputs_are_named():
    with pytest.raises(ValueError, match=r"ConfidenceFilter\.threshold must be a finite number in \[0, 1\], got 1\.5"):
        ConfidenceFilter(threshold=1.5)
    with pytest.raises(ValueError, match=r"ConfidenceFilter\.threshold"):
        ConfidenceFilter(threshold=-0.1)
    with pytest.raises(ValueError, match=r"ConfidenceFilter\.per_stratum"):
        ConfidenceFilter(per_stratum=0)
    with pytest.raises(ValueError, match="label_ids must be at least two distinct"):
        label_confidence(torch.zeros(2, 8), [2, 2])
    with pytest.raises(ValueError, match=r"label_ids must be token ids in \[0, 8\)"):
        label_confidence(torch.zeros(2, 8), [2, 9])
    with pytest.raises(ValueError, match="strata must give one value per input"):
        confidence_pool(torch.zeros(3), strata=["a"])
