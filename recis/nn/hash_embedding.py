"""HashEmbedding: an embedding bag over raw 64-bit ids that grows as new ids arrive.

>>> emb = HashEmbedding(8, combiner="sum", seed=0)
>>> out = emb(torch.tensor([3, 1 << 62, 3]), torch.tensor([0, 2, 3]))
>>> out.shape, len(emb.table)
(torch.Size([2, 8]), 2)
>>> HashEmbedding(TableConfig("table", 8, seed=0)).config == emb.config  # the same table, from its config
True
"""
from dataclasses import fields
from typing import Optional, Union

import torch
from torch import nn

from recis._ops import COMBINERS
from recis.nn.functional import check_jagged
from recis.nn.hash_table import HashTable, TableGroup
from recis.nn.table_config import TableConfig
from recis.nn.table_state import groups_repr, load_groups, move_groups, save_groups

# HashEmbedding's own defaults for the keyword form (a TableConfig's seed otherwise derives from its name).
KEYWORD_DEFAULTS = {"name": "table", "seed": 0}


class HashEmbedding(nn.Module):
    """`forward(values [N], offsets [B + 1], per_sample_weights=None)` returns `[B, dim]`, or
    `[N, dim]` when `combiner` is None. In training mode unseen ids are inserted (subject to
    `admission`); in eval mode they are not, and read zeros (or their initial row, `missing="init"`).

    `HashEmbedding(config)` takes a TableConfig; `HashEmbedding(embedding_dim, **options)` builds
    one from TableConfig's options as keywords (name "table" and seed 0 unless given). The table
    lives on `device` (moved by `.to(device)` / `.cuda()` with the module); `backend` picks C++
    or Triton kernels (see TableGroup)."""

    def __init__(self, config: Union[TableConfig, int], *, device=None, backend: Optional[str] = None, **options):
        super().__init__()
        if isinstance(config, TableConfig):
            if options:
                raise TypeError(f"HashEmbedding takes a TableConfig or an embedding_dim with options, got a "
                                f"TableConfig and {sorted(options)}; set them in the TableConfig")
        else:
            known = {f.name for f in fields(TableConfig)} - {"embedding_dim"}
            unknown = sorted(set(options) - known)
            if unknown:
                raise TypeError(f"HashEmbedding: unknown option(s) {unknown} (TableConfig options: {sorted(known)})")
            config = TableConfig(embedding_dim=config, **{**KEYWORD_DEFAULTS, **options})
        self.config = config
        self.combiner = config.combiner
        self.group = TableGroup([config], device=device, backend=backend)
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
