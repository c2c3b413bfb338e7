"""Arrow columns to torch tensors without per-row Python loops.

- Scalar numeric, boolean and temporal columns become 1-D tensors; `fixed_size_list<number, d>`
  becomes an `(n, d)` tensor. Zero-copy (the tensor shares the Arrow buffer) when the column has
  no nulls, a single chunk and a numeric type numpy can view; otherwise one copy.
- `list<T>` / `large_list<T>` become a `Jagged(values, offsets)`: row i is
  `values[offsets[i]:offsets[i + 1]]`, offsets are int64 and start at 0 even for a sliced array.
  Numeric child values are a tensor that shares the child buffer (zero-copy) when they have no
  nulls; string/binary child values stay a (zero-copy) Arrow array.
- Nulls are explicit: a null scalar becomes `fill_null` (default 0) and `validity_mask` gives
  the rows that were valid; a null list becomes an empty row; null values inside lists become
  `fill_null` (numbers) or stay null (strings, unless a string `fill_null` is given).

Zero-copy tensors alias read-only Arrow memory: do not write into them in place (`.clone()` first).

>>> import pyarrow as pa
>>> column_to_tensor(pa.array([1, None, 3]), fill_null=-1)
tensor([ 1, -1,  3])
>>> validity_mask(pa.array([1, None, 3]))
tensor([ True, False,  True])
>>> values, offsets = list_column_to_jagged(pa.array([[1, 2], None, [3], []]).slice(1))
>>> values, offsets
(tensor([3]), tensor([0, 0, 1, 1]))
>>> list_column_to_jagged(pa.array([["a", "b"], ["c"]])).offsets
tensor([0, 2, 3])
"""
import threading
import warnings
from typing import Dict, NamedTuple, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from recis.io.schema import type_family

ArrayLike = Union[pa.Array, pa.ChunkedArray]


class Jagged(NamedTuple):
    """A jagged column: row i is values[offsets[i]:offsets[i + 1]]; offsets is int64, length n + 1."""

    values: Union[torch.Tensor, pa.Array]
    offsets: torch.Tensor


_warned = False
_warn_lock = threading.Lock()


def _from_numpy(arr: np.ndarray) -> torch.Tensor:
    """torch.from_numpy that shares read-only Arrow memory. torch warns once per process about
    non-writable arrays; that warning is expected here (documented above), so the first call
    absorbs it."""
    global _warned
    if _warned or arr.flags.writeable:
        return torch.from_numpy(arr)
    with _warn_lock:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            out = torch.from_numpy(arr)
        _warned = True
    return out


def _single(array: ArrayLike) -> pa.Array:
    if isinstance(array, pa.ChunkedArray):
        return array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()
    if isinstance(array, pa.Array):
        return array
    raise TypeError(f"expected a pyarrow Array or ChunkedArray, got {type(array).__name__}")


def _is_list(t: pa.DataType) -> bool:
    return type_family(t) == "list"


def _has_tensor_form(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)
            or pa.types.is_fixed_size_list(t) or pa.types.is_timestamp(t) or pa.types.is_date(t)
            or pa.types.is_time(t) or pa.types.is_duration(t))


def _physical(arr: pa.Array) -> pa.Array:
    """Temporal types as their integer storage, dictionaries decoded."""
    t = arr.type
    if pa.types.is_dictionary(t):
        return _physical(arr.dictionary_decode())
    if pa.types.is_timestamp(t) or pa.types.is_date64(t) or pa.types.is_duration(t) or pa.types.is_time64(t):
        return arr.view(pa.int64())
    if pa.types.is_date32(t) or pa.types.is_time32(t):
        return arr.view(pa.int32())
    return arr


def validity_mask(array: ArrayLike) -> torch.Tensor:
    """A bool tensor, True where the row is not null."""
    arr = _single(array)
    if arr.null_count == 0:
        return torch.ones(len(arr), dtype=torch.bool)
    return torch.from_numpy(arr.is_valid().to_numpy(zero_copy_only=False))


def column_to_tensor(array: ArrayLike, *, dtype: Optional[torch.dtype] = None, fill_null=0) -> torch.Tensor:
    """A scalar (or fixed_size_list) column as a tensor; nulls become `fill_null`.

    `dtype` converts the result (one copy unless it already matches); a column of Arrow type
    null becomes `fill_null` in `dtype` (default torch's default dtype)."""
    arr = _physical(_single(array))
    t = arr.type
    if pa.types.is_null(t):
        return torch.full((len(arr),), fill_null, dtype=dtype or torch.get_default_dtype())
    if pa.types.is_fixed_size_list(t):
        return _fixed_size_list_to_tensor(arr, dtype=dtype, fill_null=fill_null)
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        hint = " (use list_column_to_jagged)" if _is_list(t) else ""
        raise TypeError(f"column of Arrow type {t} has no dense tensor form{hint}")
    if arr.null_count:
        arr = pc.fill_null(arr, pa.scalar(fill_null).cast(t))
    if pa.types.is_boolean(t):
        out = torch.from_numpy(arr.to_numpy(zero_copy_only=False))
    else:
        out = _from_numpy(arr.to_numpy(zero_copy_only=True))
    return out if dtype is None or out.dtype == dtype else out.to(dtype)


def _fixed_size_list_to_tensor(arr: pa.Array, *, dtype, fill_null) -> torch.Tensor:
    width = arr.type.list_size
    child = arr.values.slice(arr.offset * width, len(arr) * width)
    flat = column_to_tensor(child, dtype=dtype, fill_null=fill_null)
    out = flat.view(len(arr), width)
    if arr.null_count:
        out = out.clone()
        out[~validity_mask(arr)] = fill_null
    return out


def list_column_to_jagged(array: ArrayLike, *, fill_null=None) -> Jagged:
    """A list<T> / large_list<T> column as Jagged(values, offsets).

    Numeric values become a tensor (null values -> `fill_null`, default 0); string and binary
    values stay an Arrow array (nulls kept unless `fill_null` is given). Null lists are empty."""
    arr = _single(array)
    if not _is_list(arr.type):
        raise TypeError(f"expected a list or large_list column, got Arrow type {arr.type}")
    offsets = arr.offsets.to_numpy(zero_copy_only=True).astype(np.int64)  # sliced offsets, one copy
    start, end = int(offsets[0]), int(offsets[-1])
    if arr.null_count:
        lengths = np.diff(offsets)
        lengths[~arr.is_valid().to_numpy(zero_copy_only=False)] = 0
        if int(lengths.sum()) != end - start:  # a null list covers values: drop them
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            return Jagged(_list_values(pc.list_flatten(arr), fill_null), torch.from_numpy(offsets))
    offsets -= start
    return Jagged(_list_values(arr.values.slice(start, end - start), fill_null), torch.from_numpy(offsets))


def _list_values(values: pa.Array, fill_null):
    if type_family(values.type) in ("string", "binary") or pa.types.is_fixed_size_binary(values.type) \
            or pa.types.is_dictionary(values.type):
        if fill_null is not None and values.null_count:
            return pc.fill_null(values, pa.scalar(fill_null).cast(values.type))
        return values
    return column_to_tensor(values, fill_null=0 if fill_null is None else fill_null)


def to_tensors(batch: Union[pa.RecordBatch, pa.Table], *, fill_null=0) -> Dict[str, object]:
    """Every column of a record batch in its tensor form: lists -> Jagged, numbers -> tensors,
    strings and other types -> the Arrow array unchanged. Usable as a dataset `transform`.

    >>> import pyarrow as pa
    >>> out = to_tensors(pa.record_batch({"id": [1, 2], "tags": [[5], [6, 7]], "name": ["a", "b"]}))
    >>> out["id"], out["tags"].offsets, out["name"].to_pylist()
    (tensor([1, 2]), tensor([0, 1, 3]), ['a', 'b'])
    """
    out = {}
    for name, col in zip(batch.schema.names, batch.columns):
        t = col.type
        if _is_list(t):
            out[name] = list_column_to_jagged(col, fill_null=fill_null)
        elif _has_tensor_form(t.value_type if pa.types.is_dictionary(t) else t):
            out[name] = column_to_tensor(col, fill_null=fill_null)
        else:
            out[name] = col
    return out
