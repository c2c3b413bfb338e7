"""Metrics by name, as a job's YAML selects them (top-level `metrics:` section).

The section is a list of names, or a mapping name -> options (the metric's constructor
arguments; null for none). Without it a job computes the default set: auc, logloss and
calibration, plus gauc when the trainer has a group key (a tower without a binary logit,
`Tower.has_logits = False`: `tower`, the mean of each of its `TowerOutput.values`).

>>> sorted(build_metrics(["auc", "logloss"]))
['auc', 'logloss']
>>> build_metrics({"confusion": {"labels": [1, 2, 3, 4]}})["confusion"]
ConfusionMatrix(labels=[1.0, 2.0, 3.0, 4.0])
>>> sorted(build_metrics(None, group_key="user"))
['auc', 'calibration', 'gauc', 'logloss']
>>> build_metrics(["acc"])
Traceback (most recent call last):
...
ValueError: metrics: unknown metric 'acc'; known metrics: ['auc', 'calibration', 'confusion', 'gauc', 'logloss', 'tower']
>>> build_metrics({"tower": {"names": ["video_reward"]}})["tower"]
TowerValues(names=['video_reward'])
"""
from typing import Any, Dict, Mapping, Optional, Union

from recis.metrics.auc import AUC, GAUC
from recis.metrics.base import Metric
from recis.metrics.confusion import ConfusionMatrix
from recis.metrics.pointwise import Calibration, LogLoss
from recis.metrics.tower import TowerValues

METRICS: Dict[str, type] = {"auc": AUC, "gauc": GAUC, "logloss": LogLoss, "calibration": Calibration,
                            "confusion": ConfusionMatrix, "tower": TowerValues}
DEFAULT_METRICS = ("auc", "logloss", "calibration")  # and "gauc" with a group key
#: the metrics of a binary logit (sigmoid(TowerOutput.logits) against the targets)
BINARY_METRICS = ("auc", "gauc", "logloss", "calibration")

Section = Union[None, list, tuple, Mapping[str, Optional[Mapping[str, Any]]]]


def metric_options(section: Section, where: str = "metrics") -> Dict[str, Dict[str, Any]]:
    """The section as name -> options, checked: known names, options that are mappings."""
    if section is None:
        return {}
    if isinstance(section, (list, tuple)):
        items = []
        for name in section:
            if not isinstance(name, str):
                raise TypeError(f"{where}: a list of metric names must hold strings, got {name!r} (give options as a "
                                "mapping name -> options)")
            items.append((name, None))
        if len({n for n, _ in items}) != len(items):
            raise ValueError(f"{where} names a metric twice: {list(section)}")
    elif isinstance(section, Mapping):
        items = list(section.items())
    else:
        raise TypeError(f"{where} must be a list of metric names or a mapping name -> options, got "
                        f"{type(section).__name__}")
    out = {}
    for name, options in items:
        if name not in METRICS:
            raise ValueError(f"{where}: unknown metric {name!r}; known metrics: {sorted(METRICS)}")
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"{where}.{name} must be a mapping of options (or null), got {options!r}")
        out[name] = dict(options or {})
    if not out:
        raise ValueError(f"{where} selects no metric; leave the section out for the default "
                         f"({list(DEFAULT_METRICS)})")
    return out


def build_metrics(section: Section = None, group_key: Optional[str] = None,
                  where: str = "metrics") -> Dict[str, Metric]:
    """name -> a new metric, from the section (None: the default set; gauc with `group_key`).
    A constructor's error names `where.name`."""
    options = metric_options(section, where)
    if not options:
        options = {name: {} for name in DEFAULT_METRICS + (("gauc",) if group_key is not None else ())}
    out = {}
    for name, kwargs in options.items():
        try:
            out[name] = METRICS[name](**kwargs)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}.{name} ({METRICS[name].__name__}): {e}") from None
    return out
