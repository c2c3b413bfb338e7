"""RunConfig: one YAML file describes a whole job (data, features, model, optimizers, trainer, checkpoints).

>>> cfg = RunConfig.from_dict({"data": {"dataset": "movielens"}, "features": "movielens",
...                            "model": {"name": "deepfm", "embedding_dim": 8}})
>>> cfg.model.name, cfg.optim.sparse["name"], cfg.trainer.epochs
('deepfm', 'rowwise_adagrad', 1)
>>> RunConfig.from_dict({"model": {"name": "deepfm"}, "modle": {}})
Traceback (most recent call last):
...
ValueError: unknown key(s) ['modle'] in config (known: ['checkpoint', 'data', 'distributed', 'features', 'metrics', 'model', 'optim', 'trainer'])
"""
import fnmatch
import os
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Dict, List, Optional, Union

import yaml

from recis.config_utils import bounded, check_types, from_mapping
from recis.distributed.planner import parse_override
from recis.io.base import LoaderOptions
from recis.io.files import FORMATS
from recis.metrics.registry import build_metrics, metric_options
from recis.run.datasets import DATASETS, dataset
from recis.train.config import TrainerConfig

@dataclass
class StreamConfig:
    """`data.stream`: the training data of an online job, read from files as they land under
    `root` (recis.io.StreamingArrowDataset; relative to the job file's directory). `windows`:
    subdirectories read in order (a list, or a glob pattern such as "dt=*"; none: all of root).
    `poll_interval`, `settle_s`, `marker`: when a file counts as complete (recis.io.watch).
    The job ends after `stop_after_idle` seconds without a new file, or once the window `until`
    is closed and read (a later window exists, or `until` holds the marker; docs/online.md);
    with neither it trains until `trainer.max_steps` or a signal (SIGINT, SIGTERM: it saves a
    checkpoint and exits).

    >>> StreamConfig("landing", windows="dt=*", until="dt=2026112723").until
    'dt=2026112723'
    >>> StreamConfig("landing", until="dt=2026112723")
    Traceback (most recent call last):
    ...
    ValueError: data.stream.until names the last window to read; give data.stream.windows (a list of
    subdirectories, or a pattern such as 'dt=*')
    """

    root: str
    windows: Optional[Union[str, List[str]]] = None
    poll_interval: float = bounded(1.0, gt=0)
    settle_s: float = bounded(1.0, ge=0)
    marker: Optional[str] = None
    stop_after_idle: Optional[float] = bounded(None, ge=0)
    until: Optional[str] = None

    def __post_init__(self):
        check_types(self, "data.stream")
        if not self.root:
            raise ValueError("data.stream.root must name the directory the files land in, got ''")
        if self.marker is not None and (not self.marker or "/" in self.marker):
            raise ValueError(f"data.stream.marker must be a file name (e.g. _SUCCESS), got {self.marker!r}")
        if self.until is None:
            return
        if self.windows is None:
            raise ValueError("data.stream.until names the last window to read; give data.stream.windows (a list of "
                             "subdirectories, or a pattern such as 'dt=*')")
        if isinstance(self.windows, str):
            if not fnmatch.fnmatchcase(self.until, self.windows):
                raise ValueError(f"data.stream.until {self.until!r} does not match data.stream.windows "
                                 f"{self.windows!r}")
        elif self.until not in self.windows:
            raise ValueError(f"data.stream.until {self.until!r} is not one of data.stream.windows {self.windows}")


def _loader_option(name: str, default):
    """LoaderOptions' field `name` (its rule) with the job's own default."""
    rule = next(f for f in fields(LoaderOptions) if f.name == name)
    return field(default=default, metadata=rule.metadata)


@dataclass
class DataConfig(LoaderOptions):
    """`dataset` names a built-in dataset (recis.run.datasets: movielens, fashion_mnist, synthetic, criteo,
    avazu; `options` are its options); otherwise `train` and `eval` give files or directories
    (Parquet, ORC or CSV, `format` to force one). `split` is MovieLens' (random | time).
    The loader's options are recis.io.LoaderOptions', embedded here (batch_size, drop_last,
    shuffle_buffer, seed, on_error, prefetch, pin_memory, read_batch_size; prefetch defaults to 2
    in a job); evaluation reads `eval_batch_size` rows per batch, in order.
    `on_error: skip` skips (and counts, and logs) the files that cannot be read, such as a README
    in a data directory, and the rows whose image (or tensor) feature cannot be decoded, instead of
    stopping (recis.io). `stream` (a StreamConfig) makes the job an online one: its training data
    are the files landing in `stream.root`, in place of `train` (see docs/online.md)."""

    prefetch: int = _loader_option("prefetch", 2)
    dataset: Optional[str] = None
    split: str = "random"
    train: Optional[Union[str, List[str]]] = None
    eval: Optional[Union[str, List[str]]] = None
    format: Optional[str] = None
    eval_batch_size: int = bounded(8192, ge=1)
    options: Dict[str, Any] = field(default_factory=dict)
    stream: Optional[Union[StreamConfig, Dict[str, Any]]] = None

    where: ClassVar[str] = "data"

    def __post_init__(self):
        super().__post_init__()  # every option's type and rule, and the loader's checks
        if isinstance(self.stream, dict):
            self.stream = from_mapping(StreamConfig, self.stream, "data.stream")
        if self.stream is not None:
            given = [k for k in ("train", "dataset") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"data.stream and data.{given[0]} are both set: a streaming job trains on the files "
                                 f"landing in data.stream.root; remove data.{given[0]} (data.eval may stay)")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"data.format must be one of {FORMATS} or null (inferred from the file names), "
                             f"got {self.format!r}")
        if self.dataset is None:
            if self.train is None and self.stream is None:
                raise ValueError("data: give either dataset (a built-in one), train (files or a directory) or stream "
                                 "(a directory files land in)")
            if self.options:
                raise ValueError(f"data.options are a built-in dataset's options; no data.dataset is set "
                                 f"(got options {sorted(self.options)})")
            return
        ds = dataset(self.dataset)
        if not ds.reads_files:
            given = [k for k in ("train", "eval", "format") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"data.{given[0]} is not used with data.dataset {self.dataset!r} (it brings its "
                                 f"own data); leave it out, or drop data.dataset to read your own files")
        if self.split != "random" and self.dataset != "movielens":
            raise ValueError(f"data.split is MovieLens' option; data.dataset is {self.dataset!r}")
        ds.check(self)


@dataclass
class ModelConfig:
    """`name` is a key of recis.models.MODELS or an installed tower (entry-point group
    `recis.towers`); the other keys are that model's arguments."""

    name: str = "deepfm"
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ParamRule:
    """One rule of `optim.params`: the dense parameters it takes, by `match` (an fnmatch glob over
    the model's parameter names) or by `group` (a tower's declared parameter group), and the
    `optimizer` ({name: a registered dense optimizer, its options...}) that trains them."""

    optimizer: Dict[str, Any]
    match: Optional[str] = None
    group: Optional[str] = None

    def describe(self) -> str:
        return f"match {self.match!r}" if self.match is not None else f"group {self.group!r}"


@dataclass
class OptimConfig:
    """Optimizers by name (recis.optim.registry: built-in, or installed in the entry-point group
    `recis.optimizers`). `sparse`: the hash tables'; `dense`: every dense parameter that no
    `params` rule takes; `groups`: a tower's declared groups -> their own `dense` options (lr,
    weight_decay, ...); `params`: rules, first match wins, that give parameters their own
    optimizer (recis.run.optimizers; docs/optimizers.md)."""

    sparse: Dict[str, Any] = field(default_factory=lambda: {"name": "rowwise_adagrad", "lr": 0.05})
    dense: Dict[str, Any] = field(default_factory=lambda: {"name": "adam", "lr": 0.001})
    groups: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    params: List[Any] = field(default_factory=list)  # ParamRule, or its mapping (converted here)

    def __post_init__(self):
        check_types(self, "optim")
        for part in ("sparse", "dense"):
            if "name" not in getattr(self, part):
                raise ValueError(f"optim.{part} needs a name")
        for name, spec in self.groups.items():
            if not isinstance(spec, dict):
                raise TypeError(f"optim.groups.{name} must be a mapping (e.g. {{lr: 1e-5}}), got {spec!r}")
        rules = []
        for i, rule in enumerate(self.params):
            where = f"optim.params[{i}]"
            if isinstance(rule, ParamRule):
                check_types(rule, where)
            else:
                rule = from_mapping(ParamRule, rule, where)
            if (rule.match is None) == (rule.group is None):
                raise ValueError(f"{where} needs exactly one of match (a glob over parameter names) or group (a "
                                 f"tower's parameter group), got {'both' if rule.match is not None else 'neither'}")
            if not (rule.match or rule.group):
                raise ValueError(f"{where}.{'match' if rule.match is not None else 'group'} must not be empty")
            if "name" not in rule.optimizer:
                raise ValueError(f"{where}.optimizer needs a name")
            rules.append(rule)
        self.params = rules


@dataclass
class CheckpointConfig:
    """`dir` (none: no checkpoints), the `keep_last` checkpoints kept, one saved `every` N steps
    or `every_minutes` minutes (whichever comes first) and one at the end, and whether a job
    `resume`s from the latest one. `init_from`: a stage's start: another job's checkpoint (its
    checkpoint directory, for its latest checkpoint, or one step-N checkpoint in it) whose model
    weights the job starts from, with fresh optimizers and step 0; applied whenever the job builds, before it resumes its own checkpoints. Both
    paths are relative to the working directory (see docs/checkpoints.md, "Stages")."""

    dir: Optional[str] = None
    keep_last: int = bounded(3, ge=1)
    every: Optional[int] = bounded(None, ge=1)
    every_minutes: Optional[float] = bounded(None, gt=0)
    resume: bool = True
    init_from: Optional[str] = None

    def __post_init__(self):
        check_types(self, "checkpoint")
        if self.init_from is not None and not self.init_from:
            raise ValueError("checkpoint.init_from must name a checkpoint (or null), got ''")


@dataclass
class DistributedConfig:
    """Used when launched by torchrun with more than one rank (ignored in one process).
    `sharding`: table name -> "row_wise" | "replicated" | "table_wise" | "table_wise:RANK";
    `expected_rows`: table name -> expected ids (the planner's size estimate); `dense`: "ddp",
    "fsdp2" or "none"; `timeout_s`: how long a collective waits for a peer before failing;
    `pipeline`: overlap the next batch's ids exchange with the current batch's compute."""

    dense: str = "ddp"
    sharding: Dict[str, str] = field(default_factory=dict)
    expected_rows: Dict[str, int] = bounded(default_factory=dict, ge=0)
    replicate_max_bytes: int = bounded(1 << 20, ge=0)
    table_wise_max_bytes: int = bounded(64 << 20, ge=0)
    timeout_s: float = bounded(300.0, gt=0)
    pipeline: bool = True

    def __post_init__(self):
        check_types(self, "distributed")
        if self.dense not in ("ddp", "fsdp2", "none"):
            raise ValueError(f"distributed.dense must be 'ddp', 'fsdp2' or 'none', got {self.dense!r}")
        for table, spec in self.sharding.items():
            parse_override(spec, f"distributed.sharding.{table}")


@dataclass
class RunConfig:
    data: DataConfig
    features: Union[str, Dict[str, Any], List[Any]]
    model: ModelConfig
    optim: OptimConfig
    trainer: TrainerConfig
    checkpoint: CheckpointConfig
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    base_dir: str = "."
    # name -> options of the metrics evaluations compute (recis.metrics.METRICS); empty: the default set
    metrics: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Dict[str, Any], base_dir: str = ".") -> "RunConfig":
        known = ["checkpoint", "data", "distributed", "features", "metrics", "model", "optim", "trainer"]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in config (known: {known})")
        model = dict(values.get("model") or {})
        name = model.pop("name", "deepfm")
        if not isinstance(name, str):
            raise TypeError(f"model.name must be str, got {type(name).__name__}")
        # Output directories are relative to the working directory; input files to the config file.
        trainer = from_mapping(TrainerConfig, values.get("trainer"), "trainer")
        ckpt = from_mapping(CheckpointConfig, values.get("checkpoint"), "checkpoint")
        data = from_mapping(DataConfig, values.get("data") or {"dataset": "movielens"}, "data")
        if data.stream is not None:
            data.stream.root = _resolve(base_dir, data.stream.root)
        for split in ("train", "eval"):
            paths = getattr(data, split)
            if isinstance(paths, str):
                setattr(data, split, _resolve(base_dir, paths))
            elif paths is not None:
                setattr(data, split, [_resolve(base_dir, p) for p in paths])
        features = values.get("features", data.dataset)
        if features is None:
            raise ValueError("config needs a features section (a feature engine config, a file, or a dataset name)")
        if isinstance(features, str) and features not in DATASETS:
            features = _resolve(base_dir, features)
        metrics = metric_options(values.get("metrics"))
        if metrics:
            build_metrics(metrics)  # each metric's options, checked now
        return cls(data, features, ModelConfig(name, model), from_mapping(OptimConfig, values.get("optim"), "optim"),
                   trainer, ckpt, from_mapping(DistributedConfig, values.get("distributed"), "distributed"), base_dir,
                   metrics)

    @classmethod
    def from_yaml(cls, path: str) -> "RunConfig":
        """Loads a YAML job file (yaml.safe_load: nothing in it is executed)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {path} does not exist")
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
        return cls.from_dict(values, base_dir=os.path.dirname(os.path.abspath(path)))


def _resolve(base_dir: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))
