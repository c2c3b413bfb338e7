"""EBRM on the MovieLens relevance task, end to end:

1. builds the graded task from the MovieLens-1M movies (cached by recis.datasets.movielens);
2. builds the job of examples/ebrm_movielens.yaml (feature engine with text pass-through and
   hashed ids, the `ebrm` tower from the relevance plugin, sparse + dense optimizers);
3. pretrains the QE module on labels generated from (simulated) click logs;
4. trains through the recis Trainer (`Job.train`, what `recis train` runs);
5. reports accuracy / macro-F1 and items/s with a cold and a warm QE cache, one explained
   prediction and one intervention.

    python examples/ebrm_movielens.py            # all-MiniLM-L6-v2, a few minutes on 2 cores
    python examples/ebrm_movielens.py --small    # tiny random BERT, seconds (what the tests run)
"""
import argparse
import json
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny random BERT and a small task (tests)")
    p.add_argument("--out", default="runs/ebrm_movielens", help="run directory (task files, logs, checkpoints)")
    p.add_argument("--queries", type=int, default=None)
    p.add_argument("--per-query", type=int, default=12)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--pretrain-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from recis.datasets import movielens
    from recis.run import Job, RunConfig
    from recis_relevance.evaluate import evaluate
    from recis_relevance.pretrain import pretrain_qe, qe_labels_from_logs, simulate_click_logs
    from recis_relevance.task import build_task, movie_items, tiny_encoder_options
    from recis_relevance.tower import EntityOverride

    out = Path(args.out)
    files = movielens.load("random")
    items = movie_items(pq.read_table(files.train, columns=["item_id", "title", "year", "genres"]))
    queries = args.queries or (40 if args.small else 300)
    task = build_task(items, queries=queries, per_query=args.per_query, seed=args.seed)
    (out / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(task.train, out / "data" / "train.parquet")
    pq.write_table(task.test, out / "data" / "test.parquet")

    cfg = RunConfig.from_yaml(str(HERE / "ebrm_movielens.yaml"))
    cfg.data.train, cfg.data.eval = str(out / "data" / "train.parquet"), str(out / "data" / "test.parquet")
    cfg.trainer.log_dir, cfg.checkpoint.dir = str(out), str(out / "checkpoints")
    if args.epochs is not None:
        cfg.trainer.epochs = args.epochs
    if args.small:
        cfg.model.args.update(tiny_encoder_options(task))
        cfg.optim.dense["lr"] = 1e-3
    job = Job(cfg)
    tower = job.model

    entities = dict(zip(task.train["item_id"].to_pylist(), task.train["entities"].to_pylist()))
    qe_labels = qe_labels_from_logs(simulate_click_logs(task.train, seed=args.seed), entities)
    pretrain_loss = pretrain_qe(tower, qe_labels, epochs=args.pretrain_epochs,
                                lr=1e-3 if args.small else 5e-5, seed=args.seed)
    trained = job.train()

    classes = list(range(1, 5))
    tower.clear_cache()
    tower.cache.reset_stats()
    cold = evaluate(tower, job.engine, task.test, classes=classes)
    tower.cache.reset_stats()
    warm = evaluate(tower, job.engine, task.test, classes=classes)
    warm["cache_hit_rate"] = tower.cache.hit_rate

    row = task.test.slice(0, 1).to_pylist()[0]
    ids = job.engine(task.test.slice(0, 1)).sparse  # the hashed ids of that row
    explained = tower.explain(row["query"], row["entities"], ids)
    first_genre = next(e for e in row["entities"] if e.startswith("genre: "))
    with tower.intervene(EntityOverride(first_genre, 0.0, head=1)):
        intervened = tower.explain(row["query"], row["entities"], ids)
    result = {"qe_pretrain": {"labels": len(qe_labels), "loss": pretrain_loss},
              "train": {k: v for k, v in trained.items() if isinstance(v, float)},
              "test_cold_cache": cold, "test_warm_cache": warm,
              "example": {"query": row["query"], "entities": row["entities"], "label": row["label"],
                          "explained": explained, f"with {first_genre} level-1 score forced to 0": intervened}}
    (out / "ebrm_result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({"test_cold_cache": cold, "test_warm_cache": warm}, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
