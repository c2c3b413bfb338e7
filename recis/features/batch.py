"""The engine's output: one training batch."""
from dataclasses import dataclass, field, replace
from typing import Dict, List, Union

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

__all__ = ["Batch"]


def _move(x, fn):
    if isinstance(x, dict):
        return {k: _move(v, fn) for k, v in x.items()}
    if isinstance(x, (torch.Tensor, KeyedJaggedTensor)):
        return fn(x)
    return x  # pass-through Arrow columns stay where they are


@dataclass
class Batch:
    """sparse: KeyedJaggedTensor (keys = sparse features in spec order, int64 ids);
    dense: float32 [size, len(dense_names)]; labels: float32 [size], a {name: tensor} dict with
    several labels, or None; extras: pass-through columns (pyarrow arrays) by feature name;
    tensors: image and tensor features by name (float32 [size, C, H, W] / [size, *shape])."""

    sparse: KeyedJaggedTensor
    dense: torch.Tensor
    dense_names: List[str]
    labels: Union[torch.Tensor, Dict[str, torch.Tensor], None]
    extras: Dict[str, object] = field(default_factory=dict)
    size: int = 0
    tensors: Dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "Batch":
        """The batch with every tensor on `device` (pass-through Arrow columns are not moved)."""
        return self._map(lambda t: t.to(device=torch.device(device), non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """The batch with its tensors in pinned memory (needs an accelerator)."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn) -> "Batch":
        return replace(self, sparse=_move(self.sparse, fn), dense=_move(self.dense, fn),
                       labels=_move(self.labels, fn), extras=_move(self.extras, fn), tensors=_move(self.tensors, fn))
