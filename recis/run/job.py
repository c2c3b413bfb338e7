"""Job: builds the whole pipeline of a RunConfig (data -> feature engine -> model -> optimizers -> Trainer)."""
import contextlib
import copy
import inspect
import os
import signal
import sys
import threading
import time
import typing
from typing import Dict, Optional, Tuple

import torch

from recis.config_utils import check_value
from recis.distributed import wrap_dense
from recis.run.config import RunConfig
from recis.run.datasets import DATASETS
from recis.run.optimizers import build_dense_optimizer, build_sparse_optimizer, check_optim

GROUP_COLUMN = "group_id"  # pass-through column that GAUC groups by (the user id for MovieLens)


def stream_dataset(cfg: RunConfig, engine, env):
    """The StreamingArrowDataset of `data.stream` (a streaming job's training data)."""
    from recis.io import StreamingArrowDataset

    d, s = cfg.data, cfg.data.stream
    if cfg.trainer.epochs != 1:
        raise ValueError(f"trainer.epochs is {cfg.trainer.epochs}, but data.stream is read once (each file as it "
                         "lands); leave trainer.epochs at 1 and bound the job with data.stream.until, "
                         "data.stream.stop_after_idle or trainer.max_steps")
    if not os.path.isdir(s.root):
        raise FileNotFoundError(f"data.stream.root {s.root} is not a directory: create the directory the files "
                                "land in (the job waits for them)")
    return StreamingArrowDataset(s.root, windows=s.windows, format=d.format, transform=engine, rank=env.rank,
                                 world_size=env.world_size, poll_interval=s.poll_interval, settle_s=s.settle_s,
                                 marker=s.marker, stop_after_idle=s.stop_after_idle, until=s.until,
                                 **d.loader_options())


@contextlib.contextmanager
def _stop_on_signals(stream):
    """While a streaming job trains (in the main thread), SIGINT and SIGTERM stop its stream at
    the next batch: training ends, and the job saves its checkpoint (with the stream position)."""
    if stream is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def stop(signum, frame):
        print(f"recis: {signal.Signals(signum).name} received; stopping the stream and saving a checkpoint",
              file=sys.stderr, flush=True)
        stream.stop()
        for sig, handler in previous.items():  # a second signal acts as it would have
            signal.signal(sig, handler)

    for sig in signals:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def feature_config(cfg: RunConfig) -> Dict:
    """The feature engine config: a built-in dataset's (recis.run.datasets), a file, or inline."""
    features = cfg.features
    if isinstance(features, str) and features in DATASETS:
        features = DATASETS[features].feature_config(cfg.data)
        if features is not None and cfg.features == "movielens" and cfg.trainer.group_key == GROUP_COLUMN:
            features["features"].append({"name": GROUP_COLUMN, "kind": "passthrough", "column": "user_id"})
    return features


def data_files(cfg: RunConfig, stats=(None, None)) -> Tuple[object, Optional[object]]:
    """(train, eval or None): a built-in dataset's (recis.run.datasets), or data.train / data.eval.
    Files a built-in dataset's reader leaves out (data.on_error: skip) are counted in stats."""
    d = cfg.data
    if d.dataset is not None:
        return DATASETS[d.dataset].sources(d, stats)
    return d.train, d.eval


def _build_model(cfg: RunConfig, engine, models: Dict):
    """A model of recis.models (sparse features, dense_dim and the config's arguments), or an
    installed tower (Tower.from_features with the engine's outputs)."""
    name, args = cfg.model.name, dict(cfg.model.args)
    if name in models:
        check_model_args(models[name].__init__, args)
        sparse_names = [s.name for s in engine.specs if s.kind == "sparse"]
        args.setdefault("dense_dim", len(engine.dense_names))
        build = lambda: models[name](sparse_names, **args)  # noqa: E731
    else:
        from recis.towers import FeatureInfo, available_towers, load_tower

        towers = available_towers()
        if name not in towers:
            raise ValueError(f"model.name must be one of {sorted(models)} or an installed tower "
                             f"(installed towers: {sorted(towers) or 'none'}), got {name!r}")
        cls = load_tower(name)
        check_model_args(cls.from_features, args)
        build = lambda: cls.from_features(FeatureInfo.of_engine(engine), **args)  # noqa: E731
    try:
        return build()
    except (TypeError, ValueError) as e:
        raise type(e)(f"model ({name}): {e}") from None


def check_shards(data, world_size: int) -> None:
    """Training steps in lockstep and stops at the first rank that runs out: a rank without any
    shard unit (a file, or a Parquet row group) would end training before its first step."""
    if world_size > 1:
        units = len(data.units(world_size))
        if units < world_size:
            raise ValueError(f"data.train holds {units} shard unit(s) (files, or Parquet row groups) for {world_size} "
                             f"ranks: a rank without data would stop training before its first step; split the "
                             f"data into at least {world_size} files or row groups")


def check_model_args(fn, args: Dict, where: str = "model") -> None:
    """Checks each argument against the annotation of `fn`'s parameter of that name, naming
    `where.arg` (arguments that `fn` does not name, and unannotated ones, are left to `fn`)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve: nothing to check by
        return
    params = inspect.signature(fn).parameters
    for key, value in args.items():
        if key in params and key in hints:
            check_value(f"{where}.{key}", value, hints[key])


class Job:
    """Everything one `recis train` needs, built from a RunConfig."""

    def __init__(self, cfg: RunConfig):
        from recis.checkpoint import CheckpointManager
        from recis.features import FeatureEngine
        from recis.io import ArrowDataset, IOStats
        from recis.metrics import build_metrics
        from recis.models import MODELS
        from recis.train import Trainer
        from recis.train.outputs import check_metrics

        from recis.distributed import init_from_env

        self.cfg = cfg
        check_optim(cfg.optim)  # every optimizer's name and options, before anything is built
        init_from = cfg.checkpoint.init_from
        if init_from is not None and not os.path.exists(init_from):
            raise FileNotFoundError(f"checkpoint.init_from {init_from} does not exist (relative to the working "
                                    f"directory {os.getcwd()}): give the checkpoint directory of the job to start "
                                    "from, or one of its step-N checkpoints")
        self.env = init_from_env(timeout_s=cfg.distributed.timeout_s)
        if cfg.trainer.seed is not None:
            torch.manual_seed(cfg.trainer.seed)
        self.engine = FeatureEngine.from_config(feature_config(cfg))
        key = cfg.trainer.group_key
        if key is not None and key not in [s.name for s in self.engine.specs if s.kind == "passthrough"]:
            passthrough = [s.name for s in self.engine.specs if s.kind == "passthrough"]
            raise ValueError(f"trainer.group_key {key!r} (GAUC's group) must name a passthrough feature; the "
                             f"features have {passthrough or 'none'}"
                             + (" (with features: movielens, use group_key: group_id)" if cfg.features == "movielens"
                                else ""))
        listed = (IOStats(), IOStats())  # files left out while a built-in dataset lists its files
        train_src, eval_src = data_files(cfg, listed)
        d = cfg.data
        if d.stream is not None:
            self.train_data = stream_dataset(cfg, self.engine, self.env)
        else:
            self.train_data = ArrowDataset(train_src, format=d.format, epochs=1, transform=self.engine,
                                           rank=self.env.rank, world_size=self.env.world_size, **d.loader_options())
        self.eval_data = None
        if eval_src is not None:
            # its own engine (the train engine's prefetch thread may still be running) without augmentation
            # every row once, in order: no shuffle, no dropped last batch
            in_order = dict(d.loader_options(), batch_size=d.eval_batch_size, shuffle_buffer=0, drop_last=False)
            self.eval_data = ArrowDataset(eval_src, format=d.format, epochs=1, transform=self.engine.for_eval(),
                                          rank=self.env.rank, world_size=self.env.world_size, **in_order)
        if d.stream is None:
            check_shards(self.train_data, self.env.world_size)
        for data, early in zip((self.train_data, self.eval_data), listed):
            for path, reason in early.skipped.items():
                if data is not None:
                    data.stats.skip(path, reason, log=False)  # logged when they were left out
        self.model = _build_model(cfg, self.engine, MODELS)
        from recis.towers import Tower

        if self.env.distributed:
            self.model = self._shard(self.model)
        # a tower without hash tables has no sparse optimizer; several dense ones act as one OptimizerSet
        self.sparse_optimizer = build_sparse_optimizer(cfg.optim, self.model)
        self.dense_optimizer = build_dense_optimizer(cfg.optim, self.model, cfg.model.name)
        has_logits = getattr(self.model, "has_logits", True) if isinstance(self.model, Tower) else True
        # a tower without a binary logit (has_logits = False) is evaluated by its values by default
        metrics = build_metrics(cfg.metrics or (None if has_logits else ["tower"]), group_key=cfg.trainer.group_key)
        check_metrics(self.model, metrics, cfg.model.name)
        multiclass = [name for name, m in metrics.items() if m.multiclass]
        if multiclass and not isinstance(self.model, Tower):
            raise ValueError(f"metrics {multiclass} compare predicted classes with the labels: model "
                             f"{cfg.model.name!r} returns logits only; use a tower that returns TowerOutput.predicted")
        valued = [name for name, m in metrics.items() if getattr(m, "tower_values", False)]
        if valued and not isinstance(self.model, Tower):
            raise ValueError(f"metrics {valued} average a tower's TowerOutput.values: model {cfg.model.name!r} "
                             "returns logits only; use a tower that reports values")
        ckpt = CheckpointManager(cfg.checkpoint.dir, keep_last=cfg.checkpoint.keep_last) if cfg.checkpoint.dir \
            else None
        trainer_cfg = copy.copy(cfg.trainer)
        trainer_cfg.checkpoint_every = cfg.checkpoint.every
        trainer_cfg.checkpoint_every_minutes = cfg.checkpoint.every_minutes
        if self.env.rank > 0:  # one set of logs per job (the Trainer reports progress on rank 0 only)
            trainer_cfg.log_dir = None
        self.trainer = Trainer(wrap_dense(self.model, self.env, cfg.distributed.dense), self.sparse_optimizer,
                               self.dense_optimizer, metrics=metrics, config=trainer_cfg, checkpoint=ckpt,
                               env=self.env, pipeline=cfg.distributed.pipeline)
        self.init_checkpoint = None  # the checkpoint whose weights the job started from (checkpoint.init_from)
        if init_from is not None:
            from recis.checkpoint import CheckpointError

            try:
                self.init_checkpoint = self.trainer.init_from(init_from)
            except CheckpointError as e:
                raise type(e)(f"checkpoint.init_from: {e}") from None

    def _shard(self, model):
        from recis.distributed import Planner, shard

        dc = self.cfg.distributed
        planner = Planner(dc.replicate_max_bytes, dc.table_wise_max_bytes, dc.expected_rows, dc.sharding)
        return shard(model, self.env, planner)

    def train(self) -> Dict[str, float]:
        """Trains (resuming from the latest checkpoint when configured) and returns the final
        evaluation plus training throughput."""
        if self.trainer.checkpoint is not None and self.cfg.checkpoint.resume:
            self.trainer.resume(train=self.train_data)
            if self.cfg.data.stream is not None:
                # A stream is one pass that its own state resumes (it never re-reads a file): an
                # earlier run that ended (stopped, idle, or at `until`) leaves what is left to it.
                self.trainer.epoch = 0
        elif self.trainer.checkpoint is not None and self.trainer.checkpoint.latest() is not None:
            raise ValueError(f"checkpoint.dir {self.cfg.checkpoint.dir} holds checkpoints of an earlier run "
                             f"(latest {self.trainer.checkpoint.latest().path.name}) and checkpoint.resume is false: "
                             "set resume: true to continue that run, or give a new or empty directory")
        t0 = time.perf_counter()
        examples0 = self.trainer.examples
        with _stop_on_signals(self.train_data if self.cfg.data.stream is not None else None):
            history = self.trainer.fit(self.train_data, self.eval_data)
        seconds = time.perf_counter() - t0
        ckpt = self.trainer.checkpoint
        if ckpt is not None and self.trainer.step > 0:
            latest = ckpt.latest()
            if latest is None or latest.step != self.trainer.step:  # the job's result, e.g. for the next stage
                self.trainer.save_checkpoint(self.train_data)
        result = dict(history[-1]) if history else {}
        result["train_seconds"] = seconds
        examples = torch.tensor([float(self.trainer.examples - examples0)], dtype=torch.float64)
        result["train_examples"] = float(self.env.all_reduce(examples, what="examples count"))  # all ranks
        result["train_examples_per_s"] = result["train_examples"] / max(seconds - result.get("eval_seconds", 0), 1e-9)
        result["world_size"] = self.env.world_size
        result["files_skipped"] = sum(len(d.stats.skipped) for d in (self.train_data, self.eval_data) if d is not None)
        return result

    def evaluate(self, checkpoint: str = "latest") -> Dict[str, float]:
        if self.trainer.checkpoint is None:
            raise ValueError("evaluate needs checkpoint.dir in the config")
        self.trainer.checkpoint.load(checkpoint, model=self.model)  # the plain module, not a DDP wrapper
        if self.eval_data is None:
            raise ValueError("evaluate needs eval data (data.eval, or a built-in dataset)")
        return self.trainer.evaluate(self.eval_data)
