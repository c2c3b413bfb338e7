"""Seeded, streaming Criteo-like data with a known answer.

`CriteoLike` generates the Criteo layout (`label`, dense `I1..`, categorical `C1..` as 8-hex
strings, the schema of `recis.datasets.criteo.schema`). Categorical ids are Zipf-distributed
over each feature's cardinality; labels come from a planted logistic model

    logit = bias + sum_j w_j * (log1p(I_j) - mu_j) + sum_f v_f(C_f)

with per-(feature, id) weights `v_f` drawn from a seeded hash (uniform with standard deviation
`sparse_weight_std`), so the true probability of every row is known: `logits(batch)` recomputes
it from the features alone, and `bayes_auc(...)` is the best AUC any model can reach on a sample.
Missing values contribute 0.

Row i is a pure function of (seed, i) (counter-based randomness, vectorised numpy, no per-row
Python), so any row range can be generated alone: shards, resumption and parallel writers agree.

>>> gen = CriteoLike(num_dense=2, num_sparse=3, cardinalities=1000, seed=7)
>>> batch = next(gen.batches(5))
>>> batch.schema.names
['label', 'I1', 'I2', 'C1', 'C2', 'C3']
>>> len(batch["C1"][0].as_py())
8
>>> gen.batch(3, 2).equals(batch.slice(3, 2))       # row i depends only on (seed, i)
True
"""
import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from recis.config_utils import bounded, check_types, is_integer
from recis.datasets import _counter_rng as rng
from recis.datasets import criteo
from recis.datasets._cache import PathLike
from recis.datasets._parquet import DEFAULT_ROW_GROUP_SIZE, write_batches
from recis.datasets._zipf import TruncatedZipf
from recis.metrics import AUC

#: Distinct values of C1..C26 in the Criteo Kaggle (Display Advertising Challenge) training set,
#: as used by DLRM's `--arch-embedding-size`.
KAGGLE_CRITEO_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
DEFAULT_CARDINALITY = 100_000
_MAX_CARDINALITY = 1 << 32
# stream names (the `path` of rng.stream_key)
_DENSE_VALUE, _DENSE_NULL, _DENSE_PARAM, _SPARSE_RANK, _SPARSE_NULL, _SPARSE_ID, _WEIGHT, _LABEL = range(8)
# _HEX4[x] holds the 4 hex digits of x < 2**16 as the bytes of one uint32
_HEX4 = np.frombuffer(b"".join(b"%04x" % x for x in range(1 << 16)), dtype=np.uint32)
_UNHEX = np.full(256, 255, dtype=np.uint8)
_UNHEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
_UNHEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_NIBBLE_SHIFTS = np.arange(28, -1, -4, dtype=np.uint32)


@dataclass(frozen=True)
class CriteoLikeConfig:
    """What `CriteoLike` generates. `cardinalities`: one int for every categorical feature, one
    per feature, or None: Criteo Kaggle's when `num_sparse == 26`, else 100,000 each."""
    num_dense: int = bounded(criteo.NUM_DENSE, ge=0)
    num_sparse: int = bounded(criteo.NUM_SPARSE, ge=0)
    cardinalities: Union[None, int, Sequence[int]] = bounded(None, ge=1, le=_MAX_CARDINALITY)
    zipf_exponent: float = bounded(1.05, ge=0)
    seed: int = bounded(0, ge=0, lt=1 << 64)
    bias: float = bounded(-1.8)
    sparse_weight_std: float = bounded(0.25, ge=0)
    dense_weight_std: float = bounded(0.2, ge=0)
    dense_null_fraction: float = bounded(0.0, ge=0, lt=1)
    sparse_null_fraction: float = bounded(0.0, ge=0, lt=1)
    dense_type: pa.DataType = field(default=pa.float64())

    def __post_init__(self):
        check_types(self, "CriteoLikeConfig")
        if self.dense_type not in criteo.DENSE_TYPES:
            raise TypeError(f"dense_type must be one of {[str(t) for t in criteo.DENSE_TYPES]}, "
                            f"got {self.dense_type}")
        card = self.cardinalities
        if card is None:
            card = (KAGGLE_CRITEO_CARDINALITIES if self.num_sparse == len(KAGGLE_CRITEO_CARDINALITIES)
                    else DEFAULT_CARDINALITY)
        card = (card,) * self.num_sparse if is_integer(card) else tuple(card)
        if len(card) != self.num_sparse:
            raise ValueError(f"cardinalities lists {len(card)} values for {self.num_sparse} "
                             f"categorical features")
        object.__setattr__(self, "cardinalities", tuple(int(c) for c in card))


def _fmix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer: a bijection of uint32."""
    x = x ^ (x >> np.uint32(16))
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> np.uint32(16)
    return x


def _hex_strings(values: np.ndarray, valid: Optional[np.ndarray]) -> pa.StringArray:
    """uint32 values -> 8-lowercase-hex-digit strings, null where not `valid` (None: all valid)."""
    n = len(values)
    if valid is not None:
        values = values[valid]
    digits = np.empty((len(values), 2), dtype=np.uint32)
    np.take(_HEX4, values >> np.uint32(16), out=digits[:, 0])
    np.take(_HEX4, values & np.uint32(0xFFFF), out=digits[:, 1])
    if valid is None:
        offsets = np.arange(0, 8 * n + 1, 8, dtype=np.int32)
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(digits))
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(valid * np.int32(8), out=offsets[1:])
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(digits), bitmap,
                                       n - len(values))


def _parse_hex(column: pa.Array, name: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(uint32 values, valid mask or None if no nulls) of a column of 8-hex-digit strings."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if column.type == pa.large_string():
        column = column.cast(pa.string())
    if column.type != pa.string():
        raise TypeError(f"column {name}: expected string, found {column.type}")
    valid = _valid_mask(column)
    offsets = np.frombuffer(column.buffers()[1], np.int32)[column.offset:column.offset + len(column) + 1]
    data = column.buffers()[2]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    if valid is not None:
        starts, ends = starts[valid], ends[valid]
    if np.any(ends - starts != 8):
        raise ValueError(f"column {name}: every value must be 8 hex digits")
    nibbles = _UNHEX[data[starts[:, None] + np.arange(8)]]
    if np.any(nibbles == 255):
        raise ValueError(f"column {name}: found a value that is not hexadecimal")
    parsed = (nibbles.astype(np.uint32) << _NIBBLE_SHIFTS).sum(axis=1, dtype=np.uint32)
    if valid is None:
        return parsed, None
    values = np.zeros(len(column), dtype=np.uint32)
    values[valid] = parsed
    return values, valid


def _valid_mask(column: pa.Array) -> Optional[np.ndarray]:
    """The validity of `column` as a bool array, or None when it has no nulls."""
    return None if column.null_count == 0 else column.is_valid().to_numpy(zero_copy_only=False)


def _unit_uniform_weights(u: np.ndarray, std: float) -> np.ndarray:
    """Uniforms in [0, 1) -> zero-mean uniform weights with standard deviation `std`."""
    return (2.0 * u - 1.0) * (std * math.sqrt(3.0))


Column = Tuple[np.ndarray, Optional[np.ndarray], pa.Array]  # (logit term, valid or None, array)


class CriteoLike:
    """The generator of `CriteoLikeConfig` (pass a config, keyword overrides, or both).

    Dense feature j is log-logistic: floor(exp(mu_j + sigma_j * z)) with z logistic of unit
    variance, mu_j in [1, 4) and sigma_j in [0.5, 1.5) drawn from the seed. `threads` > 1
    generates the columns of a batch on that many threads (numpy releases the GIL); the data do
    not depend on it."""

    def __init__(self, config: Optional[CriteoLikeConfig] = None, *, threads: int = 1, **overrides):
        config = config or CriteoLikeConfig()
        self.config = replace(config, **overrides) if overrides else config
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        self.threads = threads
        c = self.config
        self.schema = criteo.schema(c.num_dense, c.num_sparse, c.dense_type)
        self.dense_names = criteo.dense_columns(c.num_dense)
        self.sparse_names = criteo.sparse_columns(c.num_sparse)
        self._zipf = [TruncatedZipf(n, c.zipf_exponent) for n in c.cardinalities]
        params = [self._key(_DENSE_PARAM, j) for j in range(c.num_dense)]
        self._mu = np.array([1.0 + 3.0 * rng.uniform_scalar(k, 0) for k in params])
        self._sigma = np.array([0.5 + rng.uniform_scalar(k, 1) for k in params])
        self._dense_w = _unit_uniform_weights(
            np.array([rng.uniform_scalar(k, 2) for k in params]), c.dense_weight_std)
        self._np_dense = c.dense_type.to_pandas_dtype()

    def _key(self, *path: int) -> int:
        return rng.stream_key(self.config.seed, *path)

    def ids(self, feature: int, ranks: np.ndarray) -> np.ndarray:
        """The uint32 id of each Zipf rank (1 = most frequent) of categorical feature `feature`
        (0-based); distinct ranks get distinct ids. The column holds them as 8 hex digits."""
        offset = np.uint32(self._key(_SPARSE_ID, feature) & 0xFFFFFFFF)
        return _fmix32((np.asarray(ranks, dtype=np.int64) - 1).astype(np.uint32) + offset)

    # --- the planted model: one logit term per column -------------------------------------
    def _dense_term(self, j: int, x: np.ndarray) -> np.ndarray:
        return self._dense_w[j] * (np.log1p(np.maximum(x, 0.0)) - self._mu[j])

    def _sparse_term(self, f: int, ids: np.ndarray) -> np.ndarray:
        u = rng.uniform(self._key(_WEIGHT, f), rng.spread(ids))
        return _unit_uniform_weights(u, self.config.sparse_weight_std)

    def _sum_terms(self, columns: Iterable[Column], n: int) -> np.ndarray:
        logit = np.full(n, self.config.bias)
        for term, valid, _ in columns:
            logit += term if valid is None else np.where(valid, term, 0.0)
        return logit

    # --- generation ------------------------------------------------------------------------
    def _valid(self, stream: int, index: int, fraction: float, spread: np.ndarray) -> Optional[np.ndarray]:
        return None if fraction == 0 else rng.uniform(self._key(stream, index), spread) >= fraction

    def _dense_column(self, j: int, spread: np.ndarray) -> Column:
        u = rng.uniform(self._key(_DENSE_VALUE, j), spread) + 2.0 ** -54  # in (0, 1)
        z = np.log(u / (1.0 - u)) * (math.sqrt(3.0) / math.pi)  # logistic, unit variance
        x = np.floor(np.exp(self._mu[j] + self._sigma[j] * z)).astype(self._np_dense)
        valid = self._valid(_DENSE_NULL, j, self.config.dense_null_fraction, spread)
        array = pa.array(x, self.schema.field(self.dense_names[j]).type,
                         mask=None if valid is None else ~valid)
        return self._dense_term(j, x.astype(np.float64)), valid, array  # the stored value counts

    def _sparse_column(self, f: int, spread: np.ndarray) -> Column:
        ids = self.ids(f, self._zipf[f].ranks(rng.uniform(self._key(_SPARSE_RANK, f), spread)))
        valid = self._valid(_SPARSE_NULL, f, self.config.sparse_null_fraction, spread)
        return self._sparse_term(f, ids), valid, _hex_strings(ids, valid)

    def _batch(self, start: int, num_rows: int, pool: Optional[ThreadPoolExecutor]) -> pa.RecordBatch:
        if start < 0 or num_rows < 0:
            raise ValueError(f"start and num_rows must be >= 0, got {start}, {num_rows}")
        spread = rng.spread(np.arange(start, start + num_rows, dtype=np.uint64))
        jobs = ([(self._dense_column, j) for j in range(self.config.num_dense)]
                + [(self._sparse_column, f) for f in range(self.config.num_sparse)])
        if pool is None:
            columns = [fn(i, spread) for fn, i in jobs]
        else:
            columns = list(pool.map(lambda job: job[0](job[1], spread), jobs))
        p = 1.0 / (1.0 + np.exp(-self._sum_terms(columns, num_rows)))
        label = (rng.uniform(self._key(_LABEL), spread) < p).astype(np.int8)
        arrays = [pa.array(label, pa.int8())] + [array for _, _, array in columns]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    @contextlib.contextmanager
    def _pool(self) -> Iterator[Optional[ThreadPoolExecutor]]:
        if self.threads == 1:
            yield None
        else:
            with ThreadPoolExecutor(self.threads) as pool:
                yield pool

    def batch(self, start: int, num_rows: int) -> pa.RecordBatch:
        """Rows [start, start + num_rows) as one record batch."""
        with self._pool() as pool:
            return self._batch(start, num_rows, pool)

    def batches(self, num_rows: int, *, start: int = 0,
                batch_size: int = 64 * 1024) -> Iterator[pa.RecordBatch]:
        """Streams rows [start, start + num_rows) in batches of `batch_size` rows."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        with self._pool() as pool:
            for lo in range(start, start + num_rows, batch_size):
                yield self._batch(lo, min(batch_size, start + num_rows - lo), pool)

    # --- the answer --------------------------------------------------------------------------
    def logits(self, data: Union[pa.RecordBatch, pa.Table]) -> np.ndarray:
        """The planted model's logit of every row of `data` (generated by this config), computed
        from its feature columns alone."""
        out = []
        for batch in ([data] if isinstance(data, pa.RecordBatch) else data.to_batches()):
            missing = [n for n in self.dense_names + self.sparse_names if n not in batch.schema.names]
            if missing:
                raise ValueError(f"missing columns {missing}; found {batch.schema.names}")
            columns = []
            for j, name in enumerate(self.dense_names):
                x = pc.fill_null(batch[name], 0).to_numpy(zero_copy_only=False).astype(np.float64)
                columns.append((self._dense_term(j, x), _valid_mask(batch[name]), None))
            for f, name in enumerate(self.sparse_names):
                ids, valid = _parse_hex(batch[name], name)
                columns.append((self._sparse_term(f, ids), valid, None))
            out.append(self._sum_terms(columns, batch.num_rows))
        return np.concatenate(out) if out else np.zeros(0)

    def probabilities(self, data: Union[pa.RecordBatch, pa.Table]) -> np.ndarray:
        """sigmoid(logits(data)): the true click probability of every row."""
        return 1.0 / (1.0 + np.exp(-self.logits(data)))

    def bayes_auc(self, data: Union[pa.RecordBatch, pa.Table, Iterable[pa.RecordBatch]]) -> float:
        """The AUC (exact, ties count half: `recis.metrics.AUC`) of the true probabilities against
        the labels of `data`: the best AUC any model can reach on it (up to sampling noise)."""
        if isinstance(data, (pa.RecordBatch, pa.Table)):
            data = [data]
        auc = AUC(undefined="raise")
        for part in data:
            labels = part[criteo.LABEL]
            if labels.null_count:
                raise ValueError(f"column {criteo.LABEL} has {labels.null_count} missing values")
            auc.update(torch.from_numpy(self.logits(part)),
                       torch.from_numpy(labels.to_numpy(zero_copy_only=False).astype(np.float64)))
        return auc.compute()

    def write_parquet(self, dst_dir: PathLike, num_rows: int, *, rows_per_file: int = 1 << 20,
                      start: int = 0, batch_size: int = 64 * 1024,
                      row_group_size: int = DEFAULT_ROW_GROUP_SIZE) -> List[Path]:
        """Writes rows [start, start + num_rows) to `dst_dir/part-00000.parquet`, ... (at most
        `rows_per_file` rows each, one batch in memory at a time); returns the paths."""
        return write_batches(self.batches(num_rows, start=start, batch_size=batch_size), dst_dir,
                             self.schema, rows_per_file=rows_per_file, row_group_size=row_group_size)


def criteo_like(num_rows: int, *, start: int = 0, batch_size: int = 64 * 1024, threads: int = 1,
                **config) -> Iterator[pa.RecordBatch]:
    """Streams `num_rows` Criteo-like rows: `CriteoLike(**config).batches(num_rows, ...)`.

    >>> sum(b.num_rows for b in criteo_like(10, batch_size=4, num_sparse=2, cardinalities=50))
    10
    """
    unknown = set(config) - {f.name for f in fields(CriteoLikeConfig)}
    if unknown:
        raise TypeError(f"unknown CriteoLikeConfig fields {sorted(unknown)}")
    return CriteoLike(threads=threads, **config).batches(num_rows, start=start, batch_size=batch_size)
