"""TaoSR-SHE's multi-stage curriculum and its stage pipeline (methods.md section 5; the binning is
ours [I], the paper's is not public).

After SFT, every training prompt (a task row) gets its SFT pass rate: the share of completions
sampled from the SFT model that are well formed with the gold grade (`pass_rate` "sampled"), or
the SFT model's probability of the gold label token at the label position ("label", cheaper; for
label-first formats). The rows are ordered from easy (high pass rate) to hard and cut into
`stages` contiguous bins of (nearly) equal size: the stages are disjoint, cover every row, and
every row of stage s + 1 is at least as hard as every row of stage s. Stage s is one SHE job on
its bin, starting from stage s - 1's checkpoint (the first from the SFT checkpoint), so the
policy carries over; each stage's reference policy is its own starting weights.

>>> t = pa.table({"query": list("abcdef")})
>>> [s["query"].to_pylist() for s in curriculum_stages(t, [0.5, 1.0, 0.0, 0.75, 0.5, 0.25], 3)]
[['b', 'd'], ['a', 'e'], ['f', 'c']]
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recis.config_utils import bounded, check_types
from recis.rl import check_choice

__all__ = ["PASS_RATES", "CurriculumConfig", "sft_pass_rates", "curriculum_stages", "run_she_pipeline"]

#: how a prompt's SFT pass rate is measured: sampled completions scored, or the gold label's probability
PASS_RATES = ("sampled", "label")


@dataclass
class CurriculumConfig:
    """`pass_rate` (PASS_RATES); "sampled" draws `samples` completions per row at `temperature`
    (at most `max_new_tokens`, None: the model's sampling.max_new_tokens) from a generator seeded
    with `seed`, `batch_size` rows at a time. The number of stages is the number of stage jobs."""

    pass_rate: str = "sampled"
    samples: int = bounded(4, ge=1)
    temperature: float = bounded(1.0, gt=0)
    max_new_tokens: Optional[int] = bounded(None, ge=1)
    seed: int = bounded(0, ge=0, lt=1 << 63)
    batch_size: int = bounded(64, ge=1)

    def __post_init__(self):
        check_types(self, "curriculum")
        check_choice("curriculum.pass_rate", self.pass_rate, PASS_RATES)


@torch.no_grad()
def sft_pass_rates(tower, table: pa.Table, cfg: Optional[CurriculumConfig] = None) -> List[float]:
    """The SFT pass rate of every row of `table` under the judge `tower` (see the module doc)."""
    from recis.towers.generation import sample_groups
    from recis.towers.lm_tokens import encode_prompts

    from recis_relevance.formats import GRADES, score

    cfg = cfg or CurriculumConfig()
    rows = table.to_pylist()
    was_training = tower.training
    tower.eval()
    out: List[float] = []
    try:
        gen = torch.Generator().manual_seed(cfg.seed)
        for i in range(0, len(rows), cfg.batch_size):
            part = rows[i:i + cfg.batch_size]
            prompts, golds = tower.prompts(part), [int(r["label"]) for r in part]
            if cfg.pass_rate == "label":
                p = tower.label_probabilities(prompts)
                out += p.gather(1, torch.tensor(golds, device=p.device).sub(GRADES[0]).unsqueeze(1)).squeeze(1).tolist()
                continue
            enc = encode_prompts(tower.tokenizer, prompts, tower.cfg.max_prompt_length)
            r = sample_groups(tower.model, enc["input_ids"].to(tower.device), enc["attention_mask"].to(tower.device),
                              cfg.samples, cfg.max_new_tokens or tower.cfg.sampling.max_new_tokens,
                              temperature=cfg.temperature, generator=gen, eos_token_id=tower.eos_id,
                              pad_token_id=tower.pad_id)
            texts = tower.decode(r.completion_ids, r.completion_mask)
            scored = score(tower.cfg.format, texts, [g for g in golds for _ in range(cfg.samples)])
            out += scored.rewards.view(len(part), cfg.samples).mean(1).tolist()
    finally:
        tower.train(was_training)
    return out


def curriculum_stages(table: pa.Table, pass_rates: Sequence[float], stages: int) -> List[pa.Table]:
    """`stages` disjoint tables covering `table`'s rows, easy to hard: rows ordered by pass rate
    (highest first; ties in row order) and cut into contiguous bins of n / stages rows (rounded).
    Each table gains the column sft_pass_rate."""
    n = table.num_rows
    if len(pass_rates) != n:
        raise ValueError(f"{len(pass_rates)} pass rates for {n} rows")
    if isinstance(stages, bool) or not isinstance(stages, int) or not 1 <= stages <= max(n, 1):
        raise ValueError(f"curriculum: the number of stages must be an integer in [1, {max(n, 1)}] (the rows), "
                         f"got {stages!r}")
    order = sorted(range(n), key=lambda i: (-float(pass_rates[i]), i))
    cuts = [round(s * n / stages) for s in range(stages + 1)]
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        idx = order[a:b]
        part = table.take(pa.array(idx, type=pa.int64()))
        if "sft_pass_rate" in part.column_names:
            part = part.drop_columns(["sft_pass_rate"])
        out.append(part.append_column("sft_pass_rate", pa.array([float(pass_rates[i]) for i in idx], pa.float64())))
    return out


def run_she_pipeline(out: str, files, sft_yaml: str, stage_yamls: Sequence[str],
                     model: Optional[Mapping[str, Any]] = None, she_model: Optional[Mapping[str, Any]] = None,
                     trainer: Optional[Mapping[str, Any]] = None, data: Optional[Mapping[str, Any]] = None,
                     curriculum: Optional[CurriculumConfig] = None, seed: int = 0,
                     sft_dir: Optional[str] = None) -> Dict[str, Any]:
    """SFT, the SFT pass rates of the training rows, then one SHE job per stage YAML on its
    curriculum bin, each from the previous checkpoint. `files`: `recis_relevance.stages.TaskFiles`
    (train / val / test Parquet files); `model` overrides every stage's model options, `she_model`
    the SHE stages' only (e.g. ``{"she": {"lam": 0.2}}``); `trainer` / `data` every stage's;
    trainer seeds are `seed` + the stage's position. `sft_dir`: a finished SFT run directory to
    start from instead of running sft_yaml (the benchmark shares one SFT among methods).
    Returns {"stages": {name: numeric result}, "curriculum": per-stage rows and mean pass rate,
    "seconds": per stage, "job": the last stage's Job}."""
    from recis.run import Job
    from recis.run.stages import merge_options
    from recis_relevance.stages import SPEC_OPTIONS, TaskFiles, run_stage, stage_config

    out = Path(out)
    model, trainer, data = dict(model or {}), dict(trainer or {}), dict(data or {})
    results: Dict[str, Any] = {"stages": {}, "curriculum": [], "seconds": {}}
    if sft_dir is None:
        sft_dir = str(out / "sft")
        cfg = stage_config(sft_yaml, files, sft_dir, model=model, trainer={**trainer, "seed": seed}, data=data)
        done = run_stage(cfg)
        results["stages"]["sft"] = _numbers(done["result"])
        results["seconds"]["sft"] = done["seconds"]
        sft_tower = done["job"].model
    else:  # the finished SFT weights, loaded as a stage start (nothing is trained or written)
        cfg = stage_config(sft_yaml, files, str(out / "sft_weights"), init_from=os.path.join(sft_dir, "checkpoints"),
                           model=model, trainer={**trainer, "seed": seed}, data=data)
        sft_tower = Job(cfg).model
    train = pq.read_table(files.train)
    rates = sft_pass_rates(sft_tower, train, curriculum)
    bins = curriculum_stages(train, rates, len(stage_yamls))
    previous, job = os.path.join(sft_dir, "checkpoints"), None
    os.makedirs(out / "data", exist_ok=True)
    she_options = merge_options(model, she_model or {}, SPEC_OPTIONS)
    for s, (yaml_path, part) in enumerate(zip(stage_yamls, bins), start=1):
        path = str(out / "data" / f"she_stage{s}.parquet")
        pq.write_table(part, path)
        rate = part["sft_pass_rate"].to_pylist()
        results["curriculum"].append({"stage": s, "rows": part.num_rows, "pass_rate_mean": sum(rate) / max(len(rate), 1),
                                      "pass_rate_min": min(rate, default=0.0), "pass_rate_max": max(rate, default=0.0)})
        stage_files = TaskFiles(path, files.val, files.test, {**files.counts, "train_rows": part.num_rows})
        run_dir = str(out / f"she{s}")
        cfg = stage_config(yaml_path, stage_files, run_dir, init_from=previous, model=she_options,
                           trainer={**trainer, "seed": seed + s}, data=data)
        done = run_stage(cfg)
        job, previous = done["job"], os.path.join(run_dir, "checkpoints")
        results["stages"][f"she{s}"] = _numbers(done["result"])
        results["seconds"][f"she{s}"] = done["seconds"]
    results["job"] = job
    return results


def _numbers(result: Mapping[str, Any]) -> Dict[str, float]:
    return {k: v for k, v in result.items() if isinstance(v, (int, float))}
