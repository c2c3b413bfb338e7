"""End-to-end benchmark: DeepFM on MovieLens-1M trained on recis and on its torchrec twin, side by side.

Both twins come from the same job config (examples/movielens_deepfm.yaml: features, embedding dim,
MLP, FM + linear term, row-wise Adagrad for the tables and Adam for the dense part, LRs, batch
size, epochs, seed), read the data through the same ArrowDataset + FeatureEngine path, and are
trained and evaluated by the same recis Trainer and metrics:

* recis:    recis.run.Job, exactly what `make demo` runs (hash tables, row-wise Adagrad as configured);
* torchrec: EmbeddingBagCollections (one table per feature, plus the linear term's) inside
            DistributedModelParallel on one gloo rank, fused EXACT_ROWWISE_ADAGRAD, over a
            vocabulary of every hashed id of train+test built before timing; the id remap
            (searchsorted, in the loader's producer thread) is timed as part of its IO.

Train examples/s include IO and exclude evaluation. Usage:

    python benchmarks/e2e_movielens.py                       # full: 2 epochs on 900k ratings
    python benchmarks/e2e_movielens.py --quick --json out.json  # 1 epoch on a 20% sample
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
if os.path.isdir(os.path.join(_HERE, "..", "recis")):  # run from a checkout without `pip install -e .`
    sys.path.insert(1, os.path.dirname(_HERE))

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from _e2e_torchrec import (TorchrecDeepFM, Vocabulary, dense_parameters, feature_ids,  # noqa: E402
                           init_single_rank_gloo, init_tables, wrap_dmp)

CONFIG = os.path.join(_HERE, "..", "examples", "movielens_deepfm.yaml")
AUC_TOLERANCE, SPEEDUP_TARGET = 0.005, 1.5


@dataclass
class Outcome:
    """One twin's result."""

    name: str
    auc: float
    gauc: float
    logloss: float
    train_examples: int
    train_seconds: float  # fit minus evaluation: IO + training
    wall_seconds: float   # the whole fit, evaluation included
    note: str = ""

    @property
    def examples_per_s(self) -> float:
        return self.train_examples / max(self.train_seconds, 1e-9)


# ----------------------------------------------------------------------------------------------
# config and data
# ----------------------------------------------------------------------------------------------

def load_config(epochs: Optional[int] = None, train=None, test=None, batch_size: Optional[int] = None,
                config_path: str = CONFIG):
    """The demo's RunConfig with logging off and one final evaluation; `train`/`test` replace
    the built-in dataset by files (the feature config stays MovieLens')."""
    import yaml

    from recis.run import RunConfig

    with open(config_path) as f:
        values = yaml.safe_load(f)
    trainer, data = values.setdefault("trainer", {}), values.setdefault("data", {"dataset": "movielens"})
    trainer.update(log_dir=None, eval_every=None, progress=False, tensorboard=False)
    values["checkpoint"] = {"dir": None}
    if epochs is not None:
        trainer["epochs"] = epochs
    if batch_size is not None:
        data["batch_size"] = batch_size
    if train is not None:
        data.update(dataset=None, train=str(train), eval=str(test))
    return RunConfig.from_dict(values, base_dir=os.path.dirname(os.path.abspath(config_path)))


def sample_files(train: str, test: str, fraction: float, out_dir: str, seed: int = 0):
    """`fraction` of the rows of each file (a seeded random subset, order kept) as Parquet in `out_dir`."""
    if not 0 < fraction <= 1:
        raise ValueError(f"sample fraction must be in (0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    paths = []
    for src, name in ((train, "train.parquet"), (test, "test.parquet")):
        table = pq.read_table(src)
        n = max(1, int(round(table.num_rows * fraction)))
        keep = torch.randperm(table.num_rows, generator=gen)[:n].sort().values
        dst = os.path.join(out_dir, name)
        pq.write_table(table.take(keep.numpy()), dst)
        paths.append(dst)
    return paths


# ----------------------------------------------------------------------------------------------
# the two twins
# ----------------------------------------------------------------------------------------------

def timed_fit(name: str, trainer, train, eval_data, note: str = "") -> Outcome:
    """Runs trainer.fit (one final evaluation) and times it; training time excludes evaluation."""
    examples0 = trainer.examples
    t0 = time.perf_counter()
    history = trainer.fit(train, eval_data)
    wall = time.perf_counter() - t0
    final = history[-1]
    return Outcome(name, final["auc"], final.get("gauc", math.nan), final["logloss"],
                   int(trainer.examples - examples0), wall - final["eval_seconds"], wall, note)


def run_recis(cfg) -> Outcome:
    """recis exactly like `recis train examples/movielens_deepfm.yaml`."""
    from recis.run import Job

    job = Job(cfg)
    mode = "fused into backward" if job.sparse_optimizer.fused else "applied in step()"
    return timed_fit("recis", job.trainer, job.train_data, job.eval_data,
                     f"hash tables, {cfg.optim.sparse['name']} {mode}")


class RemappedEngine:
    """The twin's transform: the feature engine, then hashed ids -> vocabulary rows."""

    def __init__(self, engine, vocab: Vocabulary):
        self.engine, self.vocab = engine, vocab

    def __call__(self, data):
        return self.vocab.remap_batch(self.engine(data))


def build_vocabulary(engine, sources: Sequence[str], sparse: Sequence[str]) -> Vocabulary:
    """Every hashed id the engine produces over `sources` (untimed preparation of the twin)."""
    from recis.io import ArrowDataset

    batches = (feature_ids(b) for src in sources
               for b in ArrowDataset(src, batch_size=65536, epochs=1, transform=engine))
    return Vocabulary.from_batches(sparse, batches)


def run_torchrec(cfg) -> Outcome:
    """The torchrec twin of the recis job `cfg` (see the module docstring)."""
    from recis.features import FeatureEngine
    from recis.io import ArrowDataset
    from recis.metrics import AUC, GAUC, Calibration, LogLoss
    from recis.nn.initializers import resolve_initializer
    from recis.run.job import data_files, feature_config
    from recis.run.optimizers import build_optimizer
    from recis.train import Trainer

    sparse_spec, args = dict(cfg.optim.sparse), dict(cfg.model.args)
    if cfg.model.name != "deepfm" or sparse_spec.pop("name") != "rowwise_adagrad":
        raise ValueError(f"the torchrec twin is DeepFM with row-wise Adagrad, got model {cfg.model.name!r} and "
                         f"sparse optimizer {cfg.optim.sparse['name']!r}")
    sparse_spec.pop("fused", None)  # the twin's TBE kernel is always fused
    unsupported = sorted(set(sparse_spec) - {"lr", "eps"})
    if unsupported or "lr" not in sparse_spec:
        raise ValueError(f"the torchrec twin takes optim.sparse lr (required) and eps, got {cfg.optim.sparse}")
    init = resolve_initializer(args.pop("initializer", None)).spec(args.get("embedding_dim", 16))
    if init[0] != "truncated_normal" or init[1] != 0.0:
        raise ValueError(f"the torchrec twin initialises tables truncated-normal with mean 0, got {init}")
    engine = FeatureEngine.from_config(feature_config(cfg))
    sparse = [s.name for s in engine.specs if s.kind == "sparse"]
    train_src, eval_src = data_files(cfg)
    t0 = time.perf_counter()
    vocab = build_vocabulary(engine, [train_src, eval_src], sparse)
    vocab_s = time.perf_counter() - t0
    d = cfg.data
    transform = RemappedEngine(engine, vocab)
    train = ArrowDataset(train_src, format=d.format, batch_size=d.batch_size, shuffle_buffer=d.shuffle_buffer,
                         seed=d.seed, epochs=1, transform=transform, prefetch=d.prefetch)
    eval_data = ArrowDataset(eval_src, format=d.format, batch_size=d.eval_batch_size, epochs=1,
                             transform=transform, prefetch=d.prefetch)
    if cfg.trainer.seed is not None:
        torch.manual_seed(cfg.trainer.seed)
    own_pg = init_single_rank_gloo()
    try:
        model = TorchrecDeepFM(sparse, vocab.rows(), dense_dim=len(engine.dense_names), **args)
        dmp, plan = wrap_dmp(model, lr=sparse_spec.pop("lr"), **sparse_spec)
        init_tables(dmp, std=init[2], cutoff=init[3])
        dense = build_optimizer(cfg.optim.dense, "dense", "optim.dense", dense_parameters(dmp))
        metrics = {"auc": AUC(), "logloss": LogLoss(), "calibration": Calibration()}
        if cfg.trainer.group_key is not None:
            metrics["gauc"] = GAUC()
        trainer = Trainer(dmp, None, dense, metrics=metrics, config=copy.copy(cfg.trainer))
        rows = sum(vocab.rows().values())
        out = timed_fit("torchrec", trainer, train, eval_data,
                        f"DMP 1 gloo rank, {plan}; vocab {rows} rows built in {vocab_s:.1f}s (untimed)")
        if vocab.unseen:
            out.note += f"; {vocab.unseen} ids outside the vocabulary"
        return out
    finally:
        if own_pg:
            torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------

def compare(recis: Outcome, twin: Outcome) -> Dict[str, object]:
    ratio = recis.examples_per_s / max(twin.examples_per_s, 1e-9)
    diff = recis.auc - twin.auc
    return {"speedup": ratio, "auc_diff": diff, "auc_within_tolerance": abs(diff) <= AUC_TOLERANCE,
            "speedup_met": ratio >= SPEEDUP_TARGET}


def markdown(results: Sequence[Outcome], cmp: Dict[str, object]) -> str:
    lines = ["| system | test AUC | GAUC | logloss | train examples/s (IO incl.) | train s | wall s (incl. eval) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.name} | {r.auc:.4f} | {r.gauc:.4f} | {r.logloss:.4f} | {r.examples_per_s:,.0f} | "
                     f"{r.train_seconds:.1f} | {r.wall_seconds:.1f} |")
    lines += ["", f"recis / torchrec examples/s: **{cmp['speedup']:.2f}x** (target >= {SPEEDUP_TARGET}x: "
                  f"{'met' if cmp['speedup_met'] else 'NOT met'})",
              f"AUC recis - torchrec: **{cmp['auc_diff']:+.4f}** (target within +-{AUC_TOLERANCE}: "
              f"{'met' if cmp['auc_within_tolerance'] else 'NOT met'})"]
    lines += [f"- {r.name}: {r.note}" for r in results if r.note]
    return "\n".join(lines)


def run(cfg, order: Sequence[str] = ("recis", "torchrec")):
    runners = {"recis": run_recis, "torchrec": run_torchrec}
    done = {name: runners[name](cfg) for name in order}
    return [done["recis"], done["torchrec"]], compare(done["recis"], done["torchrec"])


def quiet_torchrec() -> None:
    """Silences torchrec's planner/DDP chatter (it would bury the table)."""
    import logging
    import warnings

    for name in ("torchrec", "root", "torch.distributed", "torch.fx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="torchrec")
    warnings.filterwarnings("ignore", module="torch.nn.parallel")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the config's, 2)")
    p.add_argument("--quick", action="store_true", help="1 epoch on a 20%% sample of train and test")
    p.add_argument("--sample", type=float, default=None, help="fraction of the rows to use (--quick: 0.2)")
    p.add_argument("--config", default=CONFIG, help="the recis job config (default: the demo's)")
    p.add_argument("--order", choices=["recis-first", "torchrec-first"], default="recis-first")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    quiet_torchrec()
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else None)
    sample = args.sample if args.sample is not None else (0.2 if args.quick else 1.0)
    order = ("recis", "torchrec") if args.order == "recis-first" else ("torchrec", "recis")
    with tempfile.TemporaryDirectory(prefix="recis-e2e-") as tmp:
        cfg = load_config(epochs, config_path=args.config)
        if sample < 1.0:
            from recis.run.job import data_files

            train, test = sample_files(*data_files(cfg), sample, tmp, seed=cfg.data.seed)
            cfg = load_config(epochs, train, test, config_path=args.config)
        t0 = time.perf_counter()
        results, cmp = run(cfg, order)
        total = time.perf_counter() - t0
    print(f"\nDeepFM on MovieLens-1M, {cfg.trainer.epochs} epoch(s), batch {cfg.data.batch_size}, sample {sample:g}, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"total {total:.0f}s\n")
    print(markdown(results, cmp))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "epochs": cfg.trainer.epochs, "sample": sample,
                       "results": [{**r.__dict__, "examples_per_s": r.examples_per_s} for r in results],
                       **cmp}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
