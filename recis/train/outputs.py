"""Checks of what a tower hands the Trainer beyond its loss: per-example values
(`TowerOutput.values`) and, for a tower without a binary logit (`has_logits = False`), the
metrics it can be evaluated with.

>>> import torch
>>> check_values({"reward": torch.ones(3, 1)}, {}, 3, "MyTower")["reward"].shape
torch.Size([3])
>>> check_values({"reward": torch.ones(2)}, {}, 3, "MyTower")
Traceback (most recent call last):
...
ValueError: MyTower TowerOutput.values['reward'] must have one number per example ([3]), got shape (2,)
"""
from typing import Dict, Mapping, Optional

import torch
from torch import nn

__all__ = ["check_metrics", "check_values", "flat_len"]


def check_metrics(model: nn.Module, metrics: Mapping[str, object], name: Optional[str] = None) -> None:
    """Refuses binary metrics (of sigmoid(logits)) for a tower with `has_logits = False`,
    naming the metrics and the tower (`name`: how the job names it)."""
    if getattr(model, "has_logits", True):
        return
    binary = [k for k, m in metrics.items() if not getattr(m, "multiclass", False)
              and not getattr(m, "tower_values", False)]
    if binary:
        tower = type(model).__name__ if name is None else f"{name!r} ({type(model).__name__})"
        raise ValueError(f"metrics {binary} need a binary logit, but tower {tower} has none (has_logits = False); "
                         "use the tower metric (metrics: [tower]), which averages its TowerOutput.values")


def flat_len(x) -> int:
    return int(x.numel()) if isinstance(x, torch.Tensor) else len(x)


def check_values(values, stats, rows: int, tower: str) -> Dict[str, torch.Tensor]:
    """TowerOutput.values checked: name -> a [rows] (or [rows, 1]) tensor, names apart from the
    statistics'."""
    if not isinstance(values, Mapping):
        raise TypeError(f"{tower} TowerOutput.values must be a mapping name -> [B] tensor, got {type(values).__name__}")
    out = {}
    for name, v in values.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"{tower} TowerOutput.values: names must be non-empty strings, got {name!r}")
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{tower} TowerOutput.values[{name!r}] must be a tensor [B], got {type(v).__name__}")
        if v.dim() == 2 and v.shape[1] == 1:
            v = v[:, 0]
        if v.dim() != 1 or v.numel() != rows:
            raise ValueError(f"{tower} TowerOutput.values[{name!r}] must have one number per example ([{rows}]), got "
                             f"shape {tuple(v.shape)}")
        if name in stats:
            raise ValueError(f"{tower} reports {name!r} both in TowerOutput.values and TowerOutput.stats; rename one")
        out[name] = v
    return out
