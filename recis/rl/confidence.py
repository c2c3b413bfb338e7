"""Label-token confidence and the confidence pool filter (DyKnow-RAG's RL pool, methods.md section 3).

A generative judge writes its label as one of K reserved label tokens at a known position (the
first completion token of a post-CoT judge). Its confidence on an input is read there, from the
K label tokens' logits only, not from the whole vocabulary:

    p(k | x) = softmax_k(logits[label_ids])     (k = 1..K)
    conf(x)  = max_k p(k | x)

The RL pool keeps the inputs the SFT model is unsure of: conf < threshold (DyKnow-RAG: 0.7, where
the SFT error rate is about 50%), then balances them over strata (query type, tier, context
decision, ...): each non-empty cell of the strata (a tuple of stratum values) keeps at most
`per_stratum` of its inputs (None: the size of the smallest non-empty cell, so every cell weighs
the same), drawn with a seeded generator.

Vocabulary mass outside the label tokens does not count: here the label tokens' own softmax
is confident (0.80, so the 0.7 filter drops the input), while a softmax over the whole
vocabulary would give the top label 0.10 (and keep it):

>>> logits = torch.tensor([[3.0, 0.9, 0.2, 0.2, 4.5, 4.5]])   # label tokens are ids 0..3
>>> probs, conf = label_confidence(logits, [0, 1, 2, 3])
>>> round(float(conf), 2), round(float(logits.softmax(-1)[0, :4].max()), 2)
(0.8, 0.1)
>>> confidence_pool(torch.tensor([0.9, 0.5, 0.69, 0.7]), ConfidenceFilter(balance=False))
[1, 2]
"""
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, List, Optional, Sequence, Tuple

import torch

from recis.config_utils import bounded, check_types

__all__ = ["label_confidence", "ConfidenceFilter", "confidence_pool"]


def label_confidence(logits: torch.Tensor, label_ids: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(p [B, K], conf [B]): the softmax over the K label tokens' logits (`logits` [B, V], read at
    the label position; `label_ids` the K token ids in label order) and its maximum. Float32, no
    gradient."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a tensor [batch, vocab] at the label position, got {shape}")
    ids = [int(i) for i in label_ids]
    if len(ids) < 2 or len(set(ids)) != len(ids):
        raise ValueError(f"label_ids must be at least two distinct token ids, got {list(label_ids)}")
    if min(ids) < 0 or max(ids) >= logits.shape[1]:
        raise ValueError(f"label_ids must be token ids in [0, {logits.shape[1]}), got {ids}")
    with torch.no_grad():
        picked = logits.detach().float()[:, ids]
        p = picked.softmax(-1)
    return p, p.max(-1).values


@dataclass
class ConfidenceFilter:
    """Options of the confidence pool: keep an input iff conf < `threshold` (DyKnow-RAG: 0.7);
    with `balance`, each stratum cell then keeps at most `per_stratum` of its inputs (None: the
    smallest non-empty cell's count), drawn with `seed`."""

    threshold: float = bounded(0.7, ge=0, le=1)
    balance: bool = True
    per_stratum: Optional[int] = bounded(None, ge=1)
    seed: int = bounded(0, ge=0, lt=1 << 63)

    def __post_init__(self):
        check_types(self, type(self).__name__)


def confidence_pool(conf: torch.Tensor, config: Optional[ConfidenceFilter] = None,
                    strata: Optional[Sequence[Hashable]] = None) -> List[int]:
    """The sorted indices of the inputs the pool keeps (see the module doc): conf < threshold,
    then balanced over `strata` (one hashable per input, e.g. a (query type, tier, decision)
    tuple; None: one cell) when `config.balance`."""
    cfg = config if config is not None else ConfidenceFilter()
    if not isinstance(cfg, ConfidenceFilter):
        raise TypeError(f"config must be a ConfidenceFilter, got {type(cfg).__name__}")
    c = torch.as_tensor(conf).detach()
    if not c.is_floating_point():
        c = c.to(torch.float64)
    if c.dim() != 1:
        raise ValueError(f"conf must be a vector [num_inputs], got shape {tuple(c.shape)}")
    if strata is not None and len(strata) != c.shape[0]:
        raise ValueError(f"strata must give one value per input: {len(strata)} for {c.shape[0]} inputs")
    # compared in conf's own dtype, so a float32 conf of 0.7 is not below a threshold of 0.7
    low = (c < torch.tensor(cfg.threshold, dtype=c.dtype)).nonzero().squeeze(1).tolist()
    if not cfg.balance or not low:
        return low
    cells = defaultdict(list)
    for i in low:
        cells[None if strata is None else strata[i]].append(i)
    size = cfg.per_stratum if cfg.per_stratum is not None else min(len(v) for v in cells.values())
    rng = random.Random(cfg.seed)
    keep = []
    for key in sorted(cells, key=repr):  # a fixed order, whatever the order the inputs came in
        members = cells[key]
        keep += members if len(members) <= size else rng.sample(members, size)
    return sorted(keep)
