"""Metrics that are sums over examples: log loss and calibration.

>>> m = LogLoss()
>>> m.update(torch.tensor([0.9, 0.2]), torch.tensor([1, 0]))
>>> round(m.compute(), 6)
0.164252
>>> c = Calibration()
>>> c.update(torch.tensor([0.5, 0.25, 0.25]), torch.tensor([1, 0, 0]))
>>> c.compute(), c.details()
(1.0, {'calibration': 1.0, 'mean_prediction': 0.3333333333333333, 'mean_label': 0.3333333333333333, 'weight': 3.0})
"""
import torch
import torch.nn.functional as F

from recis.metrics.base import SumMetric
from recis.metrics.inputs import Batch

_EPS64 = torch.finfo(torch.float64).eps


class LogLoss(SumMetric):
    """Mean binary cross-entropy (natural log), weighted by `weights` if given.

    Probabilities are clipped to [eps, 1 - eps] with eps = float64 machine epsilon, as
    scikit-learn's `log_loss` does for float64 input. With `from_logits=True`, `preds` are raw
    scores and the loss is computed stably as softplus(x) - y * x. Labels may be soft, in [0, 1].
    Undefined (NaN, or an error with undefined="raise") when the total weight is 0."""

    _SUMS = ("loss", "weight")

    def __init__(self, from_logits: bool = False, undefined: str = "nan"):
        self.from_logits = bool(from_logits)
        super().__init__(undefined)

    def config(self):
        return {"from_logits": self.from_logits}

    def _check(self, batch: Batch) -> None:
        batch.require_label_range(type(self).__name__)
        if not self.from_logits:
            batch.require_probabilities(type(self).__name__)

    def _update(self, batch: Batch) -> None:
        p, y = batch.preds, batch.labels
        if self.from_logits:
            losses = F.softplus(p) - y * p
        else:
            log_p, log_q = torch.log(p.clamp(_EPS64, 1 - _EPS64)), torch.log((1 - p).clamp(_EPS64, 1 - _EPS64))
            losses = -(y * log_p + (1 - y) * log_q)
        w = batch.weight_or_one()
        self._add((losses * w).sum(), w.sum())

    def _value(self):
        loss, weight = self._state["sums"].tolist()
        if weight <= 0:
            return None, "no examples (total weight 0)"
        return loss / weight, None


class Calibration(SumMetric):
    """Mean prediction / mean label (1.0 is calibrated; above 1 over-predicts), weighted by
    `weights` if given. Undefined when no example (or no positive weight) has a positive label."""

    _SUMS = ("pred", "label", "weight")

    def _check(self, batch: Batch) -> None:
        batch.require_label_range(type(self).__name__)
        batch.require_probabilities(type(self).__name__)

    def _update(self, batch: Batch) -> None:
        w = batch.weight_or_one()
        self._add((batch.preds * w).sum(), (batch.labels * w).sum(), w.sum())

    def _value(self):
        pred, label, weight = self._state["sums"].tolist()
        if weight <= 0:
            return None, "no examples (total weight 0)"
        if label <= 0:
            return None, "no positive labels (mean label 0)"
        return pred / label, None

    def details(self) -> dict:
        """calibration, mean_prediction, mean_label and the total weight (NaN where undefined)."""
        pred, label, weight = self._state["sums"].tolist()
        nan = float("nan")
        return {"calibration": pred / label if label > 0 and weight > 0 else nan,
                "mean_prediction": pred / weight if weight > 0 else nan,
                "mean_label": label / weight if weight > 0 else nan, "weight": weight}
