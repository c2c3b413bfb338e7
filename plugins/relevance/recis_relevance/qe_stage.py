"""EBRM's QE pretraining as a recis job (a stage), and the relevance job that starts from it.

1. `write_qe_files` turns the training queries' (simulated) click logs and the constraints their
   text states into QE rows (`pretrain.qe_head_labels` -> `pretrain.qe_table`): one Parquet file
   for training and, given validation rows, one for choosing the pretraining epochs.
2. `qe_job_values(values, ...)` is the QE stage of a relevance job's values (the dict a job YAML
   holds): the same tower and feature config (so the checkpoint fits the relevance stage), with
   `model.objective: qe`, the `qe_target` pass-through column instead of the label, and the
   `tower` metric (`qe_loss`, `qe_accuracy`); pass-through columns the QE rows lack are left out.
3. The relevance job names the QE stage's checkpoint directory in `checkpoint.init_from`.

Both are ordinary jobs: they checkpoint, resume (`checkpoint.resume: true`) and run with
`recis train`. `pretrain_then_train` runs the two in order (see examples/ebrm_movielens.py).
"""
import copy
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from recis_relevance.pretrain import (movie_query_constraints, qe_head_labels, qe_table, simulate_click_logs)

__all__ = ["write_qe_files", "qe_job_values", "relevance_job_values", "pretrain_then_train"]


def write_qe_files(train: pa.Table, out_dir: str, grades: int = 4, seed: int = 0, sessions_per_query: int = 3,
                   near: Optional[int] = None, log_negatives: str = "match", val: Optional[pa.Table] = None,
                   genres: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """QE rows of the MovieLens task's training queries (and of `val`'s queries, when given):
    simulated click logs (seeded), the log rule and the conflict rule of the constraints each
    query states (`movie_query_constraints` with `near`). Returns the paths and label counts."""
    genres = sorted({g for gs in train["genres"].to_pylist() for g in gs}) if genres is None else list(genres)
    os.makedirs(out_dir, exist_ok=True)
    out: Dict[str, Any] = {}
    for name, table in (("train", train), ("val", val)):
        if table is None:
            continue
        item_entities = dict(zip(table["item_id"].to_pylist(), table["entities"].to_pylist()))
        logs = simulate_click_logs(table, seed=seed, sessions_per_query=sessions_per_query)
        labels = qe_head_labels(logs, item_entities, grades, lambda q: movie_query_constraints(q, genres, near),
                                log_negatives)
        item_of: Dict[str, int] = {}
        for item, ents in item_entities.items():
            for e in ents:
                item_of.setdefault(e, item)
        path = os.path.join(out_dir, f"qe_{name}.parquet")
        pq.write_table(qe_table(labels, item_of), path)
        out[name] = path
        out[f"{name}_rows"] = len(labels)
        out[f"{name}_labelled_heads"] = [sum(t[k] is not None for _, _, t in labels) for k in range(grades)]
    return out


def qe_job_values(values: Mapping[str, Any], qe_train: str, run_dir: str, qe_eval: Optional[str] = None,
                  epochs: Optional[int] = None, lr: Optional[float] = None,
                  target_column: str = "qe_target") -> Dict[str, Any]:
    """The QE stage of the relevance job `values` (see the module docstring): its logs and
    checkpoints under `run_dir`, `epochs` / dense `lr` when given."""
    if not isinstance(values.get("features"), Mapping):
        raise ValueError("qe_job_values needs the relevance job's feature config inline (features: {features: [...]})")
    out = copy.deepcopy(dict(values))
    have = set(pq.read_schema(qe_train).names)
    # the label goes, and so do pass-through columns the QE rows lack (the tower reads query and entities)
    feats = [f for f in out["features"]["features"]
             if f.get("kind") != "label" and not (f.get("kind") == "passthrough" and f.get("column") not in have)]
    if not any(f.get("name") == target_column for f in feats):
        feats.append({"name": target_column, "kind": "passthrough", "column": target_column})
    out["features"] = {**out["features"], "features": feats}
    out["model"] = {**out["model"], "objective": "qe", "qe_target_column": target_column}
    out["data"] = {**out.get("data", {}), "train": qe_train, "eval": qe_eval}
    out["metrics"] = {"tower": None}
    trainer = dict(out.get("trainer", {}))
    trainer.update({"log_dir": run_dir, "progress": False})
    if epochs is not None:
        trainer["epochs"] = epochs
    out["trainer"] = trainer
    ckpt = dict(out.get("checkpoint") or {})
    ckpt.update({"dir": os.path.join(run_dir, "checkpoints"), "init_from": None})
    out["checkpoint"] = ckpt
    if lr is not None:
        out["optim"] = {**out.get("optim", {}), "dense": {**out.get("optim", {}).get("dense", {}), "lr": lr}}
    return out


def relevance_job_values(values: Mapping[str, Any], run_dir: str, init_from: Optional[str] = None) -> Dict[str, Any]:
    """`values` with logs and checkpoints under `run_dir`, starting from `init_from` (the QE
    stage's checkpoint directory)."""
    out = copy.deepcopy(dict(values))
    out["trainer"] = {**out.get("trainer", {}), "log_dir": run_dir, "progress": False}
    out["checkpoint"] = {**(out.get("checkpoint") or {}), "dir": os.path.join(run_dir, "checkpoints"),
                         "init_from": init_from}
    return out


def pretrain_then_train(values: Mapping[str, Any], qe_files: Mapping[str, Any], run_dir: str,
                        qe_epochs: Optional[int] = None, qe_lr: Optional[float] = None, base_dir: str = ".",
                        hooks=()) -> Dict[str, Any]:
    """Runs the QE stage (under `run_dir`/qe) and then the relevance job `values` from its
    checkpoint (under `run_dir`/relevance). Each resumes its own checkpoints when it has some.
    Returns {"qe": run_stage's dict, "relevance": run_stage's dict}."""
    from recis.run import RunConfig
    from recis.run.stages import run_stage

    qe_dir, rel_dir = os.path.join(run_dir, "qe"), os.path.join(run_dir, "relevance")
    qe = run_stage(RunConfig.from_dict(qe_job_values(values, qe_files["train"], qe_dir, qe_files.get("val"),
                                                     qe_epochs, qe_lr), base_dir))
    rel = run_stage(RunConfig.from_dict(relevance_job_values(values, rel_dir, os.path.join(qe_dir, "checkpoints")),
                                        base_dir), hooks)
    return {"qe": qe, "relevance": rel}
