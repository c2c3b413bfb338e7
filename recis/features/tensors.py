"""Fixed-shape tensor features and the row-level error of the tensor kinds.

A `tensor` feature reads a list column (list, large_list or fixed_size_list of numbers) whose
every row holds exactly prod(shape) numbers, and gives a float32 [B, *shape] tensor (row-major,
as numpy's reshape). A null row, a null element or a row of another length is a `RowError`
naming the feature, the column and the rows of the record batch.

>>> import pyarrow as pa
>>> fixed_tensor(pa.array([[1, 2, 3, 4], [5, 6, 7, 8]]), (2, 2), "f", "c").tolist()
[[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]
>>> fixed_tensor(pa.array([[1, 2, 3, 4], [5, 6]]), (2, 2), "f", "c")
Traceback (most recent call last):
...
recis.io.errors.RowError: tensor feature 'f' (column 'c'): row 1 of the record batch (0-based): 2 numbers, the shape (2, 2) needs 4
"""
import math
from typing import Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from recis.features.arrow import FeatureTypeError
from recis.io.errors import RowError

__all__ = ["RowError", "fixed_tensor"]


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def fixed_tensor(arr: pa.Array, shape: Tuple[int, ...], feature: str, column: str) -> torch.Tensor:
    """A list column as a float32 [rows, *shape] tensor (see the module docstring)."""
    t = arr.type
    where = f"tensor feature {feature!r} (column {column!r})"
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
            or not _numeric(t.value_type):
        raise FeatureTypeError(f"{where}: expects a list of numbers per row (list, large_list or fixed_size_list "
                               f"of ints or floats), found Arrow type {t}")
    rows, need = len(arr), math.prod(shape)
    reasons = {}
    if arr.null_count:
        for r in np.flatnonzero(~np.asarray(arr.is_valid())).tolist():
            reasons[r] = "null (a tensor row needs its values)"
    lengths = np.asarray(pc.list_value_length(arr).fill_null(need), dtype=np.int64)
    for r in np.flatnonzero(lengths != need).tolist():
        reasons[r] = f"{int(lengths[r])} numbers, the shape {tuple(shape)} needs {need}"
    if not reasons:
        values = arr.flatten()
        if values.null_count:
            starts = np.concatenate([[0], np.cumsum(lengths)])
            for i in np.flatnonzero(~np.asarray(values.is_valid())).tolist():
                r = int(np.searchsorted(starts, i, side="right") - 1)
                reasons.setdefault(r, f"a null at position {i - int(starts[r])} (tensor values cannot be null)")
    if reasons:
        bad = sorted(reasons)
        raise RowError(feature, column, "tensor", bad, [reasons[r] for r in bad])
    flat = np.array(values.to_numpy(zero_copy_only=False), dtype=np.float32)  # a writable copy
    return torch.from_numpy(flat.reshape((rows,) + tuple(shape)))
