"""One set of hash vectors (tests/hash_vectors.json, computed from an independent big-int
reference) checked against all three implementations of recis's hashing: Python
(recis.hashing), C++ (csrc/common/hashing.h, through its tables' sketch and initializer and
the constants recis._C.vocabulary() exports) and Triton (recis/gpu/kernels/hashing.py, run by
Triton's interpreter, and the sketch and initializer kernels of its tables)."""
import json
import os

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from recis import _C, hashing
from recis._ops import COMBINERS
from recis.nn import FrequencyAdmission, TableGroup, Uniform

with open(os.path.join(os.path.dirname(__file__), "hash_vectors.json")) as f:
    V = json.load(f)

_U64 = (1 << 64) - 1
BACKENDS = ["cpp", "triton"]


def i64(values):
    """64-bit values (any spelling) as an int64 tensor of the same bits."""
    return torch.tensor([hashing.signed(v) for v in values], dtype=torch.int64)


def u64(t: torch.Tensor):
    return [v & _U64 for v in t.tolist()]


# ---- Python -------------------------------------------------------------------------------

def test_python_constants():
    assert hashing.CONSTANTS == V["constants"]


def test_python_mix64():
    xs, want = zip(*V["mix64"])
    assert [hashing.mix_int(x) for x in xs] == list(want)
    assert hashing.mix(np.array(xs, dtype=np.uint64)).tolist() == list(want)
    assert u64(hashing.mix64(i64(xs))) == list(want)


def test_python_hash_id_row_key_owner_counter_rng():
    for i, ns, h in V["hash_id"]:
        assert u64(hashing.hash_id(i64([i]), ns)) == [h], (i, ns)
    for seed, i, key in V["row_key"]:
        assert hashing.mix_int(hashing.seed_key(seed) ^ (i & _U64)) == key, (seed, i)
    for i, seed, world, owner in V["owner"]:
        assert hashing.owner_of(i64([i]), seed, world).tolist() == [owner], (i, seed, world)
    for seed, path, counter, bits in V["counter_rng"]:
        key = hashing.stream_key(seed, *path)
        assert hashing.bits(key, hashing.spread(np.array([counter]))).tolist() == [bits], (seed, path, counter)


# ---- C++ and Triton through their tables --------------------------------------------------

def test_cpp_constants():
    assert _C.vocabulary()["hashing"] == V["constants"]


def _group(backend, ns_count, **kw):
    return TableGroup(4, [f"t{k}" for k in range(ns_count)], [0] * ns_count, backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sketch_counters(backend):
    """One training sighting of an id raises exactly the counters the vectors name."""
    for i, ns, width, depth, idx in V["sketch"]:
        group = _group(backend, ns + 1, admission=FrequencyAdmission(min_count=100, sketch_width=width,
                                                                     sketch_depth=depth))
        with torch.no_grad():
            group.lookup(i64([i]), torch.tensor([0, 1]), None, [ns], 1, [0], 4, COMBINERS["sum"], True)
        sketch = group.group_state()["sketch"].reshape(-1).to(torch.int64)  # uint32 counters
        assert sketch.nonzero().flatten().tolist() == sorted(idx), (backend, i, ns, width, depth)
        assert sketch.sum().item() == depth


@pytest.mark.parametrize("backend", BACKENDS)
def test_initial_rows_uniform_bits(backend):
    """Uniform(0, 1) writes bits / 2^24 with bits = mix64(row_key + (col + 1) * column_step) >> 40."""
    want = {}
    for seed, i, col, bits in V["uniform_bits"]:
        want.setdefault((seed, i), {})[col] = bits
    for (seed, i), cols in want.items():
        group = TableGroup(6, ["t"], [seed], initializer=Uniform(0.0, 1.0), backend=backend)
        row = group.tables[0].initial_rows(i64([i]))[0]
        got = {c: int(row[c].item() * (1 << 24)) for c in cols}
        assert got == cols, (backend, seed, i)


# ---- Triton helpers, run by the interpreter -----------------------------------------------

_H = None  # the interpreted copy of recis/gpu/kernels/hashing.py, set by _helpers_kernel


def _helpers(x_ptr, ids_ptr, ns_ptr, key_ptr, col_ptr, mix_ptr, hid_ptr, row_ptr, draw_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0).to(tl.uint64, bitcast=True)
    tl.store(mix_ptr + offs, _H.mix64(x).to(tl.int64, bitcast=True), mask=m)
    ids = tl.load(ids_ptr + offs, mask=m, other=0)
    hid = _H.hash_id(ids, tl.load(ns_ptr + offs, mask=m, other=0))
    tl.store(hid_ptr + offs, hid.to(tl.int64, bitcast=True), mask=m)
    key = _H.row_key(tl.load(key_ptr + offs, mask=m, other=0), ids)
    tl.store(row_ptr + offs, key.to(tl.int64, bitcast=True), mask=m)
    col = tl.load(col_ptr + offs, mask=m, other=0)
    tl.store(draw_ptr + offs, (_H.column_draw(key, col, 0) >> 40).to(tl.int64), mask=m)


def _helpers_kernel():
    """_helpers as a kernel for Triton's interpreter, calling the interpreted helpers."""
    global _H
    from recis.gpu._flavors import flavor

    _H = flavor(torch.device("cpu")).hashing
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = True
        return triton.jit(_helpers)


def test_triton_helpers():
    mixes = V["mix64"]
    hids = V["hash_id"]
    rows = [(s, i, c, b) for s, i, c, b in V["uniform_bits"]]
    keys = {(s, i): k for s, i, k in V["row_key"]}
    n = max(len(mixes), len(hids), len(rows))
    pad = lambda xs, fill: list(xs) + [fill] * (n - len(xs))  # noqa: E731
    x = i64(pad([a for a, _ in mixes], 0))
    ids = i64(pad([i for i, _, _ in hids], 0))
    ns = torch.tensor(pad([k for _, k, _ in hids], 0), dtype=torch.int64)
    # the row key and draw of the uniform_bits entries (their own ids)
    rid = i64(pad([i for _, i, _, _ in rows], 0))
    nskey = i64(pad([hashing.seed_key(s) for s, _, _, _ in rows], 0))
    col = torch.tensor(pad([c for _, _, c, _ in rows], 0), dtype=torch.int64)
    out = [torch.zeros(n, dtype=torch.int64) for _ in range(4)]
    kernel = _helpers_kernel()
    block = 1 << (n - 1).bit_length()
    kernel[(1,)](x, ids, ns, nskey, col, out[0], out[1], torch.zeros(n, dtype=torch.int64),
                 torch.zeros(n, dtype=torch.int64), n, BLOCK=block)
    assert u64(out[0])[:len(mixes)] == [m for _, m in mixes]
    assert u64(out[1])[:len(hids)] == [h for _, _, h in hids]
    kernel[(1,)](x, rid, ns, nskey, col, out[0], out[1], out[2], out[3], n, BLOCK=block)
    assert u64(out[2])[:len(rows)] == [keys[(s, i)] for s, i, _, _ in rows]
    assert out[3].tolist()[:len(rows)] == [b for _, _, _, b in rows]
