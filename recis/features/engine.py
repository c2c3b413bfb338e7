"""FeatureEngine: Arrow record batches -> `Batch` (KeyedJaggedTensor, dense tensor, labels, extras,
and the image / fixed-shape tensor features in `tensors`, decoded by recis.features.images and
recis.features.tensors).

The fused engine runs each op once per DAG level for all features (one C++ call), computes
shared sub-chains once, and evaluates elementwise ops on dictionary-encoded columns once per
dictionary (kept across batches while the dictionary does not change). fused=False runs each
feature's ops on its own rows, op by op: the same results, used as a baseline and cross-check.

>>> import pyarrow as pa
>>> engine = FeatureEngine.from_config({"features": [
...     {"name": "user", "kind": "sparse", "column": "user_id", "ops": [{"op": "hash"}, {"op": "mod", "n": 100}]},
...     {"name": "age", "kind": "dense", "column": "age", "ops": [{"op": "fill_missing", "value": 0},
...                                                              {"op": "log1p"}]},
...     {"name": "click", "kind": "label", "column": "click"}]})
>>> batch = engine(pa.record_batch({"user_id": ["u1", None, "u1"], "age": [3, None, 0], "click": [1, 0, 1]}))
>>> batch.sparse.keys(), batch.sparse.lengths().tolist()
(['user'], [1, 0, 1])
>>> [round(x, 4) for x in batch.dense.flatten().tolist()]   # log1p(3), filled null, log1p(0)
[1.3863, 0.0, 0.0]
>>> batch.labels.tolist(), engine.stats()["features"]["user"]["nulls_dropped"]
([1.0, 0.0, 1.0], 1)
"""
import os
from collections import Counter
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Union

import pyarrow as pa
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.features import kernels
from recis.features.arrow import Column, FeatureTypeError, Strings, ingest, unpack_masks
from recis.features.batch import Batch
from recis.features.images import decode_images, row_seeds
from recis.features.ops import FillMissing
from recis.features.plan import Node, Plan
from recis.features.spec import TENSOR_KINDS, FeatureSpec, load_specs, specs_to_config
from recis.features.tensors import fixed_tensor

__all__ = ["FeatureEngine", "MissingColumnError", "NonFiniteValueError"]

_DOMAIN = {"str": "strings (utf8 / binary)", "int": "integers", "float": "floats", "null": "nulls"}


@dataclass
class _Dictionary:
    """The last dictionary seen in a column: kept (with its buffers) to compare the next one to."""

    dictionary: pa.Array
    version: int
    repeats: int  # batches since, with an equal dictionary
    buffers: List[torch.Tensor]


def _buffers(col: Column) -> List[torch.Tensor]:
    """The tensors that hold a dictionary column's values (what a later dictionary is compared to)."""
    v = col.values
    return [v.offsets, v.data] if isinstance(v, Strings) else [v]


class MissingColumnError(LookupError):
    """A column that a feature reads is not in the record batch."""


class NonFiniteValueError(ValueError):
    """A dense or label feature with `nan: error` (the default) met NaN or +/-inf in its column.
    `feature`, `column`, `row` (0-based, within the record batch), `value` and `count` (in this
    batch) say where."""

    def __init__(self, message: str, feature: str, column: str, row: int, value: float, count: int):
        super().__init__(message)
        self.feature, self.column, self.row, self.value, self.count = feature, column, row, value, count


def _non_finite(col: Column) -> Optional[torch.Tensor]:
    """The positions of a float column that hold NaN or +/-inf (nulls excluded), or None if none."""
    vals = col.values
    bad = ~torch.isfinite(vals)
    if not bool(bad.any()):
        return None
    if col.index is not None:
        bad = bad[col.index.long().clamp(0, vals.numel() - 1)]
    if col.mask is not None:
        bad &= col.mask
    return bad if bool(bad.any()) else None


class FeatureEngine:
    """Compiles feature specs once; each call turns a record batch into a `Batch`.

    features: FeatureSpec objects or their dicts. fused=False: the unfused baseline (no fusion,
    no sharing, no dictionary-domain evaluation). An engine keeps per-column caches and counters:
    use one per thread (a pickled copy, as DataLoader workers get, starts afresh).

    Image and tensor features go to `Batch.tensors`; a row they cannot use raises a
    recis.features.RowError naming the feature, column and rows of the record batch. `origin`
    (what a recis.io dataset passes, since `takes_origin` is True) says where each row comes from:
    `origin.epoch` and `origin.locate() -> (file keys, rows in the files)`, one per row; image
    augmentation is seeded from it (without it, from the engine's call count and the batch row)."""

    takes_origin = True  # recis.io datasets call transform(batch, origin=...)

    def __init__(self, features: Sequence[Union[FeatureSpec, dict]], fused: bool = True):
        self.specs = load_specs(list(features))
        self.fused = fused
        self.plan = Plan(self.specs, cse=fused)
        self._sparse = [s for s in self.specs if s.kind == "sparse"]
        self._dense = [s for s in self.specs if s.kind == "dense"]
        self._labels = [s for s in self.specs if s.kind == "label"]
        self._tensors = [s for s in self.specs if s.kind in TENSOR_KINDS]
        # sources to convert: all but the columns that are only passed through or decoded as tensors
        self._convert = {n.id for n in self.plan.sources if n.consumers or any(
            self.plan.outputs[s.name] is n for s in self.specs if s.kind not in ("passthrough",) + TENSOR_KINDS)}
        self._image_sizes: Dict[str, tuple] = {}  # image feature without a size -> the size of its rows
        self._calls = 0
        # source node id -> the dense / label features with nan: error that read it unchanged
        self._nan_checks: Dict[int, List[FeatureSpec]] = {}
        for s in self.specs:
            if s.kind in ("dense", "label") and s.nan == "error":
                node = self.plan.outputs[s.name]
                while node.kind != "source":
                    node = node.inputs[0]
                self._nan_checks.setdefault(node.id, []).append(s)
        self._dicts: Dict[str, _Dictionary] = {}  # column -> its last dictionary
        self._cache: Dict[int, tuple] = {}  # node id -> (version, values, domain, width, fill)
        self.reset_stats()

    def __getstate__(self):  # DataLoader workers get the specs; caches and counters start empty
        return {"specs": self.specs, "fused": self.fused}

    def __setstate__(self, state):
        self.__init__(state["specs"], fused=state["fused"])

    def __repr__(self) -> str:
        kinds = Counter(s.kind for s in self.specs)
        return (f"FeatureEngine({', '.join(f'{n} {k}' for k, n in kinds.items())}, {len(self.plan.nodes)} nodes, "
                f"fused={self.fused})")

    @classmethod
    def from_config(cls, source: Union[str, os.PathLike, dict, list], fused: bool = True) -> "FeatureEngine":
        """From a YAML / JSON file path, a {"features": [...]} dict or a list of feature dicts."""
        return cls(load_specs(source), fused=fused)

    def for_eval(self) -> "FeatureEngine":
        """A new engine with these features but no image augmentation (what evaluation reads;
        its own caches, so it may run on another thread than this one)."""
        specs = [replace(s, image=replace(s.image, augment=None)) if s.kind == "image" and s.image.augment else s
                 for s in self.specs]
        return FeatureEngine(specs, fused=self.fused)

    def to_config(self) -> dict:
        """The config dict that from_config reads back into the same engine."""
        return specs_to_config(self.specs)

    @property
    def columns(self) -> List[str]:
        """The columns the engine reads, in first-use order (project reads onto these)."""
        return list(dict.fromkeys(n.column for n in self.plan.sources))

    @property
    def dense_names(self) -> List[str]:
        return [s.name for s in self._dense]

    def reset_stats(self):
        self._counts = {"batches": 0, "rows": 0, "kernel_calls": 0, "node_evals": 0, "cache_hits": 0}
        self._node_counts: Dict[int, Counter] = {}
        self._feature_counts: Dict[str, Counter] = {s.name: Counter() for s in self.specs}

    def stats(self) -> dict:
        """Counters since the last reset: batches, rows, kernel calls, node evaluations, dictionary
        cache hits, and per feature the nulls seen / filled / dropped, null rows (empty bags),
        non-finite values made nulls by `nan: fill` (nans), ids cut by truncate or a cross cap and
        pad ids added."""
        per = {}
        for s in self.specs:
            c = Counter(self._feature_counts[s.name])
            for n in self.plan.closure(s.name):
                c.update(self._node_counts.get(n.id, {}))
            keys = ("nulls", "null_rows", "nulls_filled", "nulls_dropped", "nans", "truncated", "padded",
                    "cross_capped")
            per[s.name] = {k: int(c.get(k, 0)) for k in keys}
        return dict(self._counts, features=per)

    # ---- running -------------------------------------------------------------------------

    def __call__(self, data: Union[pa.RecordBatch, pa.Table], origin=None) -> Batch:
        if not isinstance(data, (pa.RecordBatch, pa.Table)):
            raise TypeError(f"FeatureEngine takes a pyarrow RecordBatch or Table, got {type(data).__name__}")
        names = set(data.schema.names)
        for col in self.columns:
            if col not in names:
                users = sorted({u for n in self.plan.sources if n.column == col for u in n.users})
                raise MissingColumnError(f"column {col!r} (read by feature {', '.join(map(repr, users))}) is not in "
                                         f"the record batch; it has {sorted(names)}")
        rows = data.num_rows
        self._calls += 1
        tensors = self._tensor_outputs(data, rows, origin)  # first: a bad row fails before any other work
        values = self._run_fused(data, rows) if self.fused else self._run_unfused(data, rows)
        self._counts["batches"] += 1
        self._counts["rows"] += rows
        return self._assemble(data, values, rows, tensors)

    def _tensor_outputs(self, data, rows: int, origin) -> Dict[str, torch.Tensor]:
        """Image and tensor features: float32 [rows, C, H, W] / [rows, *shape]."""
        out, seeds = {}, None
        for s in self._tensors:
            arr = self._arrow(data, s.column)
            if s.kind == "tensor":
                out[s.name] = fixed_tensor(arr, s.shape, s.name, s.column)
                continue
            if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
                raise FeatureTypeError(f"image feature {s.name!r} (column {s.column!r}): expects encoded image bytes "
                                       f"(binary or large_binary), found Arrow type {arr.type}")
            aug = s.image.augment
            if seeds is None and aug is not None and aug.active:
                if origin is not None:
                    keys, where = origin.locate()
                    seeds = row_seeds(origin.epoch, keys, where)
                else:
                    seeds = [[self._calls - 1, r] for r in range(rows)]
            img = decode_images(arr.to_pylist(), s.image, s.name, s.column, seeds, self._image_sizes.get(s.name))
            if s.image.size is None and rows:
                self._image_sizes.setdefault(s.name, tuple(img.shape[2:]))
            out[s.name] = img
        return out

    def _arrow(self, data, column: str) -> pa.Array:
        arr = data.column(column)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
        return arr

    def _source(self, node: Node, data, rows: int) -> Column:
        arr = self._arrow(data, node.column)
        try:
            col = ingest(arr, decode=not self.fused, lazy_mask=True)
        except FeatureTypeError as e:
            raise FeatureTypeError(f"{self._where(node)}: {e}") from None
        col.arrow_type = arr.type
        counts = self._node_counts.setdefault(node.id, Counter())
        counts["nulls"] += col.nulls
        counts["null_rows"] += col.null_rows
        return col

    def _non_finite_values(self, node: Node, col: Column) -> None:
        """A float source read by dense / label features: non-finite values become nulls
        (nan: fill, its own source node) or raise (nan: error); nan: keep leaves them."""
        if col.domain != "float" or not (node.nan_to_null or node.id in self._nan_checks):
            return
        bad = _non_finite(col)
        if bad is None:
            return
        count = int(bad.sum())
        self._node_counts.setdefault(node.id, Counter())["nans"] += count
        if node.nan_to_null:
            col.mask = ~bad if col.mask is None else col.mask & ~bad
            col.nulls += count
            return
        spec = self._nan_checks[node.id][0]
        pos = int(bad.nonzero()[0, 0])
        value = float(col.values[col.index[pos].long()] if col.index is not None else col.values[pos])
        row = pos if col.splits is None else int(torch.searchsorted(col.splits, pos, right=True)) - 1
        plural = "s" if count != 1 else ""
        raise NonFiniteValueError(
            f"{spec.kind} feature {spec.name!r} (column {node.column!r}): {value} at row {row} of the record batch "
            f"(0-based; {count} non-finite value{plural} in this batch). Set nan: fill on the feature to give NaN "
            f"and +/-inf its fill_missing value, or nan: keep to pass them on",
            spec.name, node.column, row, value, count)

    def _dictionary_versions(self, data, values: Dict[int, Column]) -> Dict[int, Optional[tuple]]:
        """Source node -> cache version: the same while the column's dictionary does not change
        (every column's dictionary is compared with its last one, all in one call).

        A string dictionary larger than the batch is hashed per position (through the index)
        the first time it is seen, and once for all later batches when it comes back."""
        found = []  # (node, column, its dictionary, what was last seen in that column)
        for n in self.plan.sources:
            col = values.get(n.id)
            t = col.arrow_type if col is not None else None
            if t is not None and (pa.types.is_dictionary(t) or (hasattr(t, "value_type")
                                                                and pa.types.is_dictionary(t.value_type))):
                arr = self._arrow(data, n.column)
                d = arr.dictionary if pa.types.is_dictionary(t) else arr.values.dictionary
                found.append((n, col, d, self._dicts.get(n.column)))
        same = [last is not None and last.dictionary is d for _, _, d, last in found]
        check = [k for k, (_, col, d, last) in enumerate(found) if last is not None and not same[k]
                 and len(last.dictionary) == len(d) and len(last.buffers) == len(_buffers(col))]
        if check:
            equal = kernels.same_bytes([b for k in check for b in found[k][3].buffers],
                                       [b for k in check for b in _buffers(found[k][1])])
            self._counts["kernel_calls"] += 1
            i = 0
            for k in check:
                m = len(found[k][3].buffers)
                same[k], i = all(equal[i:i + m]), i + m
        versions = {}
        for (n, col, d, last), unchanged in zip(found, same):
            if unchanged:
                last.repeats += 1
            else:
                last = self._dicts[n.column] = _Dictionary(d, last.version + 1 if last else 0, 0, _buffers(col))
            if last.repeats == 0 and col.domain == "str" and len(d) > col.index.numel():
                col.per_position = True
                versions[n.id] = None
            else:
                versions[n.id] = (n.column, last.version)
        return versions

    def _where(self, node: Node) -> str:
        root = node
        while root.kind == "op":
            root = root.inputs[0]
        src = f"column {root.column!r}" if root.kind == "source" else "a cross"
        return f"feature {node.users[0]!r} ({src})"

    def _check_domain(self, node: Node, col: Column):
        if col.domain not in node.op.reads:
            expected = " or ".join(_DOMAIN[d] for d in sorted(node.op.reads) if d != "null")
            raise FeatureTypeError(f"{self._where(node)}: op '{node.op.name}' expects {expected}, found Arrow type "
                                   f"{col.arrow_type}")

    def _run_fused(self, data, rows: int) -> Dict[int, Column]:
        plan, values = self.plan, {}
        for n in plan.sources:
            if n.id in self._convert:
                values[n.id] = self._source(n, data, rows)
        unpack_masks(values.values())
        for n in plan.sources:
            if n.id in values:
                self._non_finite_values(n, values[n.id])
        versions = self._dictionary_versions(data, values)
        for n in plan.nodes:
            if n.kind != "source":
                versions[n.id] = versions[n.inputs[0].id] if n.elementwise else None
            elif n.id not in versions:
                versions[n.id] = None
        hit = {n.id for n in plan.nodes
               if n.cacheable and versions[n.id] is not None and self._cache.get(n.id, (None,))[0] == versions[n.id]}
        needed = set()
        for n in reversed(plan.nodes):
            if n.is_output or n.id in needed:
                needed.add(n.id)
                if n.id not in hit:
                    needed.update(i.id for i in n.inputs)
        for level in plan.levels:
            groups: Dict[str, List[Node]] = {}
            for n in level:
                if n.id in hit:
                    _, vals, domain, width, fill = self._cache[n.id]
                    values[n.id] = values[n.root.id].evolve(values=vals, domain=domain, width=width, fill=fill)
                    self._counts["cache_hits"] += 1
                elif n.id in needed:
                    groups.setdefault(n.group, []).append(n)
            for group in groups.values():
                self._eval(group, values, rows)
                for n in group:
                    if n.cacheable and versions[n.id] is not None:
                        c = values[n.id]
                        self._cache[n.id] = (versions[n.id], c.values, c.domain, c.width, c.fill)
        return values

    def _run_unfused(self, data, rows: int) -> Dict[int, Column]:
        values = {}
        for s in self.specs:
            for n in self.plan.closure(s.name):
                if n.id in values:
                    continue
                if n.kind == "source":
                    if n.id in self._convert:
                        values[n.id] = self._source(n, data, rows)
                        unpack_masks([values[n.id]])
                        self._non_finite_values(n, values[n.id])
                else:
                    self._eval([n], values, rows)
        return values

    def _eval(self, nodes: List[Node], values: Dict[int, Column], rows: int):
        """Evaluates nodes of one group (all the same op kind) with one kernel call."""
        self._counts["node_evals"] += len(nodes)
        kind = nodes[0].kind
        if kind == "cross":
            groups = []
            for n in nodes:
                cols = [values[i.id] for i in n.inputs]
                for i, c in zip(n.inputs, cols):
                    if c.domain not in ("int", "null"):
                        raise FeatureTypeError(f"{self._where(n)}: cross input {i.label()!r} gives Arrow type "
                                               f"{c.arrow_type}; crosses need integer ids (add a hash)")
                    self._count_materialize(n, c)
                groups.append(cols)
            self._counts["kernel_calls"] += 1
            outs, capped = kernels.cross(groups, [n.cap for n in nodes], [n.seed for n in nodes], rows,
                                         [g[0] for g in groups])
            for n, out, k in zip(nodes, outs, capped.tolist()):
                values[n.id] = out
                self._node_counts.setdefault(n.id, Counter())["cross_capped"] += k
            return
        cols = [values[n.inputs[0].id] for n in nodes]
        for n, c in zip(nodes, cols):
            self._check_domain(n, c)
        if isinstance(nodes[0].op, FillMissing):
            for n, c in zip(nodes, cols):
                try:
                    values[n.id] = kernels.fill(n.op, c)
                except FeatureTypeError as e:
                    raise FeatureTypeError(f"{self._where(n)}: {e}") from None
            return
        if nodes[0].op.structural:
            for n, c in zip(nodes, cols):
                self._count_materialize(n, c)
            outs, counters = kernels.truncate([n.op for n in nodes], cols, rows)
            for n, out, (cut, pad) in zip(nodes, outs, counters.tolist()):
                values[n.id] = out
                counts = self._node_counts.setdefault(n.id, Counter())
                counts["truncated"] += cut
                counts["padded"] += pad
        else:
            outs = kernels.run_ops([n.op for n in nodes], cols)
            for n, out in zip(nodes, outs):
                values[n.id] = out
        self._counts["kernel_calls"] += 1 + (nodes[0].group == "hash" and len({c.domain == "str" for c in cols}) > 1)

    def _count_materialize(self, node: Node, col: Column, feature: Optional[str] = None):
        if col.mask is None or col.nulls == 0:
            return
        counts = self._feature_counts[feature] if feature else self._node_counts.setdefault(node.id, Counter())
        counts["nulls_filled" if col.fill is not None else "nulls_dropped"] += col.nulls

    # ---- assembly ------------------------------------------------------------------------

    def _outputs(self, specs: Sequence[FeatureSpec], values: Dict[int, Column], dense: bool) -> List[Column]:
        cols = []
        for s in specs:
            node = self.plan.outputs[s.name]
            col = values[node.id]
            where = f"{s.kind} feature {s.name!r}" + (f" (column {s.column!r})" if s.column else "")
            if dense:
                if col.domain not in ("int", "float") or col.splits is not None:
                    raise FeatureTypeError(f"{where}: expects one number per row, found Arrow type {col.arrow_type}")
                if col.mask is not None and col.fill is None and col.nulls:
                    raise ValueError(f"{where}: {col.nulls} null values in this batch and no fill_missing op")
            elif col.domain not in ("int", "null"):
                raise FeatureTypeError(f"{where}: sparse ids must be integers, found Arrow type {col.arrow_type}; "
                                       "add a hash op")
            self._count_materialize(node, col, s.name)
            cols.append(col)
        return cols

    def _sparse_kjt(self, cols: List[Column], rows: int) -> KeyedJaggedTensor:
        keys = [s.name for s in self._sparse]
        if self.fused or not cols:
            self._counts["kernel_calls"] += bool(cols)
            values, lengths, offsets = kernels.assemble_sparse(cols, rows) if cols else (
                torch.empty(0, dtype=torch.int64),) * 2 + (torch.zeros(1, dtype=torch.int64),)
        else:
            self._counts["kernel_calls"] += len(cols)
            parts = [kernels.assemble_sparse([c], rows) for c in cols]
            values = torch.cat([p[0] for p in parts])
            lengths = torch.cat([p[1] for p in parts])
            offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
            torch.cumsum(lengths, 0, out=offsets[1:])
        return KeyedJaggedTensor(keys, values, lengths=lengths, offsets=offsets, stride=rows)

    def _dense_matrix(self, cols: List[Column], rows: int) -> torch.Tensor:
        if not cols:
            return torch.empty(rows, 0)
        if self.fused:
            self._counts["kernel_calls"] += 1
            return kernels.assemble_dense(cols, rows)
        self._counts["kernel_calls"] += len(cols)
        return torch.cat([kernels.assemble_dense([c], rows) for c in cols], dim=1)

    def _assemble(self, data, values: Dict[int, Column], rows: int, tensors: Dict[str, torch.Tensor]) -> Batch:
        sparse = self._sparse_kjt(self._outputs(self._sparse, values, False), rows)
        dense = self._dense_matrix(self._outputs(self._dense, values, True), rows)
        labels = None
        if self._labels:
            mat = self._dense_matrix(self._outputs(self._labels, values, True), rows)
            labels = mat[:, 0].contiguous() if len(self._labels) == 1 else {
                s.name: mat[:, i].contiguous() for i, s in enumerate(self._labels)}
        extras = {s.name: self._arrow(data, s.column) for s in self.specs if s.kind == "passthrough"}
        return Batch(sparse=sparse, dense=dense, dense_names=self.dense_names, labels=labels, extras=extras, size=rows,
                     tensors=tensors)
