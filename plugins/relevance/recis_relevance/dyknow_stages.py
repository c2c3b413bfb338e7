"""DyKnow-RAG's stage chain on the MovieLens retrieval test bed (methods.md section 3): the stage
list, the RL pool step and a driver that runs the chain. Used by examples/dyknow_movielens/run.py
and the relevance benchmark.

    SFT (structured rationale, with-context prompt)
      -> pool   (SFT confidence over the four label tokens < 0.7, balanced; a Parquet file)
      [-> DPO   (optional warm start under the with-context prompt; reference = SFT)]
      -> dyknow (dual-group GRPO on the pool)

`dyknow_pipeline(base)` gives the stages: base "sft" (DyKnow on the SFT model) or "dpo" (on the
DPO warm start). The pool step (`write_rl_pool`) reads the SFT judge's label-token confidence on
the training rows under its own prompt (`model.prompt` of the SFT stage: with_context) and keeps
conf < threshold, balanced over (query type, grade, context decision) cells
(`recis.rl.confidence_pool`). The query type of a MovieLens query is ours [I]: "negation" when it
excludes a genre, else "decade" when it names a decade, else "genre". The DPO warm start trains on
the training rows, not on the pool [I: the paper does not say which drafts it samples from].

>>> [(s.name, s.init_from, s.train) for s in dyknow_pipeline("dpo")]
[('sft', None, 'train'), ('pool', 'sft', 'train'), ('dpo', 'sft', 'train'), ('dyknow', 'dpo', 'pool')]
>>> query_type({"avoid_genre": None, "decade": 1990}), query_type({"avoid_genre": "Horror", "decade": None})
('decade', 'negation')
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recis.rl import ConfidenceFilter, check_choice, confidence_pool, label_confidence
from recis.towers.generation import position_ids
from recis.towers.lm_tokens import encode_prompts

__all__ = ["BASES", "POOL_STRATA", "PipelineStage", "dyknow_pipeline", "query_type", "label_confidences",
           "write_rl_pool", "run_pipeline"]

#: what the dyknow stage starts from: the SFT model, or the DPO warm start
BASES = ("sft", "dpo")
#: the strata the RL pool is balanced over (query type, grade, context decision)
POOL_STRATA = ("query_type", "label", "context_decision")


@dataclass(frozen=True)
class PipelineStage:
    """A stage of the chain: `name` (sft, pool, dpo, dyknow), `yaml` (the stage's YAML file name in
    the example directory; None for the pool step), `init_from` (the stage whose checkpoint it
    starts from, or whose judge the pool step reads) and `train` (the rows it trains on: the task's
    training rows, or the pool)."""

    name: str
    yaml: Optional[str]
    init_from: Optional[str]
    train: str


def dyknow_pipeline(base: str = "sft") -> List[PipelineStage]:
    """The stages of DyKnow on the SFT base or the DPO base (see the module doc)."""
    check_choice("base", base, BASES)
    stages = [PipelineStage("sft", "sft.yaml", None, "train"), PipelineStage("pool", None, "sft", "train")]
    if base == "dpo":
        stages.append(PipelineStage("dpo", "dpo.yaml", "sft", "train"))
    stages.append(PipelineStage("dyknow", "dyknow.yaml", base, "pool"))
    return stages


def query_type(row: Mapping) -> str:
    """negation | decade | genre: the kind of a MovieLens query [I]."""
    if row.get("avoid_genre") is not None:
        return "negation"
    return "decade" if row.get("decade") is not None else "genre"


@torch.no_grad()
def label_confidences(tower, rows: Sequence[Mapping], batch_size: int = 64) -> torch.Tensor:
    """[N] the judge's confidence on each row: the maximum of the softmax over the four label
    tokens' logits at the label position (the first completion position) under the judge's own
    prompt (`recis.rl.label_confidence`)."""
    was = tower.training
    tower.eval()
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            enc = encode_prompts(tower.tokenizer, tower.prompts(part), tower.cfg.max_prompt_length)
            ids, mask = enc["input_ids"].to(tower.device), enc["attention_mask"].to(tower.device)
            logits = tower.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, -1]
            out.append(label_confidence(logits, tower.label_ids)[1].cpu())
    finally:
        tower.train(was)
    return torch.cat(out) if out else torch.zeros(0)


def write_rl_pool(tower, rows_path: str, out_path: str, config: Optional[ConfidenceFilter] = None,
                  strata: Sequence[str] = POOL_STRATA, batch_size: int = 64) -> Dict[str, Any]:
    """Writes the RL pool: the rows of `rows_path` (Parquet) whose confidence under the SFT judge
    `tower` is below `config.threshold`, balanced over `strata` (columns, or "query_type"), to
    `out_path`; returns counts {rows, unsure, pool, threshold, mean_confidence}. A pool with no row
    is an error (the next stage would train on nothing): raise the threshold or train SFT less."""
    cfg = config if config is not None else ConfidenceFilter()
    table = pq.read_table(rows_path)
    rows = table.to_pylist()
    conf = label_confidences(tower, rows, batch_size)
    keys = None
    if cfg.balance:
        keys = [tuple(query_type(r) if s == "query_type" else r.get(s) for s in strata) for r in rows]
    kept = confidence_pool(conf, cfg, keys)
    unsure = int((conf < torch.tensor(cfg.threshold, dtype=conf.dtype)).sum())
    if not kept:
        raise ValueError(f"the RL pool is empty: no row of {len(rows)} has SFT confidence < {cfg.threshold} "
                         f"(ConfidenceFilter.threshold); the mean confidence is {float(conf.mean()):.3f}")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    pq.write_table(table.take(pa.array(kept, pa.int64())), out_path)
    return {"rows": len(rows), "unsure": unsure, "pool": len(kept), "threshold": cfg.threshold,
            "mean_confidence": float(conf.mean())}


def run_pipeline(stages: Sequence[PipelineStage], yaml_dir: str, files, out: str,
                 model: Optional[Mapping[str, Any]] = None, trainer: Optional[Mapping[str, Any]] = None,
                 data: Optional[Mapping[str, Any]] = None, pool: Optional[ConfidenceFilter] = None,
                 seed: int = 0, per_stage: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Dict[str, Any]:
    """Runs `stages` (from `dyknow_pipeline`) with the YAMLs of `yaml_dir` on the task files
    `files` (recis_relevance.stages.TaskFiles), each stage under out/<name>, the pool at
    out/data/pool.parquet; `model` / `trainer` / `data` override every stage's options and
    `per_stage[name]` (``{"model": ..., "trainer": ...}``) one stage's. Each stage resumes its own
    checkpoints when run again. Returns {"results": {stage: numbers}, "job": the last stage's Job,
    "pool": the pool counts, "seconds": {stage: training seconds}}."""
    from recis_relevance.stages import TaskFiles, run_stage, stage_config

    out = Path(out)
    results: Dict[str, Any] = {}
    seconds: Dict[str, float] = {}
    jobs: Dict[str, Any] = {}
    pool_path = str(out / "data" / "pool.parquet")
    job = None
    for i, stage in enumerate(stages):
        if stage.name == "pool":
            results["pool"] = write_rl_pool(jobs[stage.init_from].model, files.train, pool_path, pool)
            continue
        extra = dict((per_stage or {}).get(stage.name, {}))
        from recis.run.stages import merge_options

        m = merge_options(model or {}, extra.get("model", {}), replace=("policy", "tokenizer"))
        t = {**(trainer or {}), **extra.get("trainer", {}), "seed": seed + i}
        d = {**(data or {}), **extra.get("data", {})}
        train = pool_path if stage.train == "pool" else files.train
        stage_files = TaskFiles(train, files.val, files.test, files.counts)
        init = None if stage.init_from is None else os.path.join(str(out / stage.init_from), "checkpoints")
        cfg = stage_config(os.path.join(yaml_dir, stage.yaml), stage_files, str(out / stage.name), init_from=init,
                           model=m, trainer=t, data=d)
        done = run_stage(cfg)
        job = jobs[stage.name] = done["job"]
        seconds[stage.name] = done["seconds"]
        results[stage.name] = {k: v for k, v in done["result"].items() if isinstance(v, (int, float))}
    return {"results": results, "job": job, "pool": results.get("pool"), "seconds": seconds}
