"""XXH64 in C++ (recis.features.xxh64 and the feat_hash_* ops) against the published test vectors
and the xxhash package."""
import numpy as np
import pyarrow as pa
import pytest
import torch
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from recis.features import xxh64
from test_feature_reference import ref_hash, signed

ops = torch.ops.recis

# Published XXH64 values (xxHash repository, seed 0 unless noted).
VECTORS = [(b"", 0, 0xEF46DB3751D8E999), (b"a", 0, 0xD24EC4F1A98C6E5B), (b"abc", 0, 0x44BC2CF5AD770999),
           (b"message digest", 0, 0x066ED728FCEEB3BE),
           (b"abcdefghijklmnopqrstuvwxyz", 0, 0xCFE1F278FA89835C),
           (b"12345678901234567890123456789012345678901234567890123456789012345678901234567890", 0,
            0xE04A477F19EE145D),
           (b"", 1, 0xD5AFBA1336A3BE4B)]


@pytest.mark.parametrize("data,seed,expected", VECTORS)
def test_published_vectors(data, seed, expected):
    assert xxh64([data], seed=seed).tolist() == [signed(expected)]


def test_every_length_0_to_100_covers_all_tail_paths():
    rng = np.random.default_rng(0)
    blob = rng.integers(0, 256, 100, dtype=np.uint8).tobytes()
    values = [blob[:n] for n in range(101)]
    for seed in (0, 1, 2 ** 64 - 1, 0x9E3779B97F4A7C15):
        expected = [signed(xxhash.xxh64_intdigest(v, seed)) for v in values]
        assert xxh64(values, seed=seed).tolist() == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=70), max_size=40), st.integers(0, 2 ** 64 - 1))
def test_random_strings_match_xxhash(strings, seed):
    expected = [signed(xxhash.xxh64_intdigest(s.encode(), seed)) for s in strings]
    assert xxh64(pa.array(strings, type=pa.string()), seed=seed).tolist() == expected
    assert xxh64(pa.array(strings, type=pa.large_string()), seed=seed).tolist() == expected
    if strings:
        assert xxh64(pa.array(strings).dictionary_encode(), seed=seed).tolist() == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2 ** 63), 2 ** 63 - 1), max_size=50), st.integers(0, 2 ** 64 - 1))
def test_integers_hash_their_8_little_endian_bytes(values, seed):
    expected = [ref_hash(v, seed) for v in values]
    assert xxh64(np.array(values, dtype=np.int64), seed=seed).tolist() == expected
    assert xxh64(pa.array(values, type=pa.int64()), seed=seed).tolist() == expected


def test_narrow_and_unsigned_integers_hash_as_int64():
    values = [0, 1, 127, -128, -1]
    for t in (pa.int8(), pa.int16(), pa.int32()):
        assert xxh64(pa.array(values, type=t)).tolist() == [ref_hash(v) for v in values]
    big = [0, 2 ** 64 - 1, 2 ** 63]
    assert xxh64(pa.array(big, type=pa.uint64())).tolist() == [ref_hash(v) for v in big]
    assert xxh64(pa.array([7, 65535], type=pa.uint16())).tolist() == [ref_hash(7), ref_hash(65535)]


def test_sliced_arrays_hash_the_visible_values():
    arr = pa.array(["zero", "one", "two", "three"]).slice(1, 2)
    assert xxh64(arr).tolist() == [ref_hash("one"), ref_hash("two")]
    chunked = pa.chunked_array([["a"], ["b", "c"]])
    assert xxh64(chunked).tolist() == [ref_hash(s) for s in "abc"]


def test_nulls_are_refused_by_the_helper():
    with pytest.raises(ValueError, match="1 null values"):
        xxh64(pa.array(["a", None]))


def test_multi_hash_and_masked_positions_in_the_kernel():
    offsets = torch.tensor([0, 1, 3], dtype=torch.int32)
    data = torch.tensor(list(b"abc"), dtype=torch.uint8)
    index = torch.tensor([1, 0, 99, 1], dtype=torch.int32)  # 99 sits under a null: never read
    mask = torch.tensor([True, True, False, True])
    out = ops.feat_hash_str([offsets], [data], [index], [mask], [5], [2])[0].view(4, 2)
    for row, s in ((0, "bc"), (1, "a"), (3, "bc")):
        assert out[row].tolist() == [ref_hash(s, 5), ref_hash(s, 6)]
    assert out[2].tolist() == [0, 0]


def test_out_of_range_index_and_bad_offsets_raise():
    offsets = torch.tensor([0, 1], dtype=torch.int32)
    data = torch.tensor([97], dtype=torch.uint8)
    with pytest.raises(IndexError, match="outside"):
        ops.feat_hash_str([offsets], [data], [torch.tensor([1], dtype=torch.int32)], [None], [0], [1])
    with pytest.raises(ValueError, match="outside the data buffer"):
        ops.feat_hash_str([torch.tensor([0, 5], dtype=torch.int32)], [data], [None], [None], [0], [1])
    with pytest.raises(TypeError, match="integer"):
        ops.feat_hash_int([torch.tensor([1.0])], [0], [1])


def test_many_columns_in_one_call_match_one_by_one():
    rng = np.random.default_rng(3)
    cols = [torch.from_numpy(rng.integers(-1000, 1000, n)) for n in (0, 1, 70000, 5)]
    fused = ops.feat_hash_int(cols, [1, 2, 3, 4], [1, 3, 1, 2])
    for c, s, k, got in zip(cols, [1, 2, 3, 4], [1, 3, 1, 2], fused):
        assert torch.equal(got, ops.feat_hash_int([c], [s], [k])[0])
