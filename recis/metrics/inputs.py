"""Validation of metric inputs: one checked, float64 view of a batch of predictions.

>>> b = Batch.of(torch.tensor([0.2, 0.9]), torch.tensor([0, 1]))
>>> b.preds.dtype, b.labels.tolist(), b.weights is None
(torch.float64, [0.0, 1.0], True)
"""
from dataclasses import dataclass
from typing import Optional

import torch


def _flat(x, name: str, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{what}: {name} must be a tensor or array-like, got {type(x).__name__}") from e
    if x.dim() == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() > 1:
        raise ValueError(f"{what}: {name} must be 1-D (or [N, 1]), got shape {tuple(x.shape)}")
    return x.reshape(-1).detach()


def _first(mask: torch.Tensor) -> int:
    return int(mask.nonzero()[0, 0])


def _check_finite(x: torch.Tensor, name: str, what: str) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        i = _first(bad)
        raise ValueError(f"{what}: {name} must be finite; {int(bad.sum())} values are not "
                         f"(first at index {i}: {x[i].item()})")


@dataclass
class Batch:
    """preds and labels as float64 [N], weights float64 [N] or None, groups int64 [N] or None."""

    preds: torch.Tensor
    labels: torch.Tensor
    weights: Optional[torch.Tensor] = None
    groups: Optional[torch.Tensor] = None

    @classmethod
    def of(cls, preds, labels, weights=None, groups=None, what: str = "metric") -> "Batch":
        preds, labels = _flat(preds, "preds", what), _flat(labels, "labels", what)
        if preds.dtype == torch.bool or preds.is_complex():
            raise TypeError(f"{what}: preds must be real numbers, got dtype {preds.dtype}")
        if labels.is_complex():
            raise TypeError(f"{what}: labels must be real numbers, got dtype {labels.dtype}")
        if labels.numel() != preds.numel():
            raise ValueError(f"{what}: preds has {preds.numel()} values but labels has {labels.numel()}")
        if labels.device != preds.device:
            raise ValueError(f"{what}: preds are on {preds.device} but labels on {labels.device}")
        preds, labels = preds.to(torch.float64), labels.to(torch.float64)
        _check_finite(preds, "preds", what)
        _check_finite(labels, "labels", what)
        if weights is not None:
            weights = _flat(weights, "weights", what).to(device=preds.device, dtype=torch.float64)
            if weights.numel() != preds.numel():
                raise ValueError(f"{what}: weights has {weights.numel()} values but preds has {preds.numel()}")
            _check_finite(weights, "weights", what)
            if bool((weights < 0).any()):
                i = _first(weights < 0)
                raise ValueError(f"{what}: weights must be >= 0, got {weights[i].item()} at index {i}")
        if groups is not None:
            groups = _flat(groups, "groups", what)
            if groups.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
                raise TypeError(f"{what}: groups must be integer ids (e.g. user ids), got dtype {groups.dtype}")
            groups = groups.to(device=preds.device, dtype=torch.int64)
            if groups.numel() != preds.numel():
                raise ValueError(f"{what}: groups has {groups.numel()} values but preds has {preds.numel()}")
        return cls(preds, labels, weights, groups)

    def __len__(self) -> int:
        return self.preds.numel()

    def weight_or_one(self) -> torch.Tensor:
        return self.weights if self.weights is not None else torch.ones_like(self.preds)

    def require_binary_labels(self, what: str) -> None:
        bad = (self.labels != 0) & (self.labels != 1)
        if bool(bad.any()):
            i = _first(bad)
            raise ValueError(f"{what}: labels must be 0 or 1, got {self.labels[i].item()} at index {i}")

    def require_label_range(self, what: str) -> None:
        bad = (self.labels < 0) | (self.labels > 1)
        if bool(bad.any()):
            i = _first(bad)
            raise ValueError(f"{what}: labels must be in [0, 1], got {self.labels[i].item()} at index {i}")

    def require_probabilities(self, what: str) -> None:
        bad = (self.preds < 0) | (self.preds > 1)
        if bool(bad.any()):
            i = _first(bad)
            raise ValueError(f"{what}: preds must be probabilities in [0, 1], got {self.preds[i].item()} at index "
                             f"{i} (pass from_logits=True for raw scores)")
