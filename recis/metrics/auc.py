"""Exact streaming AUC and GAUC.

Both keep, per distinct (group, score), the summed weight of positive and of negative
examples (float64): exact, since the ROC curve depends on nothing else, and compact when
scores repeat. Ties count one half, as in scikit-learn's `roc_auc_score`.

Weights may be any finite non-negative numbers, subnormal ones included, and the result does
not depend on their scale (multiplying all weights by a power of two changes nothing, by another
constant nothing beyond rounding): each weight is divided by its group's positive (negative)
total before weights are multiplied, and GAUC divides the group weights by the largest one
before averaging, so no product of weights underflows to 0 or overflows to inf. Only a summed
weight beyond float64's range (about 1.8e308) is refused: compute() raises ValueError naming it.

>>> auc = AUC()
>>> auc.update(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
>>> auc.compute()
0.75
>>> gauc = GAUC()
>>> gauc.update(torch.tensor([0.1, 0.9, 0.3, 0.2, 0.5]), torch.tensor([0, 1, 1, 0, 1]),
...             groups=torch.tensor([7, 7, 8, 8, 9]))     # user 9 has one class: skipped
>>> gauc.compute(), gauc.details()["skipped_groups"]
(1.0, 1)
>>> tiny = GAUC("clicks")      # one subnormal positive weight, ranked above the negative
>>> tiny.update(torch.tensor([0.9, 0.1]), torch.tensor([1, 0]),
...             torch.tensor([5e-324, 1.0], dtype=torch.float64), groups=torch.tensor([3, 3]))
>>> tiny.compute()
1.0
"""
from typing import Dict, List, Optional

import torch

from recis.metrics.base import Metric
from recis.metrics.inputs import Batch

_KEYS = ("groups", "scores", "pos", "neg")
# Buffered (not yet compacted) examples before a compaction, at least.
_MIN_BUFFER = 1 << 20


def compact(groups: torch.Tensor, scores: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor):
    """Sorts by (group, score) and sums pos/neg weights of equal keys."""
    if scores.numel() == 0:
        return groups, scores, pos, neg
    order = torch.argsort(scores, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    g, s, p, n = groups[order], scores[order], pos[order], neg[order]
    start = torch.ones_like(s, dtype=torch.bool)
    start[1:] = (s[1:] != s[:-1]) | (g[1:] != g[:-1])
    seg = torch.cumsum(start, 0) - 1
    k = int(seg[-1]) + 1
    sums = torch.zeros(2, k, dtype=torch.float64, device=s.device)
    sums[0].index_add_(0, seg, p)
    sums[1].index_add_(0, seg, n)
    return g[start], s[start], sums[0], sums[1]


def segmented_cumsum(x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Inclusive cumulative sum restarting at each segment (`seg` non-decreasing). A log-step
    scan, so each sum adds only values of its own segment (no cancellation across groups)."""
    out, d = x.clone(), 1
    while d < out.numel():
        same = seg[d:] == seg[:-d]
        if not bool(same.any()):
            break
        out[d:] = out[d:] + torch.where(same, out[:-d], torch.zeros((), dtype=out.dtype, device=out.device))
        d *= 2
    return out


class _RankMetric(Metric):
    """State: compacted (groups, scores, pos, neg) plus a buffer of uncompacted batches."""

    def _empty_state(self):
        self._buffer: List[tuple] = []
        self._buffered = 0
        return {"groups": torch.zeros(0, dtype=torch.int64), **{k: torch.zeros(0, dtype=torch.float64)
                                                                for k in _KEYS[1:]}}

    def _add(self, batch: Batch, groups: torch.Tensor) -> None:
        w = batch.weight_or_one()
        self._buffer.append((groups, batch.preds, w * batch.labels, w * (1 - batch.labels)))
        self._buffered += len(batch)
        if self._buffered >= max(_MIN_BUFFER, self._state["scores"].numel()):
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        parts = [tuple(self._state[k] for k in _KEYS)] + self._buffer
        device = parts[-1][1].device
        cat = [torch.cat([p[i].to(device) for p in parts]) for i in range(4)]
        self._state = dict(zip(_KEYS, compact(*cat)))
        self._buffer, self._buffered = [], 0

    def state(self) -> Dict[str, torch.Tensor]:
        self._flush()
        return dict(self._state)

    def _merge(self, states):
        device = states[0]["scores"].device
        cat = [torch.cat([s[k].to(device) for s in states]) for k in _KEYS]
        return dict(zip(_KEYS, compact(*cat)))

    def _check(self, batch: Batch) -> None:
        batch.require_binary_labels(type(self).__name__)

    def _per_group(self):
        """Per group (in id order): summed positive weight P, negative weight N and the AUC, the
        tie-aware share of (positive, negative) pairs ranked correctly; NaN unless P > 0 and N > 0.

        AUC = sum over the group's scores of (p / P) * (negatives below + half the tied ones) / N:
        weights are scaled to their class total before any product, so tiny (even subnormal)
        weights lose nothing to underflow and huge ones do not overflow."""
        st = self.state()
        g, p, n = st["groups"], st["pos"], st["neg"]
        if g.numel() == 0:
            empty = torch.zeros(0, dtype=torch.float64)
            return empty, empty, empty
        start = torch.ones_like(g, dtype=torch.bool)
        start[1:] = g[1:] != g[:-1]
        gid = torch.cumsum(start, 0) - 1
        k = int(gid[-1]) + 1
        totals = torch.zeros(2, k, dtype=torch.float64, device=g.device)
        totals[0].index_add_(0, gid, p)
        totals[1].index_add_(0, gid, n)
        P, N = totals[0], totals[1]
        self._check_totals(g[start], P, N)
        one = torch.ones((), dtype=torch.float64, device=g.device)
        p_share = p / torch.where(P > 0, P, one)[gid]
        n_share = n / torch.where(N > 0, N, one)[gid]
        n_upto = torch.cumsum(n_share, 0) if k == 1 else segmented_cumsum(n_share, gid)
        pairs = p_share * (n_upto - 0.5 * n_share)  # negatives strictly below + half of the tied ones
        auc = torch.zeros(k, dtype=torch.float64, device=g.device).index_add_(0, gid, pairs)
        # the shares sum to 1 up to rounding: a perfectly ranked group may add up to 1 + 2 ulp
        auc = auc.clamp_(0.0, 1.0)
        return P, N, torch.where((P > 0) & (N > 0), auc, torch.full_like(auc, float("nan")))

    def _check_totals(self, ids: torch.Tensor, P: torch.Tensor, N: torch.Tensor) -> None:
        """Every weight is finite, so an infinite total is a sum beyond float64's range."""
        for cls, totals in (("positive", P), ("negative", N)):
            bad = ~torch.isfinite(totals)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                where = f" of group {int(ids[i])}" if self.needs_groups else ""
                raise ValueError(f"{type(self).__name__}: the summed {cls} weight{where} overflows float64 "
                                 f"(the weights add up to more than {torch.finfo(torch.float64).max:.4g}); "
                                 f"divide all weights by a constant: the metric does not depend on their scale")


class AUC(_RankMetric):
    """Exact area under the ROC curve of binary `labels` (0/1) ranked by `preds` (any finite
    scores), weighted by `weights` if given (of any scale: see the module notes); equals
    `sklearn.metrics.roc_auc_score`. Undefined (NaN, or an error with undefined="raise") unless
    both classes have positive weight."""

    def _update(self, batch: Batch) -> None:
        self._add(batch, torch.zeros_like(batch.preds, dtype=torch.int64))

    def _value(self):
        p, n, auc = self._per_group()
        if p.numel() == 0:
            return None, "no examples"
        if not (p[0] > 0 and n[0] > 0):
            return None, f"needs both classes: positive weight {float(p[0])}, negative weight {float(n[0])}"
        return float(auc[0]), None


class GAUC(_RankMetric):
    """Group AUC: the AUC of each group (e.g. user), averaged with weights `weighting`:
    "impressions" (the group's examples, or summed `weights`) or "clicks" (its positives).
    Groups with a single class have no AUC: they are skipped and counted (`details()`); a group
    with both classes counts however small its weights (even subnormal), with its share of the
    total weight. Undefined when no group has both classes."""

    needs_groups = True
    WEIGHTINGS = ("impressions", "clicks")

    def __init__(self, weighting: str = "impressions", undefined: str = "nan"):
        if weighting not in self.WEIGHTINGS:
            raise ValueError(f"GAUC: weighting must be one of {self.WEIGHTINGS}, got {weighting!r}")
        self.weighting = weighting
        super().__init__(undefined)

    def config(self):
        return {"weighting": self.weighting}

    def update(self, preds, labels, weights=None, groups: Optional[torch.Tensor] = None) -> None:
        """As `Metric.update`, plus `groups` [N]: the integer group (user) id of each example."""
        self.update_batch(Batch.of(preds, labels, weights, groups, what="GAUC"))

    def _check(self, batch: Batch) -> None:
        if batch.groups is None:
            raise ValueError("GAUC.update needs groups= (one integer group id, e.g. the user id, per example)")
        super()._check(batch)

    def _update(self, batch: Batch) -> None:
        self._add(batch, batch.groups)

    def details(self) -> dict:
        """gauc, groups (seen), used_groups, skipped_groups (one class only) and the total
        weight of the used groups (inf if it exceeds float64's range; the gauc does not)."""
        p, n, auc = self._per_group()
        used = (p > 0) & (n > 0)
        gauc, total = float("nan"), 0.0
        if used.any():
            pu, nu = p[used], n[used]
            impressions = self.weighting == "impressions"
            total = float((pu + nu if impressions else pu).sum())
            # Group weights relative to the largest (at most 2): their products with the AUCs do not
            # underflow for tiny weights, nor does their sum overflow for huge ones.
            top = torch.maximum(pu.max(), nu.max()) if impressions else pu.max()
            rel = pu / top + nu / top if impressions else pu / top
            gauc = float((rel * auc[used]).sum() / rel.sum())
        return {"gauc": gauc, "groups": int(p.numel()), "used_groups": int(used.sum()),
                "skipped_groups": int((~used).sum()), "weight": total}

    def _value(self):
        d = self.details()
        if d["used_groups"] == 0 or d["weight"] <= 0:
            return None, f"no group has both classes ({d['groups']} groups seen)"
        return d["gauc"], None
