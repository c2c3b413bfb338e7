"""The built-in datasets of a job (`data.dataset`): what each reads, its options, its features.

| `data.dataset` | data | train / eval | `data.options` |
|---|---|---|---|
| `movielens` | MovieLens-1M, downloaded once into the cache (recis.datasets.movielens) | its `split` (`random` or `time`, seeded by `data.seed`) | none |
| `fashion_mnist` | Fashion-MNIST product images with measured attributes, downloaded once into the cache (recis.datasets.fashion_mnist) | train: the official train split less a seeded hold-out of `validation` items (seeded by `data.seed`); eval: that hold-out (`eval_split: valid`) or the official test split (`eval_split: test`) | `validation` (5000), `eval_split` (valid) |
| `synthetic` | seeded Criteo-like rows (recis.datasets.synthetic), written once to the cache as Parquet | rows `[0, rows)` and the next `eval_rows` | `rows`, `eval_rows`, and the fields of `CriteoLikeConfig` but `dense_type` |
| `criteo` | Criteo text files (TSV, or CSV with a header; `.gz` too) | `data.train`, `data.eval` | none |
| `avazu` | Avazu CSV files | `data.train`, `data.eval` | none |

With `data.on_error: skip`, a file in data.train / data.eval that is not in the dataset's text
format (a README) is left out and counted in the job's `files_skipped`.

`features: <dataset>` (the default when `data.dataset` is set) uses the dataset's suggested
feature config. The cache is the datasets' (`$RECIS_CACHE_DIR`, see recis.datasets.cache_dir).

>>> sorted(DATASETS)
['avazu', 'criteo', 'fashion_mnist', 'movielens', 'synthetic']
"""
import abc
import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional, Tuple

from recis.config_utils import bounded, check_fields, check_types, check_value, from_mapping
from recis.io.errors import IOStats

__all__ = ["DATASETS", "JobDataset", "SyntheticRows", "dataset"]


class JobDataset(abc.ABC):
    """How a job gets one built-in dataset: `check(data)` validates the data section for it,
    `sources(data)` gives (train, eval or None) for ArrowDataset, `feature_config(data)` its
    suggested features. `reads_files`: train and eval come from data.train / data.eval."""

    name = ""
    reads_files = False

    def check(self, data) -> None:
        if data.options:
            raise ValueError(f"data.options: dataset {self.name!r} takes no options, got {sorted(data.options)}")

    @abc.abstractmethod
    def sources(self, data, stats: Tuple[Optional[IOStats], Optional[IOStats]] = (None, None)
                ) -> Tuple[Any, Optional[Any]]:
        """(train, eval or None); files left out while listing them (data.on_error: skip) are
        counted in stats[0] / stats[1]."""

    @abc.abstractmethod
    def feature_config(self, data) -> Dict:
        """The dataset's suggested feature-engine config."""


class MovieLens(JobDataset):
    name = "movielens"

    def check(self, data):
        super().check(data)
        from recis.datasets import movielens

        if data.split not in movielens.SPLITS:
            raise ValueError(f"data.split must be one of {movielens.SPLITS}, got {data.split!r}")

    def sources(self, data, stats=(None, None)):
        from recis.datasets import movielens

        files = movielens.load(split=data.split, seed=data.seed)
        return str(files.train), str(files.test)

    def feature_config(self, data):
        from recis.datasets import movielens

        return movielens.feature_config()


@dataclass
class FashionMNISTOptions:
    """`data.options` of `fashion_mnist`: the items held out of the official train split for
    validation, and which split a job evaluates on."""

    validation: int = bounded(5000, ge=1, lt=60_000)
    eval_split: str = "valid"

    def __post_init__(self):
        check_types(self, "data.options")
        if self.eval_split not in ("valid", "test"):
            raise ValueError(f"data.options.eval_split must be 'valid' or 'test', got {self.eval_split!r}")


class FashionMNIST(JobDataset):
    name = "fashion_mnist"

    def check(self, data):
        from_mapping(FashionMNISTOptions, data.options, "data.options")

    def sources(self, data, stats=(None, None)):
        from recis.datasets import fashion_mnist

        options = from_mapping(FashionMNISTOptions, data.options, "data.options")
        files = fashion_mnist.load(validation=options.validation, seed=data.seed)
        return str(files.train), str(files.valid if options.eval_split == "valid" else files.test)

    def feature_config(self, data):
        from recis.datasets import fashion_mnist

        return fashion_mnist.feature_config()


@dataclass
class SyntheticRows:
    """How many rows a synthetic job trains and evaluates on (the rest of `data.options` is the
    generator's CriteoLikeConfig)."""

    rows: int = bounded(200_000, ge=1)
    eval_rows: int = bounded(20_000, ge=0)

    def __post_init__(self):
        check_types(self, "data.options")


class Synthetic(JobDataset):
    """Generated once per (options, seed) into `<cache>/synthetic-criteo/<digest>/{train,eval}`;
    the generator's seed is `data.seed` unless `data.options.seed` sets it."""

    name = "synthetic"
    _FORMAT = 2  # bump when the files written for the same options change

    @staticmethod
    def _split(data):
        from recis.datasets.synthetic import CriteoLikeConfig

        names = {f.name for f in fields(SyntheticRows)}
        generator = {f.name for f in fields(CriteoLikeConfig) if f.name != "dense_type"}
        options = dict(data.options)
        unknown = sorted(set(options) - names - generator)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in data.options (known: {sorted(names | generator)})")
        rows = from_mapping(SyntheticRows, {k: v for k, v in options.items() if k in names}, "data.options")
        gen = {k: v for k, v in options.items() if k in generator}
        gen.setdefault("seed", data.seed)
        check_fields(CriteoLikeConfig, gen, "data.options")
        try:
            config = CriteoLikeConfig(**gen)
        except (TypeError, ValueError) as e:  # what involves several options (cardinalities' length)
            raise type(e)(f"data.options: {e}") from None
        return rows, config

    def check(self, data):
        self._split(data)

    def feature_config(self, data):
        from recis.datasets import criteo

        _, config = self._split(data)
        return criteo.feature_config(config.num_dense, config.num_sparse)

    def sources(self, data, stats=(None, None)):
        from recis.datasets import cache_dir
        from recis.datasets._cache import atomic_directory
        from recis.datasets.synthetic import CriteoLike

        rows, config = self._split(data)
        key = json.dumps({"format": self._FORMAT, "rows": asdict(rows),
                          "config": {f.name: str(getattr(config, f.name)) for f in fields(config)}}, sort_keys=True)
        root = cache_dir() / "synthetic-criteo" / hashlib.sha256(key.encode()).hexdigest()[:16]
        gen = CriteoLike(config)
        parts = {"train": (0, rows.rows), "eval": (rows.rows, rows.eval_rows)}
        for part, (start, n) in parts.items():
            if n and not (root / part).is_dir():
                # row groups of at most 16k rows and at least 64 per split (up to 1k rows each), so
                # that the ranks of a job get balanced shares (recis.io splits files by row group)
                group = min(16 * 1024, max(1024, -(-n // 64)))
                with atomic_directory(root / part) as tmp:
                    gen.write_parquet(tmp, n, start=start, row_group_size=group)
                    (tmp / "_CONFIG.json").write_text(key)  # "_" names are not data (recis.io.files)
        return str(root / "train"), (str(root / "eval") if rows.eval_rows else None)


class _TextFiles(JobDataset):
    reads_files = True
    module = ""

    def _module(self):
        import importlib

        return importlib.import_module(f"recis.datasets.{self.module}")

    def check(self, data):
        super().check(data)
        if data.train is None:
            raise ValueError(f"data.dataset {self.name!r} reads its files from data.train (and data.eval): "
                             f"give data.train (files or directories)")
        if data.format is not None:
            raise ValueError(f"data.format is not used with data.dataset {self.name!r} (its reader knows the format)")

    def sources(self, data, stats=(None, None)):
        mod = self._module()
        train = mod.dataset(data.train, on_error=data.on_error, stats=stats[0])
        return train, (mod.dataset(data.eval, on_error=data.on_error, stats=stats[1]) if data.eval is not None
                       else None)

    def feature_config(self, data):
        return self._module().feature_config()


class Criteo(_TextFiles):
    name = module = "criteo"


class Avazu(_TextFiles):
    name = module = "avazu"


_ALL = (MovieLens(), FashionMNIST(), Synthetic(), Criteo(), Avazu())
#: data.dataset name -> its JobDataset (the one list of the datasets a job accepts).
DATASETS: Dict[str, JobDataset] = {d.name: d for d in _ALL}


def dataset(name: str, where: str = "data.dataset") -> JobDataset:
    """The JobDataset of `name`, or an error naming `where` and the accepted names."""
    check_value(where, name, str)
    if name not in DATASETS:
        raise ValueError(f"{where} must be one of {sorted(DATASETS)} or null, got {name!r}")
    return DATASETS[name]
