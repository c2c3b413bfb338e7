"""recis.metrics: exact streaming AUC, GAUC, log loss, calibration and a multi-class confusion
matrix (accuracy, macro-F1, per-class F1), the mean of a tower's per-example values
(`TowerValues`, metric `tower`), reducible across ranks; `build_metrics` selects them
by name (a job's YAML `metrics:` section).

Each metric has `update(preds, labels, weights=None)` (GAUC also `groups=`), `compute()` (a
float; NaN where undefined, or an error with `undefined="raise"`), `reset()`, and
`sync(process_group=None)` / `unsync()`: a collective that merges every rank's state, after
which `compute()` gives the metric over all ranks' data (no-op in a single process).
"""
from recis.metrics.auc import AUC, GAUC
from recis.metrics.base import Metric, UndefinedMetricError
from recis.metrics.collection import MetricCollection
from recis.metrics.confusion import ConfusionMatrix
from recis.metrics.inputs import Batch
from recis.metrics.pointwise import Calibration, LogLoss
from recis.metrics.registry import BINARY_METRICS, DEFAULT_METRICS, METRICS, build_metrics, metric_options
from recis.metrics.tower import TowerValues

__all__ = ["Metric", "AUC", "GAUC", "LogLoss", "Calibration", "ConfusionMatrix", "MetricCollection", "Batch",
           "TowerValues", "UndefinedMetricError", "METRICS", "BINARY_METRICS", "DEFAULT_METRICS", "build_metrics",
           "metric_options"]
