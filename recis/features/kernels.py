"""Runs the feature ops on lists of `Column`s: one C++ call per op for all the columns given.

Pending fill values ride along as extra items of the same call, so a fill is transformed by the
same kernel as the values it stands in for.

>>> import pyarrow as pa
>>> hex(xxh64(["abc"])[0].item() & (2**64 - 1))   # published XXH64 test vector
'0x44bc2cf5ad770999'
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import torch

from recis import _ops  # noqa: F401  (registers torch.ops.recis.feat_*)
from recis.features.arrow import Column, FeatureTypeError, Strings, ingest
from recis.features.ops import Bucketize, Clip, FillMissing, Hash, Log1p, Mod, MultiHash, Normalize, Op, Truncate

__all__ = ["xxh64", "run_ops", "fill", "materialize", "assemble_sparse", "assemble_dense", "truncate", "cross",
           "same_bytes"]

ops = torch.ops.recis


def _signed(seed: int) -> int:
    """A seed in [0, 2**64) as the int64 the op schema takes (same 64 bits)."""
    return seed - 2 ** 64 if seed >= 2 ** 63 else seed


def _with_fills(cols: Sequence[Column], items: List) -> Tuple[List, List[int]]:
    """items + the columns' pending fills; returns (all items, position of each column's fill or -1)."""
    where = []
    for c in cols:
        where.append(len(items) if c.fill is not None else -1)
        if c.fill is not None:
            items.append(c.fill)
    return items, where


def _hash(op_list: Sequence[Op], cols: Sequence[Column]) -> List[Column]:
    seeds = [_signed(o.seed) for o in op_list]
    ks = [o.num_hashes if isinstance(o, MultiHash) else 1 for o in op_list]
    str_idx = [i for i, c in enumerate(cols) if c.domain == "str"]
    int_idx = [i for i, c in enumerate(cols) if c.domain != "str"]
    out: List[Optional[Column]] = [None] * len(cols)
    for group, is_str in ((str_idx, True), (int_idx, False)):
        if not group:
            continue
        gcols = [cols[i] for i in group]
        through = [is_str and c.index is not None and c.per_position for c in gcols]
        items, fill_at = _with_fills(gcols, [c.values for c in gcols])
        g_seeds = [seeds[i] for i in group] + [seeds[i] for i, c in zip(group, gcols) if c.fill is not None]
        g_ks = [ks[i] for i in group] + [ks[i] for i, c in zip(group, gcols) if c.fill is not None]
        if is_str:
            idx = [c.index if t else None for c, t in zip(gcols, through)] + [None] * (len(items) - len(gcols))
            mask = [c.mask if t else None for c, t in zip(gcols, through)] + [None] * (len(items) - len(gcols))
            res = ops.feat_hash_str([s.offsets for s in items], [s.data for s in items], idx, mask, g_seeds, g_ks)
        else:
            res = ops.feat_hash_int(items, g_seeds, g_ks)
        for j, (i, c) in enumerate(zip(group, gcols)):
            new = c.with_values(res[j], "int", c.width * ks[i], res[fill_at[j]] if fill_at[j] >= 0 else None)
            out[i] = new.evolve(index=None, per_position=False) if through[j] else new
    return out


def _map(kernel, domain: Optional[str], args: Sequence[list]):
    """Runner for the one-value-in, one-value-out kernels; args are per-column parameter lists."""
    def run(op_list, cols):
        items, fill_at = _with_fills(cols, [c.values for c in cols])
        params = args(op_list)  # per column; a fill takes its column's parameters
        res = kernel(items, *[a + [a[i] for i, c in enumerate(cols) if c.fill is not None] for a in params])
        return [c.with_values(res[j], domain or c.domain, c.width, res[fill_at[j]] if fill_at[j] >= 0 else None)
                for j, c in enumerate(cols)]
    return run


def _f64(xs):
    return [float(x) for x in xs]


_RUNNERS = {
    Hash: _hash,
    MultiHash: _hash,
    Mod: _map(ops.feat_mod, "int", lambda o: [[x.n for x in o]]),
    Bucketize: _map(ops.feat_bucketize, "int",
                    lambda o: [[torch.tensor(x.boundaries, dtype=torch.float64) for x in o]]),
    Log1p: _map(ops.feat_log1p, "float", lambda o: [[0 if x.negative == "sign" else 1 for x in o]]),
    Normalize: _map(ops.feat_normalize, "float", lambda o: [_f64(x.mean for x in o), _f64(x.std for x in o)]),
    Clip: _map(ops.feat_clip, "float", lambda o: [_f64(-np.inf if x.min is None else x.min for x in o),
                                                  _f64(np.inf if x.max is None else x.max for x in o)]),
}


def run_ops(op_list: Sequence[Op], cols: Sequence[Column]) -> List[Column]:
    """Applies op_list[i] (all of one type) to cols[i] in one kernel call per value domain."""
    kind = type(op_list[0])
    if kind is FillMissing:
        return [fill(o, c) for o, c in zip(op_list, cols)]
    if kind is MultiHash or kind is Hash:
        return _RUNNERS[Hash](op_list, cols)
    return _RUNNERS[kind](op_list, cols)


def fill(op: FillMissing, col: Column) -> Column:
    """Sets the value that the column's null positions take (no kernel: it applies at assembly)."""
    v = op.value
    domain = op.out_domain(col.domain)
    if (domain == "str") != isinstance(v, str) or (domain == "int" and not isinstance(v, int)):
        found = col.arrow_type if col.arrow_type is not None else domain
        raise FeatureTypeError(f"fill_missing value {v!r} ({type(v).__name__}) does not fit a {domain} column "
                               f"(Arrow type {found})")
    if col.mask is None or col.fill is not None:
        return col
    if domain == "str":
        data = torch.frombuffer(bytearray(v.encode()) or bytearray(1), dtype=torch.uint8)
        value = Strings(torch.tensor([0, len(v.encode())], dtype=torch.int32), data)
    else:
        value = torch.tensor([v] * col.width, dtype=torch.int64 if domain == "int" else torch.float64)
    if col.domain == "null":  # an all-null column takes the fill's type
        empty = Strings(torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.uint8)) if domain == "str" \
            else value[:0]
        return col.evolve(domain=domain, values=empty, fill=value)
    return col.evolve(fill=value)


def _sparse_args(cols: Sequence[Column]):
    for c in cols:
        if c.domain not in ("int", "null"):
            raise FeatureTypeError(f"sparse ids must be integers, found {c.domain} values (Arrow type {c.arrow_type})")
    values = [c.values if c.values.dtype == torch.int64 else c.values.to(torch.int64) for c in cols]
    fills = [None if c.fill is None else c.fill.to(torch.int64) for c in cols]
    return (values, [c.width for c in cols], [c.index for c in cols], [c.mask for c in cols], fills,
            [c.splits for c in cols])


def assemble_sparse(cols: Sequence[Column], rows: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, lengths, offsets) of a KeyedJaggedTensor holding the columns in order."""
    return ops.feat_assemble_sparse(*_sparse_args(cols), rows)


def _split(values: torch.Tensor, offsets: torch.Tensor, cols: Sequence[Column], rows: int) -> List[Column]:
    return [Column(rows=rows, domain="int", values=values, splits=offsets[f * rows:(f + 1) * rows + 1],
                   arrow_type=c.arrow_type) for f, c in enumerate(cols)]


def materialize(cols: Sequence[Column], rows: int) -> List[Column]:
    """The columns as plain id lists: index applied, nulls filled or dropped, widths flattened."""
    todo = [i for i, c in enumerate(cols) if not c.materialized]
    out = list(cols)
    if todo:
        values, _, offsets = assemble_sparse([cols[i] for i in todo], rows)
        for i, c in zip(todo, _split(values, offsets, [cols[i] for i in todo], rows)):
            out[i] = c
    return out


def assemble_dense(cols: Sequence[Column], rows: int) -> torch.Tensor:
    """float32 [rows, len(cols)]; every null must have a fill by now."""
    for c in cols:
        if c.domain not in ("int", "float"):
            raise FeatureTypeError(f"dense values must be numbers, found {c.domain} values (Arrow type {c.arrow_type})")
        if c.splits is not None or c.width != 1:
            raise FeatureTypeError(f"dense values need one value per row, found a list column (Arrow type {c.arrow_type})")
    fills = [None if c.fill is None else c.fill.to(torch.float64)[:1] for c in cols]
    return ops.feat_assemble_dense([c.values for c in cols], [c.index for c in cols], [c.mask for c in cols], fills,
                                   rows)


def truncate(op_list: Sequence[Truncate], cols: Sequence[Column], rows: int) -> Tuple[List[Column], torch.Tensor]:
    """Truncated / padded columns and counters [len(cols), 2] (ids cut, pad ids added)."""
    cols = materialize(cols, rows)
    values, _, offsets, counters = ops.feat_truncate(
        [c.values for c in cols], [c.splits for c in cols], [o.max_len for o in op_list],
        [int(o.keep == "last") for o in op_list], [o.pad_value or 0 for o in op_list],
        [int(o.pad_value is not None) for o in op_list], rows)
    return _split(values, offsets, cols, rows), counters


def cross(groups: Sequence[Sequence[Column]], caps: Sequence[int], seeds: Sequence[int], rows: int,
          like: Sequence[Column]) -> Tuple[List[Column], torch.Tensor]:
    """Crossed id columns (one per group of inputs) and the ids each cross cut at its cap."""
    flat = materialize([c for g in groups for c in g], rows)
    values, _, offsets, capped = ops.feat_cross([c.values for c in flat], [c.splits for c in flat],
                                                [len(g) for g in groups], list(caps), [_signed(s) for s in seeds], rows)
    return _split(values, offsets, like, rows), capped[:, 0]


def xxh64(values, seed: int = 0) -> torch.Tensor:
    """XXH64 (int64) of each string / bytes value or integer (its 8 little-endian bytes).

    `values`: a pyarrow array (nulls raise), a list of str / bytes, or an integer numpy array or
    tensor. The hash of an integer is that of `int.to_bytes(8, 'little', signed=True)`."""
    if isinstance(values, torch.Tensor):
        values = values.numpy()
    if isinstance(values, np.ndarray) or (isinstance(values, (list, tuple)) and values and isinstance(values[0], int)):
        values = pa.array(np.asarray(values, dtype=np.int64))
    elif not isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pa.array(list(values), type=pa.binary())
    if values.null_count:
        raise ValueError(f"xxh64: {values.null_count} null values; fill them first")
    col = ingest(values, decode=True)
    if col.domain not in ("str", "int"):
        raise FeatureTypeError(f"xxh64 hashes strings or integers, got Arrow type {values.type}")
    col = col.evolve(per_position=col.index is not None)
    out = run_ops([Hash(seed)], [col])[0]
    return out.values if out.index is None else out.values[out.index.long()]


def same_bytes(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> List[bool]:
    """Whether a[i] and b[i] hold the same bytes, for all pairs in one call."""
    return ops.feat_same_bytes(list(a), list(b)).tolist()
