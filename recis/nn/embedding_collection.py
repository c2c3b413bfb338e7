"""EmbeddingCollection: many hash tables behind one KeyedJaggedTensor.

Tables with the same config (dim, combiner, initializer, admission, eviction, capacity, missing,
dtype) share one physical TableGroup and one fused kernel call per step; each keeps its own
64-bit id space and seed.

>>> from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
>>> ec = EmbeddingCollection([TableConfig("user", 8, ["user_id"]), TableConfig("item", 8, ["item_id"])])
>>> kjt = KeyedJaggedTensor.from_lengths_sync(["user_id", "item_id"], torch.tensor([5, 6, 7, 7]),
...                                           torch.tensor([1, 1, 1, 1]))
>>> kt = ec(kjt)
>>> kt.keys(), tuple(kt.values().shape), len(ec.groups)
(['user_id', 'item_id'], (2, 16), 1)
"""
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from recis._ops import COMBINERS
from recis.nn.functional import check_jagged
from recis.nn.hash_table import HashTable, TableGroup
from recis.nn.table_config import TableConfig  # noqa: F401  (TableConfig's home; re-exported here)
from recis.nn.table_state import groups_repr, load_groups, move_groups, save_groups


# What an EmbeddingCollection does with input keys that no table serves.
EXTRA_KEYS = ("error", "ignore")


class EmbeddingCollection(nn.Module):
    """Takes a torchrec KeyedJaggedTensor; returns a torchrec KeyedTensor of pooled features
    (or, with `output="dict"` or unpooled tables, a dict of tensors / JaggedTensors).
    Output keys follow the table groups, then the tables and features in config order.
    A key of the input that no table serves is an error (a misspelt feature would otherwise train
    nothing, silently); `extra_keys="ignore"` skips such keys, for a collection that serves a
    subset of a batch's features, and a list of names skips just those keys. The tables live on
    `device` and move with the module (`.to(device)`, `.cuda()`); `backend` picks C++ or Triton
    kernels (TableGroup)."""

    def __init__(self, tables: Sequence[TableConfig], output: str = "keyed", device=None,
                 backend: Optional[str] = None, extra_keys: Union[str, Sequence[str]] = "error"):
        super().__init__()
        if output not in ("keyed", "dict"):
            raise ValueError(f"output must be 'keyed' or 'dict', got {output!r}")
        if isinstance(extra_keys, str) and extra_keys not in EXTRA_KEYS:
            raise ValueError(f"extra_keys must be one of {EXTRA_KEYS} or a list of key names, got {extra_keys!r}")
        if not isinstance(extra_keys, str):
            extra_keys = tuple(extra_keys)
            if not all(isinstance(k, str) for k in extra_keys):
                raise TypeError(f"extra_keys must be one of {EXTRA_KEYS} or a list of key names, got {extra_keys!r}")
        self.extra_keys = extra_keys
        if not tables:
            raise ValueError("EmbeddingCollection needs at least one TableConfig")
        names = [t.name for t in tables]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate table names in {names}")
        owner: Dict[str, str] = {}
        for t in tables:
            for f in t.feature_names:
                if f in owner:
                    raise ValueError(f"feature {f!r} is claimed by tables {owner[f]!r} and {t.name!r}")
                owner[f] = t.name
        by_key: Dict[tuple, List[TableConfig]] = {}
        for t in tables:
            by_key.setdefault(t.group_key(), []).append(t)
        self.output = output
        self.configs = list(tables)
        self.groups: List[TableGroup] = []
        self._plans = []  # per group: (pooled, [(feature, ns, column)], out_cols)
        for configs in by_key.values():
            c0 = configs[0]
            group = TableGroup(configs, device=device, backend=backend)
            feats = [(f, ns) for ns, c in enumerate(configs) for f in c.feature_names]
            cols = [(f, ns, i * c0.embedding_dim) for i, (f, ns) in enumerate(feats)]
            self.groups.append(group)
            self._plans.append((c0.combiner, cols, len(feats) * c0.embedding_dim))
        if output == "keyed" and any(comb is None for comb, _, _ in self._plans):
            raise ValueError("output='keyed' needs pooled tables; use output='dict' with combiner=None tables")
        self._tables = {t.name: t for g in self.groups for t in g.tables}
        served = set(self.feature_names())
        if not isinstance(extra_keys, str) and served.intersection(extra_keys):
            raise ValueError(f"extra_keys lists {sorted(served.intersection(extra_keys))}, which tables serve")

    def tables(self) -> Dict[str, HashTable]:
        """Logical tables by name."""
        return dict(self._tables)

    def feature_names(self) -> List[str]:
        return [f for _, cols, _ in self._plans for f, _, _ in cols]

    def group_layouts(self) -> List[tuple]:
        """Per table group, in output order: (combiner, [(feature, namespace, first output column)],
        output columns). How a sharded wrapper (recis.distributed) lays out the same output."""
        return list(self._plans)

    def _checked_input(self, features, device: torch.device):
        """(keys, key -> position, batch, offsets, int64 values, weights) of a checked KJT."""
        what = type(self).__name__
        keys = features.keys()
        if features.variable_stride_per_key():
            raise ValueError(f"{what} does not take variable-batch (VBE) KeyedJaggedTensors")
        index = {k: i for i, k in enumerate(keys)}
        served = self.feature_names()
        absent = [f for f in served if f not in index]
        if absent:
            raise KeyError(f"features {absent} are configured but missing from the KeyedJaggedTensor (keys: {keys})")
        if self.extra_keys != "ignore" and len(index) > len(served):
            known = set(served).union(() if self.extra_keys == "error" else self.extra_keys)
            extra = [k for k in keys if k not in known]
            if extra:
                raise KeyError(f"{what}: the KeyedJaggedTensor has keys {extra} that no table serves (tables serve "
                               f"{served}); fix the feature names, or pass extra_keys='ignore' (or a list of the "
                               "keys to skip) to the EmbeddingCollection")
        offsets, weights = features.offsets(), features.weights_or_none()
        values = check_jagged(features.values(), offsets, weights, device, what)
        return keys, index, features.stride(), offsets, values, weights

    def forward(self, features):
        keys, index, batch, offsets, values, weights = self._checked_input(features, self.groups[0].device)
        pooled, unpooled = [], {}
        for group, (combiner, cols, out_cols) in zip(self.groups, self._plans):
            feature_ns, col_offsets = [-1] * len(keys), [0] * len(keys)
            for f, ns, col in cols:
                feature_ns[index[f]], col_offsets[index[f]] = ns, col
            out = group.lookup(values, offsets, weights, feature_ns, batch, col_offsets, out_cols,
                               COMBINERS[combiner], self.training)
            if combiner is None:
                for f, _, _ in cols:
                    i = index[f]
                    unpooled[f] = (out, int(offsets[i * batch]), int(offsets[(i + 1) * batch]), i)
            else:
                pooled.append((out, [f for f, _, _ in cols], group.embedding_dim))
        return self._assemble(features, batch, pooled, unpooled)

    def _assemble(self, features, batch, pooled, unpooled):
        from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedTensor

        if self.output == "keyed":
            values = pooled[0][0] if len(pooled) == 1 else torch.cat([p[0] for p in pooled], dim=1)
            keys = [f for _, fs, _ in pooled for f in fs]
            lengths = [d for _, fs, d in pooled for _ in fs]
            return KeyedTensor(keys=keys, length_per_key=lengths, values=values, key_dim=1)
        result = {}
        for out, fs, dim in pooled:
            for j, f in enumerate(fs):
                result[f] = out[:, j * dim:(j + 1) * dim]
        lengths = features.lengths()
        for f, (out, start, end, i) in unpooled.items():
            result[f] = JaggedTensor(values=out[start:end], lengths=lengths[i * batch:(i + 1) * batch])
        return {f: result[f] for f in self.feature_names()}

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        move_groups(self.groups, fn)
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        save_groups(self.groups, destination, prefix)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        heads = tuple(f"{prefix}{name}." for name in self._tables)
        load_groups(self.groups, state_dict, prefix, strict, missing_keys, unexpected_keys, error_msgs)
        rest = {k: v for k, v in state_dict.items() if not k.startswith(heads)}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"output={self.output!r}, groups=[{groups_repr(self.groups)}]"

    # ---- torchrec's EmbeddingBagCollection interface (recis.nn.torchrec_compat), so that the
    # collection stands in for one in torchrec's models (DLRM, DLRM_DCN, DLRM_Projection, SimpleDeepFMNN).
    def embedding_bag_configs(self):
        """torchrec EmbeddingBagConfigs of the tables, in output order: the KeyedTensor's keys are
        their feature names in order. Needs output='keyed'. See recis.nn.torchrec_compat."""
        from recis.nn.torchrec_compat import embedding_bag_configs

        return embedding_bag_configs(self)

    def is_weighted(self) -> bool:
        """True: a KeyedJaggedTensor's weights, when it has them, scale each id's row before pooling
        (an unweighted one pools with weight 1), like EmbeddingBagCollection(is_weighted=True)."""
        return True

    @property
    def device(self) -> torch.device:
        """Where the tables live (all of them: they move together)."""
        return self.groups[0].device
