"""HashEmbedding: an embedding bag over raw 64-bit ids that grows as new ids arrive.

>>> emb = HashEmbedding(8, combiner="sum", seed=0)
>>> out = emb(torch.tensor([3, 1 << 62, 3]), torch.tensor([0, 2, 3]))
>>> out.shape, len(emb.table)
(torch.Size([2, 8]), 2)
"""
from typing import Optional

import torch
from torch import nn

from recis._ops import COMBINERS
from recis.nn.functional import check_jagged
from recis.nn.hash_table import EvictionArg, HashTable, TableGroup
from recis.nn.policies import FrequencyAdmission
from recis.nn.table_state import groups_repr, load_groups, move_groups, save_groups


class HashEmbedding(nn.Module):
    """`forward(values [N], offsets [B + 1], per_sample_weights=None)` returns `[B, dim]`, or
    `[N, dim]` when `combiner` is None. In training mode unseen ids are inserted (subject to
    `admission`); in eval mode they are not, and read zeros (or their initial row, `missing="init"`).
    The table lives on `device` (moved by `.to(device)` / `.cuda()` with the module); `backend`
    picks C++ or Triton kernels (see TableGroup)."""

    def __init__(self, embedding_dim: int, combiner: Optional[str] = "sum", initializer=None, seed: int = 0,
                 admission: Optional[FrequencyAdmission] = None, eviction: EvictionArg = None,
                 dtype: torch.dtype = torch.float32, capacity: Optional[int] = None, missing: str = "zeros",
                 name: str = "table", device=None, backend: Optional[str] = None):
        super().__init__()
        if combiner not in COMBINERS:
            raise ValueError(f"combiner must be 'sum', 'mean' or None, got {combiner!r}")
        self.combiner = combiner
        self.group = TableGroup(embedding_dim, [name], [seed], initializer, admission, eviction, capacity, missing,
                                dtype, device=device, backend=backend)
        self.embedding_dim = self.group.embedding_dim

    @property
    def table(self) -> HashTable:
        return self.group.tables[0]

    def forward(self, values: torch.Tensor, offsets: Optional[torch.Tensor] = None,
                per_sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        if offsets is None:
            if self.combiner is not None:
                raise ValueError("HashEmbedding: offsets are required when combiner is not None")
            offsets = torch.tensor([0, values.numel()], dtype=torch.int64, device=self.group.device)
        values = check_jagged(values, offsets, per_sample_weights, self.group.device)
        batch = offsets.numel() - 1
        return self.group.lookup(values, offsets, per_sample_weights, [0], batch, [0], self.embedding_dim,
                                 COMBINERS[self.combiner], self.training)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        move_groups([self.group], fn)
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        save_groups([self.group], destination, prefix)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        mine = {k for k in state_dict if k.startswith(f"{prefix}{self.table.name}.")}
        load_groups([self.group], state_dict, prefix, strict, missing_keys, unexpected_keys, error_msgs)
        rest = {k: v for k, v in state_dict.items() if k not in mine}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"dim={self.embedding_dim}, combiner={self.combiner!r}, tables={groups_repr([self.group])}"
