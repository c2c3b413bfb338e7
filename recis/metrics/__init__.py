"""recis.metrics: exact streaming AUC, GAUC, log loss and calibration, reducible across ranks.

Each metric has `update(preds, labels, weights=None)` (GAUC also `groups=`), `compute()` (a
float; NaN where undefined, or an error with `undefined="raise"`), `reset()`, and
`sync(process_group=None)` / `unsync()`: a collective that merges every rank's state, after
which `compute()` gives the metric over all ranks' data (no-op in a single process).
"""
from recis.metrics.auc import AUC, GAUC
from recis.metrics.base import Metric, UndefinedMetricError
from recis.metrics.collection import MetricCollection
from recis.metrics.inputs import Batch
from recis.metrics.pointwise import Calibration, LogLoss

__all__ = ["Metric", "AUC", "GAUC", "LogLoss", "Calibration", "MetricCollection", "Batch", "UndefinedMetricError"]
