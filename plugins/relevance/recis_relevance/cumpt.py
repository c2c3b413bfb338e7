"""Deployment of a generative relevance judge from its label-token probabilities (TaoSR1):
cumulative-probability tiering (CumPT) with one threshold, and a ranking score.

With p_k the softmax over the four label tokens' logits at the label position (k = 1..4):

    tier(p, tau)  = max{ k : sum_{j >= k} p_j >= tau },   tau in (0, 1]
    score(p)      = sum_k k * p_k

The tail sums are accumulated from L4 downward, so the tier is the highest grade whose upper
tail still holds mass tau: small tau favours high grades, tau = 1 gives the lowest grade with
non-zero mass (1 whenever p_1 > 0). One threshold replaces the several per-grade thresholds a
tiered decision would otherwise need; tau is ours to choose (a config value, tuned on validation
queries, never on test queries).

>>> p = torch.tensor([[0.4, 0.0, 0.3, 0.3]])
>>> cumpt_tier(p, 0.5).tolist(), cumpt_tier(p, 0.3).tolist(), cumpt_tier(p, 0.31).tolist()
([3], [4], [3])
>>> ranking_score(p).tolist()
[2.5]
>>> label_probs(torch.tensor([[0.0, 0.0, 0.0, 0.0]])).tolist()
[[0.25, 0.25, 0.25, 0.25]]

`choose_tau(p, grades)` picks tau on held-out (validation) rows: the tau of a grid with the best
macro-F1 of the CumPT grades against the true grades (ties: the smallest such tau) [I].

>>> choose_tau(torch.tensor([[0.4, 0.0, 0.3, 0.3], [0.1, 0.5, 0.25, 0.15]]), [3, 2], taus=(0.25, 0.5, 0.75))
(0.5, {0.25: 0.0, 0.5: 0.5, 0.75: 0.25})
"""
import math
from typing import Dict, Optional, Sequence, Tuple

import torch

__all__ = ["NUM_LABELS", "TAU_GRID", "label_probs", "cumpt_tier", "ranking_score", "check_tau", "choose_tau"]

NUM_LABELS = 4
#: the taus `choose_tau` tries by default: 0.05, 0.10, ..., 1.00
TAU_GRID = tuple(round(0.05 * i, 2) for i in range(1, 21))


def check_tau(tau) -> float:
    """tau as a float, or a ValueError naming it when it is not a number in (0, 1]."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or not 0 < tau <= 1:
        raise ValueError(f"CumPT threshold tau must be a number in (0, 1], got {tau!r}")
    return float(tau)


def _check_probs(p: torch.Tensor, atol: float = 1e-4) -> torch.Tensor:
    if not isinstance(p, torch.Tensor) or not p.is_floating_point():
        raise TypeError(f"label probabilities must be a float tensor, got {type(p).__name__}"
                        f"{'' if not isinstance(p, torch.Tensor) else f' of {p.dtype}'}")
    if p.dim() == 0 or p.shape[-1] != NUM_LABELS:
        raise ValueError(f"label probabilities must have shape [..., {NUM_LABELS}], got {list(p.shape)}")
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        raise ValueError("label probabilities must be finite and non-negative")
    sums = p.sum(-1).flatten()
    if sums.numel() and float((sums - 1).abs().max()) > atol:
        worst = float(sums[(sums - 1).abs().argmax()])
        raise ValueError(f"label probabilities must sum to 1 over the last dim (within {atol}); a row sums to {worst}")
    return p


def label_probs(logits: torch.Tensor, label_ids: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Softmax over the four label tokens only: `logits` [..., 4] are the label tokens' logits
    (L1..L4 in order), or, with `label_ids` (the four token ids of ``<L1>``..``<L4>``), logits
    [..., V] over the whole vocabulary from which they are taken."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a float tensor, got {type(logits).__name__}")
    if label_ids is not None:
        ids = [int(i) for i in label_ids]
        if len(ids) != NUM_LABELS or len(set(ids)) != NUM_LABELS:
            raise ValueError(f"label_ids must be {NUM_LABELS} distinct token ids, got {list(label_ids)}")
        if logits.dim() == 0 or not all(0 <= i < logits.shape[-1] for i in ids):
            raise ValueError(f"label_ids {ids} are outside the vocabulary of logits with shape {list(logits.shape)}")
        logits = logits[..., ids]
    if logits.dim() == 0 or logits.shape[-1] != NUM_LABELS:
        raise ValueError(f"label logits must have shape [..., {NUM_LABELS}] (or pass label_ids), "
                         f"got {list(logits.shape)}")
    return torch.softmax(logits, dim=-1)


def cumpt_tier(p: torch.Tensor, tau: float) -> torch.Tensor:
    """The CumPT grade (int64 [...], values 1..4) of label probabilities p [..., 4]: the largest k
    with sum_{j>=k} p_j >= tau. Grade 1 always qualifies (its tail is all the mass), so rounding
    in the total never leaves a row without a grade."""
    tau = check_tau(tau)
    p = _check_probs(p)
    tails = torch.flip(torch.cumsum(torch.flip(p, [-1]), dim=-1), [-1])  # tails[..., k-1] = sum_{j>=k} p_j
    # tails are non-increasing in k (sums of non-negative numbers), so {k : tail_k >= tau} is 1..tier
    return 1 + (tails[..., 1:] >= tau).sum(-1)


def ranking_score(p: torch.Tensor) -> torch.Tensor:
    """The expected grade sum_k k * p_k ([...], in [1, 4]): a ranking score for items."""
    p = _check_probs(p)
    grades = torch.arange(1, NUM_LABELS + 1, dtype=p.dtype, device=p.device)
    return (p * grades).sum(-1)


def choose_tau(p: torch.Tensor, grades: Sequence[int], taus: Sequence[float] = TAU_GRID
               ) -> Tuple[float, Dict[float, float]]:
    """(the tau of `taus` whose CumPT grades of p [N, 4] have the best macro-F1 over the four
    grades against `grades` [N] (ties: the smallest tau), {tau: macro-F1}). Give it validation
    rows, never the test rows."""
    from recis_relevance.evaluate import macro_f1

    p = _check_probs(p)
    true = [int(g) for g in grades]
    if p.dim() != 2 or p.shape[0] != len(true) or not true:
        raise ValueError(f"choose_tau needs p [N, {NUM_LABELS}] and N grades (N > 0), got p {list(p.shape)} and "
                         f"{len(true)} grades")
    if not taus:
        raise ValueError("choose_tau needs at least one tau")
    scores = {check_tau(t): macro_f1(true, cumpt_tier(p, t).tolist(), classes=range(1, NUM_LABELS + 1))
              for t in sorted(taus)}
    best = max(scores.values())
    return next(t for t, s in scores.items() if s == best), scores
