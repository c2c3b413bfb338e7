"""Arrow columns -> tensors, against Python references (incl. sliced arrays and nulls)."""
import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recis.io import Jagged, column_to_tensor, list_column_to_jagged, to_tensors, validity_mask

INT64 = st.integers(-(2 ** 63), 2 ** 63 - 1)


def _buffer_range(arr: pa.Array):
    buf = arr.buffers()[1]
    return buf.address, buf.address + buf.size


def _inside(t: torch.Tensor, arr: pa.Array) -> bool:
    lo, hi = _buffer_range(arr)
    return t.numel() == 0 or lo <= t.data_ptr() < hi


@pytest.mark.parametrize("typ, dtype", [(pa.int8(), torch.int8), (pa.int32(), torch.int32), (pa.int64(), torch.int64),
                                        (pa.uint8(), torch.uint8), (pa.float32(), torch.float32),
                                        (pa.float64(), torch.float64), (pa.uint64(), torch.uint64)])
def test_scalar_columns_are_zero_copy_without_nulls(typ, dtype):
    arr = pa.array([1, 2, 3, 4, 5], typ).slice(1, 3)
    t = column_to_tensor(arr)
    assert t.dtype == dtype and t.tolist() == [2, 3, 4]
    assert _inside(t, arr)  # shares the Arrow buffer, at the slice's offset
    assert t.data_ptr() == _buffer_range(arr)[0] + arr.offset * t.element_size()


@settings(deadline=None)
@given(st.lists(st.one_of(st.none(), INT64), max_size=40), st.integers(0, 40), st.integers(0, 40), st.integers(-5, 5))
def test_nullable_int_column_matches_reference(values, offset, length, fill):
    arr = pa.array(values, pa.int64())
    offset = min(offset, len(values))
    arr = arr.slice(offset, length)
    ref = values[offset:offset + length]
    assert column_to_tensor(arr, fill_null=fill).tolist() == [fill if v is None else v for v in ref]
    assert validity_mask(arr).tolist() == [v is not None for v in ref]


def test_chunked_bool_temporal_dictionary_and_null_columns():
    chunked = pa.chunked_array([[1, 2], [3]], pa.int16())
    assert column_to_tensor(chunked).tolist() == [1, 2, 3]
    assert column_to_tensor(pa.array([True, None, False])).tolist() == [True, False, False]
    ts = pa.array([5, None, 7], pa.timestamp("ms"))
    assert column_to_tensor(ts, fill_null=-1).tolist() == [5, -1, 7]
    dic = pa.array([1.5, 2.5, 1.5]).dictionary_encode()
    assert column_to_tensor(dic).tolist() == [1.5, 2.5, 1.5]
    nulls = column_to_tensor(pa.nulls(3), dtype=torch.int64, fill_null=9)
    assert nulls.dtype == torch.int64 and nulls.tolist() == [9, 9, 9]
    assert column_to_tensor(pa.array([1, 2], pa.int32()), dtype=torch.float32).dtype == torch.float32


def test_fixed_size_list_becomes_2d_with_null_rows_filled():
    arr = pa.array([[1.0, 2.0], None, [5.0, 6.0], [7.0, 8.0]], pa.list_(pa.float32(), 2)).slice(1)
    t = column_to_tensor(arr, fill_null=0)
    assert t.shape == (3, 2) and t.tolist() == [[0, 0], [5, 6], [7, 8]]


def test_unsupported_types_name_the_type():
    with pytest.raises(TypeError, match="string"):
        column_to_tensor(pa.array(["a"]))
    with pytest.raises(TypeError, match="list_column_to_jagged"):
        column_to_tensor(pa.array([[1]]))
    with pytest.raises(TypeError, match="list or large_list"):
        list_column_to_jagged(pa.array([1]))


def _reference_jagged(rows, fill):
    values, offsets = [], [0]
    for r in rows:
        for v in r or []:
            values.append(fill if v is None else v)
        offsets.append(len(values))
    return values, offsets


LISTS = st.lists(st.one_of(st.none(), st.lists(st.one_of(st.none(), INT64), max_size=5)), max_size=30)


@settings(max_examples=80, deadline=None)
@given(LISTS, st.integers(0, 30), st.integers(0, 30), st.booleans())
def test_list_int64_to_jagged_matches_reference(rows, offset, length, large):
    typ = pa.large_list(pa.int64()) if large else pa.list_(pa.int64())
    arr = pa.array(rows, typ)
    offset = min(offset, len(rows))
    arr = arr.slice(offset, length)
    values, offsets = list_column_to_jagged(arr, fill_null=-7)
    ref_values, ref_offsets = _reference_jagged(rows[offset:offset + length], -7)
    assert values.dtype == torch.int64 and offsets.dtype == torch.int64
    assert values.tolist() == ref_values and offsets.tolist() == ref_offsets


def test_list_values_are_zero_copy_of_the_child():
    arr = pa.array([[1, 2], [3], [4, 5, 6], [7]], pa.list_(pa.int64())).slice(1, 2)
    j = list_column_to_jagged(arr)
    assert isinstance(j, Jagged) and j.values.tolist() == [3, 4, 5, 6] and j.offsets.tolist() == [0, 1, 4]
    child = arr.values
    assert j.values.data_ptr() == _buffer_range(child)[0] + 2 * 8  # starts at the slice's first value


def test_null_list_covering_values_is_an_empty_row():
    # offsets [0, 2, 4, 5] with the middle list null although it spans two values
    arr = pa.ListArray.from_arrays(pa.array([0, 2, 4, 5], pa.int32()), pa.array([1, 2, 3, 4, 5]),
                                   mask=pa.array([False, True, False]))
    values, offsets = list_column_to_jagged(arr)
    assert values.tolist() == [1, 2, 5] and offsets.tolist() == [0, 2, 2, 3]


@settings(deadline=None)
@given(st.lists(st.one_of(st.none(), st.lists(st.one_of(st.none(), st.text(max_size=3)), max_size=4)), max_size=20),
       st.integers(0, 20))
def test_list_string_to_jagged_keeps_arrow_strings(rows, offset):
    offset = min(offset, len(rows))
    arr = pa.array(rows, pa.list_(pa.string())).slice(offset)
    values, offsets = list_column_to_jagged(arr)
    ref_values, ref_offsets = _reference_jagged(rows[offset:], None)
    assert isinstance(values, pa.Array) and values.to_pylist() == ref_values
    assert offsets.tolist() == ref_offsets
    filled, _ = list_column_to_jagged(arr, fill_null="")
    assert filled.to_pylist() == ["" if v is None else v for v in ref_values]


def test_to_tensors_maps_each_column_to_its_form():
    batch = pa.record_batch({"id": pa.array([1, None], pa.int64()), "w": [0.5, 1.5], "tags": [[1], None],
                             "text": ["a", "b"], "emb": pa.array([[1, 2], [3, 4]], pa.list_(pa.int8(), 2))})
    out = to_tensors(batch, fill_null=0)
    assert out["id"].tolist() == [1, 0] and out["w"].tolist() == [0.5, 1.5]
    assert out["tags"].values.tolist() == [1] and out["tags"].offsets.tolist() == [0, 1, 1]
    assert out["text"].to_pylist() == ["a", "b"]
    assert out["emb"].tolist() == [[1, 2], [3, 4]]


def test_large_column_conversion_has_no_per_row_cost():
    arr = pa.array(np.arange(2_000_000, dtype=np.int64))
    t = column_to_tensor(arr)
    assert _inside(t, arr) and int(t[-1]) == 1_999_999
