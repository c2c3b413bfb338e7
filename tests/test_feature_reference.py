"""A per-row pure-Python model of recis.features (xxhash package, bisect, math), independent of
the engine; other feature tests compare the engine against it. Tests here check the model itself
against hand-computed values."""
import bisect
import itertools
import math
from typing import Dict, List, Optional

import pyarrow as pa
import xxhash

M64 = 2 ** 64


def signed(u: int) -> int:
    return u - M64 if u >= 2 ** 63 else u


def ref_hash(v, seed: int = 0) -> int:
    """XXH64 of a str / bytes value or of an integer's 8 little-endian bytes, as int64."""
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, int):
        v = (v % M64).to_bytes(8, "little")
    return signed(xxhash.xxh64_intdigest(v, seed % M64))


def ref_cross_hash(ids, seed: int = 0) -> int:
    return signed(xxhash.xxh64_intdigest(b"".join((i % M64).to_bytes(8, "little") for i in ids), seed % M64))


def ref_log1p(x: float, negative: str = "sign") -> float:
    if math.isnan(x):
        return x
    if x >= 0:
        return math.log1p(x)
    return -math.log1p(-x) if negative == "sign" else 0.0


# A row is a list of positions; a position is a tuple of values (width >= 1) or None (null).

def _rows_of(column: pa.Array) -> List[List[Optional[tuple]]]:
    out = []
    list_like = (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
                 or pa.types.is_fixed_size_list(column.type))
    for v in column.to_pylist():
        if list_like:
            out.append([] if v is None else [None if x is None else (x,) for x in v])
        else:
            out.append([None if v is None else (v,)])
    return out


def _materialize(rows) -> List[List[int]]:
    return [[x for p in row if p is not None for x in p] for row in rows]


def _map(rows, fn):
    return [[None if p is None else tuple(y for x in p for y in fn(x)) for p in row] for row in rows]


def _apply(op: Dict, rows):
    name = op["op"]
    if name == "fill_missing":
        width = next((len(p) for row in rows for p in row if p is not None), 1)
        return [[(op["value"],) * width if p is None else p for p in row] for row in rows]
    if name == "hash":
        return _map(rows, lambda x: [ref_hash(x, op.get("seed", 0))])
    if name == "multi_hash":
        s, k = op.get("seed", 0), op["num_hashes"]
        return _map(rows, lambda x: [ref_hash(x, s + j) for j in range(k)])
    if name == "mod":
        return _map(rows, lambda x: [x % op["n"]])
    if name == "bucketize":
        b = [float(x) for x in op["boundaries"]]
        return _map(rows, lambda x: [len(b) if isinstance(x, float) and math.isnan(x) else bisect.bisect_right(b, x)])
    if name == "log1p":
        return _map(rows, lambda x: [ref_log1p(float(x), op.get("negative", "sign"))])
    if name == "normalize":
        return _map(rows, lambda x: [(float(x) - op["mean"]) / op["std"]])
    if name == "clip":
        lo, hi = op.get("min"), op.get("max")
        return _map(rows, lambda x: [x if math.isnan(float(x)) else
                                     min(max(float(x), -math.inf if lo is None else lo), math.inf if hi is None else hi)])
    if name == "truncate":
        n, out = op["max_len"], []
        for ids in _materialize(rows):
            kept = ids[:n] if op.get("keep", "first") == "first" else ids[max(len(ids) - n, 0):]
            if op.get("pad_value") is not None:
                kept = kept + [op["pad_value"]] * (n - len(kept))
            out.append([(x,) for x in kept])
        return out
    raise AssertionError(f"unknown op {name}")


def ref_feature(features: List[Dict], name: str, table: pa.Table):
    """The rows (lists of positions) of feature `name` computed per row from `table`."""
    by_name = {f["name"]: f for f in features}
    f = by_name[name]
    if "cross" in f:
        inputs = []
        for c in f["cross"]:
            source, key = next(iter(c.items())) if isinstance(c, dict) else ("auto", c)
            target = by_name.get(key)
            if source != "column" and target is not None and target["kind"] == "sparse":
                inputs.append(_materialize(ref_feature(features, key, table)))
            else:
                inputs.append(_materialize(_apply({"op": "hash"}, _rows_of(table.column(key).combine_chunks()))))
        cap, seed = f.get("cross_cap", 256), f.get("cross_seed", 0)
        rows = [[(ref_cross_hash(combo, seed),) for combo in itertools.islice(itertools.product(*per_row), cap)]
                for per_row in zip(*inputs)]
    else:
        rows = _rows_of(table.column(f["column"]).combine_chunks())
    for op in f.get("ops", []):
        rows = _apply(op if isinstance(op, dict) else {"op": op}, rows)
    return rows


def ref_sparse(features: List[Dict], name: str, table: pa.Table) -> List[List[int]]:
    return _materialize(ref_feature(features, name, table))


def ref_dense(features: List[Dict], name: str, table: pa.Table) -> List[float]:
    rows = ref_feature(features, name, table)
    assert all(len(r) == 1 and r[0] is not None and len(r[0]) == 1 for r in rows), "dense rows hold one value"
    return [float(r[0][0]) for r in rows]


def test_reference_hash_matches_published_vectors():
    assert ref_hash("") == signed(0xEF46DB3751D8E999)
    assert ref_hash("a") == signed(0xD24EC4F1A98C6E5B)
    assert ref_hash("abc") == signed(0x44BC2CF5AD770999)
    assert ref_hash(0) == ref_hash(b"\0" * 8)


def test_reference_cross_and_truncate_by_hand():
    table = pa.table({"a": [[1, 2], [3]], "b": [[10], []]})
    feats = [{"name": "x", "kind": "sparse", "cross": [{"column": "a"}, {"column": "b"}]},
             {"name": "t", "kind": "sparse", "column": "a", "ops": [{"op": "truncate", "max_len": 1, "keep": "last",
                                                                    "pad_value": 0}]}]
    ha = [[ref_hash(1), ref_hash(2)], [ref_hash(3)]]
    assert ref_sparse(feats, "x", table) == [[ref_cross_hash([ha[0][0], ref_hash(10)]),
                                              ref_cross_hash([ha[0][1], ref_hash(10)])], []]
    assert ref_sparse(feats, "t", table) == [[2], [3]]
