"""Arrow columns as tensors, zero-copy: the engine's working representation of one column.

A `Column` is what every op reads and writes: `values` (a tensor, or `Strings` for utf8 data),
optionally read through a dictionary `index`, with a validity `mask`, a pending `fill` value for
the masked positions, and `splits` (list offsets) when rows hold several positions.

>>> import pyarrow as pa
>>> col = ingest(pa.array(["a", None, "a"]).dictionary_encode())
>>> col.domain, len(col.values), col.index.tolist(), col.mask.tolist(), col.nulls
('str', 1, [0, 0, 0], [True, False, True], 1)
"""
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

__all__ = ["Strings", "Column", "Bits", "ingest", "unpack_masks", "domain_of", "FeatureTypeError"]


class FeatureTypeError(TypeError):
    """A column's Arrow type does not fit the op or feature that reads it."""


@dataclass
class Strings:
    """Arrow string data: string i is data[offsets[i]:offsets[i + 1]] (offsets int32 or int64)."""

    offsets: torch.Tensor
    data: torch.Tensor

    def __len__(self) -> int:
        return self.offsets.numel() - 1


@dataclass
class Column:
    """One column inside the engine (see the module docstring).

    Position p (in [splits[0], splits[-1]) with splits, else [0, rows)) holds `width` values:
    entry index[p] of `values` (entry p without an index); where mask[p] is False it holds
    `fill` instead, or nothing (the position is dropped) when there is no fill."""

    rows: int
    domain: str  # "str" | "int" | "float" | "null" (an all-null column of unknown type)
    values: Union[torch.Tensor, Strings]
    width: int = 1
    index: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None  # (a `Bits` until unpack_masks)
    fill: Optional[Union[torch.Tensor, Strings]] = None
    splits: Optional[torch.Tensor] = None
    nulls: int = 0  # masked positions
    null_rows: int = 0  # null lists (read as empty rows)
    arrow_type: Optional[pa.DataType] = None
    per_position: bool = False  # string kernels read values through `index` per position

    @property
    def entries(self) -> int:
        return len(self.values) if isinstance(self.values, Strings) else self.values.numel() // self.width

    @property
    def materialized(self) -> bool:
        """True when values are one id per position, nothing masked: ready for jagged ops."""
        return self.index is None and self.mask is None and self.width == 1 and self.domain == "int"

    def evolve(self, **changes) -> "Column":
        """A copy with some fields changed (dataclasses.replace without its per-call overhead)."""
        new = object.__new__(Column)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    def with_values(self, values, domain: str, width: int = 1, fill=None) -> "Column":
        return self.evolve(values=values, domain=domain, width=width, fill=fill)


_INT = {pa.int8(): torch.int8, pa.int16(): torch.int16, pa.int32(): torch.int32, pa.int64(): torch.int64,
        pa.uint8(): torch.uint8, pa.uint64(): torch.int64}
_WIDEN = {pa.uint16(): pa.int64(), pa.uint32(): pa.int64(), pa.float16(): pa.float32(), pa.bool_(): pa.int8()}
_FLOAT = {pa.float32(): torch.float32, pa.float64(): torch.float64}
_INDEX = {4: torch.int32, 8: torch.int64}


def domain_of(t: pa.DataType) -> str:
    """The engine domain of an Arrow type: 'str', 'int', 'float', 'null' or 'list' (raises otherwise)."""
    if pa.types.is_dictionary(t):
        return domain_of(t.value_type)
    if (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or pa.types.is_string_view(t) or pa.types.is_binary_view(t)):
        return "str"
    if pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_temporal(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return "list"
    raise FeatureTypeError(f"unsupported Arrow type {t} (expected strings, integers, floats, "
                           "dictionaries or lists of those)")


def _view(buf: Optional[pa.Buffer], dtype: torch.dtype, start: int, count: int) -> torch.Tensor:
    """`count` elements of `dtype` from element `start` of an Arrow buffer, without a copy."""
    if count == 0 or buf is None:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype, count=count, offset=start * dtype.itemsize)


@dataclass
class Bits:
    """A validity bitmap not unpacked yet: bits [offset, offset + n) of `bitmap` (uint8)."""

    bitmap: torch.Tensor
    offset: int
    n: int


def _mask(arr: pa.Array):
    """Validity of arr's slots: None when nothing is null, else `Bits` (see unpack_masks)."""
    if arr.null_count == 0:
        return None
    bitmap = arr.buffers()[0]
    if bitmap is None:  # null type: no bitmap, everything null
        return torch.zeros(len(arr), dtype=torch.bool)
    first = arr.offset // 8
    return Bits(_view(bitmap, torch.uint8, first, (arr.offset + len(arr) + 7) // 8 - first), arr.offset % 8, len(arr))


def unpack_masks(cols) -> None:
    """Turns the columns' pending `Bits` masks into bool tensors, all in one kernel call."""
    todo = [c for c in cols if isinstance(c.mask, Bits)]
    if todo:
        masks = torch.ops.recis.feat_unpack_bits([c.mask.bitmap for c in todo], [c.mask.offset for c in todo],
                                                 [c.mask.n for c in todo])
        for c, m in zip(todo, masks):
            c.mask = m


def _primitive(arr: pa.Array, rows: int) -> Column:
    t = arr.type
    if t in _WIDEN:
        arr = pc.cast(arr, _WIDEN[t])
    elif pa.types.is_temporal(t):
        arr = arr.view(pa.int64() if t.bit_width == 64 else pa.int32())
    t = arr.type
    dtype = _INT.get(t) or _FLOAT.get(t)
    values = _view(arr.buffers()[1], dtype, arr.offset, len(arr))
    mask = _mask(arr)
    return Column(rows=rows, domain="float" if t in _FLOAT else "int", values=values, mask=mask,
                  nulls=arr.null_count)


def _strings(arr: pa.Array, rows: int) -> Column:
    if pa.types.is_string_view(arr.type) or pa.types.is_binary_view(arr.type):
        arr = pc.cast(arr, pa.large_binary())
    wide = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    _, offsets, data = arr.buffers()
    values = Strings(_view(offsets, torch.int64 if wide else torch.int32, arr.offset, len(arr) + 1),
                     _view(data, torch.uint8, 0, data.size if data is not None else 0))
    if values.offsets.numel() == 0:  # an empty array may have no offsets buffer at all
        values.offsets = torch.zeros(1, dtype=torch.int32)
    return Column(rows=rows, domain="str", values=values, mask=_mask(arr), nulls=arr.null_count)


def _dictionary(arr: pa.DictionaryArray, rows: int, decode: bool) -> Column:
    if decode and domain_of(arr.type.value_type) != "str":
        return _flat(arr.dictionary_decode(), rows, decode)
    indices = arr.indices
    if indices.type.bit_width not in (32, 64) or not pa.types.is_signed_integer(indices.type):
        indices = pc.cast(indices, pa.int64())
    index = _view(indices.buffers()[1], _INDEX[indices.type.bit_width // 8], indices.offset, len(indices))
    inner = _flat(arr.dictionary, len(arr.dictionary), decode)
    mask, nulls = _mask(indices), indices.null_count
    if inner.mask is not None:  # null dictionary entries make their positions null
        here = Column(rows=rows, domain="null", values=index, mask=mask)
        unpack_masks([inner, here])
        mask = here.mask
        safe = index.long().clamp(0, max(len(arr.dictionary) - 1, 0))
        entry_ok = inner.mask[safe] if len(arr.dictionary) else torch.zeros(len(arr), dtype=torch.bool)
        mask = entry_ok if mask is None else mask & entry_ok
        nulls = int((~mask).sum())
    return inner.evolve(rows=rows, index=index, mask=mask, nulls=nulls, per_position=decode)


def _null(n: int, rows: int) -> Column:
    return Column(rows=rows, domain="null", values=torch.empty(0, dtype=torch.int64),
                  index=torch.zeros(n, dtype=torch.int32), mask=torch.zeros(n, dtype=torch.bool), nulls=n)


def _list(arr: pa.Array, rows: int, decode: bool) -> Column:
    t = arr.type
    if arr.null_count == 0 and not pa.types.is_fixed_size_list(t):
        offsets = _view(arr.buffers()[1], torch.int64 if pa.types.is_large_list(t) else torch.int32, arr.offset,
                        len(arr) + 1)
        child = arr.values
    else:  # null lists may be backed by child slots: flatten drops them, lengths give the rows
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
        offsets = torch.zeros(len(arr) + 1, dtype=torch.int64)
        torch.cumsum(torch.from_numpy(lengths.astype(np.int64)), 0, out=offsets[1:])
        child = arr.flatten()
    if len(arr) == 0:
        offsets = torch.zeros(1, dtype=torch.int64)
    if domain_of(child.type) == "list":
        raise FeatureTypeError(f"nested lists are not supported (found {t})")
    inner = _flat(child, len(child), decode)
    return inner.evolve(rows=rows, splits=offsets, null_rows=arr.null_count)


def _flat(arr: pa.Array, rows: int, decode: bool) -> Column:
    domain = domain_of(arr.type)
    if pa.types.is_dictionary(arr.type):
        return _dictionary(arr, rows, decode)
    if domain == "str":
        return _strings(arr, rows)
    if domain == "null":
        return _null(len(arr), rows)
    if domain == "list":
        return _list(arr, rows, decode)
    return _primitive(arr, rows)


def ingest(arr: Union[pa.Array, pa.ChunkedArray], decode: bool = False, lazy_mask: bool = False) -> Column:
    """An Arrow array (or chunked array) as a `Column`, sharing Arrow's buffers where it can.

    decode=True reads dictionaries of numbers as plain columns (string dictionaries keep their
    index: string kernels read through it per position). lazy_mask=True leaves the validity
    as `Bits` for a later unpack_masks over many columns."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    col = _flat(arr, len(arr), decode)
    col.arrow_type = arr.type
    if not lazy_mask:
        unpack_masks([col])
    return col
