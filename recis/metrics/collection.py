"""MetricCollection: several metrics updated from one validated batch.

>>> from recis.metrics import AUC, GAUC, LogLoss
>>> metrics = MetricCollection({"auc": AUC(), "gauc": GAUC(), "logloss": LogLoss()})
>>> metrics.update(torch.tensor([0.2, 0.7, 0.6, 0.1]), torch.tensor([0, 1, 1, 0]), groups=torch.tensor([1, 1, 2, 2]))
>>> {k: round(v, 4) for k, v in metrics.compute().items()}
{'auc': 1.0, 'gauc': 1.0, 'logloss': 0.299}
"""
from typing import Dict, Mapping, Optional

import torch

from recis.metrics.base import Metric
from recis.metrics.inputs import Batch


class MetricCollection:
    """`metrics` by name. `update` validates the batch once; `groups` go to the metrics that
    need them (GAUC) and are required when one does."""

    def __init__(self, metrics: Mapping[str, Metric]):
        if not metrics:
            raise ValueError("MetricCollection needs at least one metric")
        bad = {k: type(v).__name__ for k, v in metrics.items() if not isinstance(v, Metric)}
        if bad:
            raise TypeError(f"MetricCollection takes recis.metrics.Metric instances; got {bad}")
        self.metrics: Dict[str, Metric] = dict(metrics)

    def update(self, preds, labels, weights=None, groups: Optional[torch.Tensor] = None) -> None:
        needs = [k for k, m in self.metrics.items() if m.needs_groups]
        if needs and groups is None:
            raise ValueError(f"MetricCollection.update: metrics {needs} need groups= (e.g. user ids)")
        batch = Batch.of(preds, labels, weights, groups, what="MetricCollection")
        # Check every metric first, so that a bad batch leaves all of them unchanged.
        for m in self.metrics.values():
            m._check(batch)
        for m in self.metrics.values():
            m.update_batch(batch)

    def compute(self) -> Dict[str, float]:
        return {k: m.compute() for k, m in self.metrics.items()}

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()

    def sync(self, process_group=None) -> "MetricCollection":
        for m in self.metrics.values():
            m.sync(process_group)
        return self

    def unsync(self) -> "MetricCollection":
        for m in self.metrics.values():
            m.unsync()
        return self

    def __getitem__(self, name: str) -> Metric:
        return self.metrics[name]

    def __iter__(self):
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def __repr__(self) -> str:
        return f"MetricCollection({self.metrics!r})"
