"""EBRM on the MovieLens relevance task, end to end:

1. builds the graded task from the MovieLens-1M movies (cached by recis.datasets.movielens);
2. builds the job of examples/ebrm_movielens.yaml (feature engine with text pass-through and
   hashed ids, the `ebrm` tower from the relevance plugin, sparse + dense optimizers);
3. pretrains the QE module as a recis job (the same tower with `objective: qe`, checkpointed
   under <out>/qe) on per-head labels from (simulated) click logs and the constraints the
   training queries state (recis_relevance.qe_stage);
4. trains the relevance job from the QE stage's checkpoint (`checkpoint.init_from`) through the
   recis Trainer (`Job.train`, what `recis train` runs);
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

    import yaml

    from recis.datasets import movielens
    from recis.run import RunConfig
    from recis.run.stages import run_stage
    from recis_relevance.evaluate import evaluate
    from recis_relevance.qe_stage import qe_job_values, relevance_job_values, write_qe_files
    from recis_relevance.task import NEAR, build_task, movie_items, tiny_encoder_options
    from recis_relevance.tower import EntityOverride

    out = Path(args.out)
    files = movielens.load("random")
    items = movie_items(pq.read_table(files.train, columns=["item_id", "title", "year", "genres"]))
    queries = args.queries or (40 if args.small else 300)
    task = build_task(items, queries=queries, per_query=args.per_query, seed=args.seed)
    (out / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(task.train, out / "data" / "train.parquet")
    pq.write_table(task.test, out / "data" / "test.parquet")
    qe_files = write_qe_files(task.train, str(out / "data"), grades=4, seed=args.seed, near=NEAR)

    values = yaml.safe_load((HERE / "ebrm_movielens.yaml").read_text())
    values["data"].update(train=str(out / "data" / "train.parquet"), eval=str(out / "data" / "test.parquet"))
    if args.epochs is not None:
        values["trainer"]["epochs"] = args.epochs
    if args.small:
        values["model"].update(tiny_encoder_options(task))
        values["optim"]["dense"]["lr"] = 1e-3
    # stage 1: QE pretraining (resumes its own checkpoints when rerun into the same --out)
    qe = run_stage(RunConfig.from_dict(qe_job_values(values, qe_files["train"], str(out / "qe"),
                                                     epochs=args.pretrain_epochs), str(HERE)))
    # stage 2: the relevance job, from the QE stage's final weights
    done = run_stage(RunConfig.from_dict(relevance_job_values(values, str(out / "relevance"),
                                                              str(out / "qe" / "checkpoints")), str(HERE)))
    job, trained = done["job"], done["result"]
    tower = job.model
    pretrain_loss = qe["result"].get("train_seconds")

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
    result = {"qe_pretrain": {"labels": qe_files["train_rows"], "labelled_heads": qe_files["train_labelled_heads"],
                              "steps": qe["job"].trainer.step, "train_seconds": pretrain_loss},
              "train": {k: v for k, v in trained.items() if isinstance(v, float)},
              "test_cold_cache": cold, "test_warm_cache": warm,
              "example": {"query": row["query"], "entities": row["entities"], "label": row["label"],
                          "explained": explained, f"with {first_genre} level-1 score forced to 0": intervened}}
    (out / "ebrm_result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({"test_cold_cache": cold, "test_warm_cache": warm}, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
