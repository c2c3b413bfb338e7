"""Finiteness checks: a checkpoint never stores NaN or Inf, and a trainer can ask first.

>>> check_finite(tensors={"w": torch.tensor([1.0, float("nan")])})
Traceback (most recent call last):
...
recis.checkpoint.errors.NonFiniteStateError: non-finite values in the state: 'w' (1 of 2 values)
"""
from typing import Dict, List, Mapping, Optional

import torch
from torch import nn

from recis.checkpoint.codec import encode
from recis.checkpoint.errors import NonFiniteStateError


def nonfinite_entries(tensors: Mapping[str, torch.Tensor]) -> List[str]:
    """'name (k of n values)' for each floating tensor holding NaN or Inf."""
    out = []
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and t.numel():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                out.append(f"{name!r} ({bad} of {t.numel()} values)")
    return out


def check_finite(model: Optional[nn.Module] = None, optimizers: Optional[Mapping[str, object]] = None,
                 tensors: Optional[Mapping[str, torch.Tensor]] = None, what: str = "the state") -> None:
    """Raises NonFiniteStateError naming every tensor of `model` (parameters, buffers, table
    rows and optimizer slots), of `optimizers`' state_dicts and of `tensors` that holds NaN/Inf."""
    named: Dict[str, torch.Tensor] = {}
    if model is not None:
        named.update(model.state_dict())
    for name, opt in (optimizers or {}).items():
        encode(opt.state_dict(), named, f"optimizers/{name}")
    if tensors is not None:
        named.update(tensors)
    bad = nonfinite_entries(named)
    if bad:
        raise NonFiniteStateError(f"non-finite values in {what}: {', '.join(bad)}")
