"""A multi-class confusion matrix: accuracy, macro-F1 and per-class F1, reducible across ranks.

The state is the (weighted) count of each (true class, predicted class) pair, float64; merging
two states adds them, so `sync()` over ranks gives the metric of all ranks' data.

>>> m = ConfusionMatrix(labels=[1, 2, 3])
>>> m.update(torch.tensor([1, 2, 2, 3, 0]), torch.tensor([1, 2, 3, 3, 1]))   # 0: no class
>>> m.matrix().tolist()       # rows: true 1, 2, 3; columns: predicted 1, 2, 3, none of them
[[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]]
>>> {k: round(v, 4) for k, v in m.results().items()}
{'accuracy': 0.6, 'macro_f1': 0.6667, 'f1_1': 0.6667, 'f1_2': 0.6667, 'f1_3': 0.6667}
"""
import math
from typing import Dict, List, Sequence

import torch

from recis.config_utils import is_real
from recis.metrics.base import Metric
from recis.metrics.inputs import Batch


def _label_name(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class ConfusionMatrix(Metric):
    """Counts of (true class, predicted class) over `labels`, the class label values (e.g. the
    grades [1, 2, 3, 4]); `update(predicted, labels, weights=None)` takes predicted class values
    (`TowerOutput.predicted`) and true ones. A true label outside `labels` is an error (naming
    it); a predicted value outside them (e.g. 0 for an unparseable answer) counts as wrong.

    `compute()` is the macro-F1; `results()` gives accuracy, macro_f1 and f1_<label> per class.
    F1 of a class = 2 TP / (2 TP + FP + FN); a class that is neither true nor predicted anywhere
    gets F1 0 and still counts in the macro mean (scikit-learn's f1_score with
    labels=`labels`, average="macro"). Undefined (NaN, or an error with undefined="raise") with
    no examples (total weight 0)."""

    multiclass = True

    def __init__(self, labels: Sequence[float], undefined: str = "nan"):
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence) or len(labels) < 2:
            raise ValueError(f"ConfusionMatrix: labels must be a list of at least 2 class label values (e.g. "
                             f"[1, 2, 3, 4]), got {labels!r}")
        for v in labels:
            if not is_real(v) or not math.isfinite(v):
                raise ValueError(f"ConfusionMatrix: labels must be finite numbers, got {v!r} in {list(labels)}")
        if len({float(v) for v in labels}) != len(labels):
            raise ValueError(f"ConfusionMatrix: labels must be distinct, got {list(labels)}")
        self.labels: List[float] = [float(v) for v in labels]
        self._values = torch.tensor(self.labels, dtype=torch.float64)
        super().__init__(undefined)

    def config(self) -> dict:
        return {"labels": self.labels}

    @property
    def names(self) -> List[str]:
        """The label values as they appear in the result keys (f1_<name>)."""
        return [_label_name(v) for v in self.labels]

    # ---- state ----
    def _empty_state(self) -> Dict[str, torch.Tensor]:
        k = len(self.labels)
        return {"counts": torch.zeros(k * (k + 1), dtype=torch.float64)}

    def _merge(self, states):
        counts = [s["counts"] for s in states]
        return {"counts": torch.stack([c.to(counts[0].device) for c in counts]).sum(dim=0)}

    def _index(self, values: torch.Tensor) -> torch.Tensor:
        """The class index of each value; len(labels) where it is none of them."""
        eq = values.unsqueeze(1) == self._values.to(values.device).unsqueeze(0)
        k = len(self.labels)
        return torch.where(eq.any(1), eq.to(torch.int64).argmax(1), torch.full_like(values, k, dtype=torch.int64))

    def _check(self, batch: Batch) -> None:
        bad = self._index(batch.labels) == len(self.labels)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"ConfusionMatrix: label {_label_name(float(batch.labels[i]))} at index {i} is not "
                             f"one of the classes {self.names}")

    def _update(self, batch: Batch) -> None:
        k = len(self.labels)
        cell = self._index(batch.labels) * (k + 1) + self._index(batch.preds)
        counts = self._state["counts"].to(batch.preds.device)
        counts.index_add_(0, cell, batch.weight_or_one())
        self._state["counts"] = counts

    # ---- values ----
    def matrix(self) -> torch.Tensor:
        """[K, K + 1]: row = true class, column = predicted class (the last: none of the classes)."""
        k = len(self.labels)
        return self._state["counts"].reshape(k, k + 1).cpu()

    def _f1(self) -> List[float]:
        m = self.matrix()
        k = len(self.labels)
        tp = m.diagonal()  # [K]
        true = m.sum(1)
        pred = m[:, :k].sum(0)
        out = []
        for c in range(k):
            denom = float(true[c] + pred[c])  # 2 TP + FP + FN
            out.append(2 * float(tp[c]) / denom if denom > 0 else 0.0)
        return out

    def _value(self):
        if float(self.matrix().sum()) <= 0:
            return None, "no examples (total weight 0)"
        f1 = self._f1()
        return sum(f1) / len(f1), None

    def results(self) -> Dict[str, float]:
        """{accuracy, macro_f1, f1_<label> for each class} (NaN with no examples, or an error
        with undefined="raise")."""
        macro = self.compute()
        if math.isnan(macro):
            return {"accuracy": macro, "macro_f1": macro, **{f"f1_{n}": macro for n in self.names}}
        m = self.matrix()
        accuracy = float(m.diagonal().sum() / m.sum())
        return {"accuracy": accuracy, "macro_f1": macro, **{f"f1_{n}": v for n, v in zip(self.names, self._f1())}}
