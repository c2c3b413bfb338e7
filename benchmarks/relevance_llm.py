"""Generative relevance judges on the MovieLens retrieval test bed: SFT, SFT+DPO, GRPO (with
context), TaoSR1, TaoSR-AGRL, TaoSR-SHE and DyKnow-RAG (SFT base and DPO base), next to EBRM (with
and without QE pretraining) and the plain cross-encoder, on one held-out-query split, three seeds.

The task (docs/relevance_task.md, "Retrieval test bed"): every row carries one retrieved chunk
(BM25 over one sentence per movie; `Settings.noise` of the rows get a noisy chunk, the natural
wrong top-1s included). Every judge reads the with-context prompt (query, title, year and the
chunk; no genres) and writes the structured rationale (label, context decision, rule checks:
format post_cot_context). Each method is one entry of `relevance_methods.METHODS` (its stages:
stage YAMLs of examples/ with overrides); the stages a seed needs are trained once and shared
(every judge starts from the same SFT stage). Every post-SFT stage gets `stage_steps` optimizer
steps; the learning rates are `Settings`' (chosen on the validation queries with `--tune`, never
on the test queries). A method whose code is not in this checkout is skipped, with the reason.

Scores: the test queries (>= 100), label-only decoding, accuracy, macro-F1 and per-class F1
overall and per slice (helpful / noisy chunk, head / tail item, negation queries), and each
method's training wall time (its stages', the shared ones included). Three seeds (model init,
data order, sampling): mean (min..max). Usage:

    python benchmarks/relevance_llm.py --json relevance_llm.json      # the table (see BENCHMARKS.md)
    python benchmarks/relevance_llm.py --methods sft grpo dyknow_sft  # some rows only
    python benchmarks/relevance_llm.py --tune --json tune.json        # the validation sweep (seed 0)
    python benchmarks/relevance_llm.py --tune --tune-from tune.json --tune-only dpo_lr  # more of it, reusing tune.json
    python benchmarks/relevance_llm.py --tiny                         # a smoke run (seconds)
    python benchmarks/relevance_llm.py --list                         # the methods and what is missing
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_HERE, "..", "recis")):  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(_HERE))
    sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "plugins", "relevance"))
    sys.path.insert(0, _HERE)

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from relevance_methods import (METHODS, STAGES, SeedRun, method_missing, run_stage_of, stage_signature,  # noqa: E402
                               stages_of, train_encoder)

CLASSES = (1, 2, 3, 4)
KEYS = ("accuracy", "macro_f1", "f1_1", "f1_2", "f1_3", "f1_4")
SLICE_ORDER = ("all", "helpful", "noisy", "head", "tail", "negation")


@dataclass
class Settings:
    """The task, the shared judge options and budget, and the learning rates (validation choices)."""

    queries: int = 400
    per_query: int = 12
    test_fraction: float = 0.3          # 120 test queries
    task_seed: int = 0
    noise: float = 0.3                  # share of rows with a noisy chunk (retrieval test bed)
    prompt: str = "with_context"
    format: str = "post_cot_context"
    tokenizer: Any = "movielens"
    max_prompt_length: int = 96
    max_completion_length: int = 32
    max_new_tokens: int = 28
    sft_epochs: int = 16
    sft_lr: float = 1e-3
    dpo_lr: float = 3e-5
    dpo_beta: float = 0.1
    grpo_lr: float = 1e-4
    grpo_beta: float = 0.02
    agrl_lr: float = 1e-4
    she_lr: float = 1e-4
    dyknow_lr: float = 3e-5
    group_size: int = 4
    dynamic_low: float = 0.0
    dynamic_high: float = 1.0
    max_refills: int = 4
    pool_threshold: float = 0.9          # [ours, validation] the paper keeps confidence < 0.7
    pool_balance: bool = True
    pool_per_stratum: Optional[int] = 60  # rows per (query type, grade, decision) cell of DyKnow's pool at most [I]
    stage_steps: int = 118              # optimizer steps of every post-SFT stage
    stage_epochs: int = 50              # at most this many passes over a post-SFT stage's rows
    max_steps: Optional[int] = None     # per stage, SFT included (smoke runs)
    policy: Optional[Dict[str, Any]] = None  # None: the TaoSR1 example's small Llama
    stage_options: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # per stage {model|trainer|data: ...}
    encoder: Any = "tiny"               # 'tiny' (a small BERT from scratch) or a pretrained spec
    encoder_input: str = "context"      # context: title + chunk (what the judges see) | full: title + genres
    # max_length 80 holds every encoder input (query, title and chunk: 67 tokens at most; at 32, 45 % of
    # the rows lost the chunk's genres)
    # patience 6 / 60 epochs: at patience 3 the tiny encoders stopped on their first plateau (EBRM at
    # lr 3e-4 after 3 epochs) and at 24 epochs one choice still improved at the last epoch
    encoder_options: Dict[str, Any] = field(default_factory=lambda: {"max_epochs": 60, "patience": 6,
                                                                     "max_length": 80})
    encoder_lr: Optional[Dict[str, float]] = field(default_factory=lambda: {"ebrm_qe": 3e-3, "ebrm": 1e-3,
                                                                            "cross_encoder": 1e-4})
    # (the learning rates above: --tune's choices on the validation queries, BENCHMARKS.md; the
    # encoders' for the tiny encoder; None: 1e-3 tiny, relevance_ebrm's defaults pretrained)


def write_files(s: Settings, out: str):
    from recis_relevance.retrieval import ContextConfig
    from recis_relevance.stages import write_task

    return write_task(out, queries=s.queries, per_query=s.per_query, seed=s.task_seed, test_fraction=s.test_fraction,
                      context=ContextConfig(noise=s.noise, seed=s.task_seed))


def score_judge(job, table, prompt: str) -> Dict[str, Dict[str, float]]:
    """{slice: metrics} of a trained judge on `table` under `prompt` (label-only decoding)."""
    from recis_relevance.evaluate import evaluate_slices

    tower = job.model
    saved, saved_decoding = tower.cfg.prompt, tower.cfg.eval_decoding
    try:
        tower.cfg.prompt, tower.cfg.eval_decoding = prompt, "label"
        return evaluate_slices(tower, job.engine, table, batch_size=64, classes=list(CLASSES))
    finally:
        tower.cfg.prompt, tower.cfg.eval_decoding = saved, saved_decoding


def score_predictions(true, pred, table) -> Dict[str, Dict[str, float]]:
    from recis_relevance.evaluate import metrics, slice_masks, slice_metrics

    return {"all": metrics(true, pred, CLASSES), **slice_metrics(true, pred, slice_masks(table), CLASSES)}


def run_seed(s: Settings, methods, files, items, workdir: str, seed: int, split: str = "test",
             log=print, cache: Optional[Dict[Any, SeedRun]] = None) -> Dict[str, Any]:
    """Trains what the methods need for one seed and scores them on `split`: {row key: {slice:
    metrics, "train_seconds": s}}. `cache` (a validation sweep's): stages trained before under the
    same learning rates (`stage_signature`) are taken from it instead of trained again."""
    table = pq.read_table(getattr(files, split))
    run = SeedRun(files, workdir, seed)
    judges = [m for m in methods if m.kind == "judge"]
    for stage in stages_of(judges):
        key = stage_signature(stage.name, s)
        if cache is not None and key in cache:
            run.adopt(stage.name, cache[key])
            continue
        run_stage_of(stage, s, run, log)
        if cache is not None:
            cache[key] = run
    out: Dict[str, Any] = {"_stages": run.info}
    for m in judges:
        seconds = sum(run.seconds[n] for n in m.stages)
        for i, prompt in enumerate(m.prompts):
            key = m.key if i == 0 else f"{m.key}@{prompt}"
            scored = score_judge(run.jobs[m.stages[-1]], table, prompt)
            out[key] = {**scored, "train_seconds": seconds, "items_per_s": scored["all"]["items_per_s"]}
    for m in methods:
        if m.kind != "encoder":
            continue
        r = train_encoder(m, s, files, items, os.path.join(workdir, m.key), seed)
        out[m.key] = {**score_predictions(r["true"], r["pred"], table), "train_seconds": r["train_seconds"],
                      "epochs": r.get("epochs"), "items_per_s": r.get("items_per_s")}
    return out


def spread(values: List[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def summarize(per_seed: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """row -> {slice: {metric: spread}, train_seconds: spread} over the seeds."""
    table: Dict[str, Dict[str, Any]] = {}
    for row in per_seed[0]:
        if row.startswith("_"):
            continue
        entry: Dict[str, Any] = {k: spread([r[row][k] for r in per_seed]) for k in ("train_seconds", "items_per_s")
                                 if all(r[row].get(k) is not None for r in per_seed)}
        for sl in SLICE_ORDER:
            entry[sl] = {k: spread([r[row][sl][k] for r in per_seed]) for k in KEYS + ("items",)}
        table[row] = entry
    return table


def label_of(row: str) -> str:
    key, _, prompt = row.partition("@")
    name = METHODS[key].label
    return f"{name}, no chunk at inference" if prompt == "no_context" else name


def markdown(table: Dict[str, Any], seeds: Sequence[int]) -> str:
    def cell(d):
        return f"{d['mean']:.3f} ({d['min']:.3f}..{d['max']:.3f})"

    lines = ["| method | accuracy | macro-F1 | F1 grade 1 | F1 grade 2 | F1 grade 3 | F1 grade 4 | train s | items/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row, e in table.items():
        speed = f"{e['items_per_s']['mean']:,.0f}" if "items_per_s" in e else "n/a"
        lines.append(f"| {label_of(row)} | " + " | ".join(cell(e["all"][k]) for k in KEYS)
                     + f" | {e['train_seconds']['mean']:.0f} | {speed} |")
    lines += ["", "macro-F1 per slice (rows: " + ", ".join(
        f"{sl} {next(iter(table.values()))[sl]['items']['mean']:.0f}" for sl in SLICE_ORDER[1:]) + ")", "",
        "| method | " + " | ".join(SLICE_ORDER[1:]) + " |", "|---|" + "---|" * (len(SLICE_ORDER) - 1)]
    for row, e in table.items():
        lines.append(f"| {label_of(row)} | " + " | ".join(cell(e[sl]["macro_f1"]) for sl in SLICE_ORDER[1:]) + " |")
    lines.append(f"\nseeds {list(seeds)}; cells: mean (min..max); train s: the method's stages, shared ones included")
    return "\n".join(lines)


def targets(table: Dict[str, Any]) -> Dict[str, Optional[bool]]:
    """The issue's orderings, each None when a row is missing."""
    def m(row, sl="all"):
        return table[row][sl]["macro_f1"]["mean"] if row in table else None

    def ge(a, b, strict=False):
        if a is None or b is None:
            return None
        return a > b if strict else a >= b

    best_judge = max((m(r) for r in table if METHODS[r.partition("@")[0]].kind == "judge"), default=None)
    best_ebrm = max((x for x in (m("ebrm"), m("ebrm_qe")) if x is not None), default=None)
    def speed(row):
        return table[row]["items_per_s"]["mean"] if row in table and "items_per_s" in table[row] else None

    fast = (None if speed("ebrm_qe") is None or speed("cross_encoder") is None
            else speed("ebrm_qe") >= 5 * speed("cross_encoder"))
    return {"EBRM + QE warm items/s >= 5x the cross-encoder's": fast,
            "DyKnow > GRPO (with context) on the noisy slice": ge(m("dyknow_sft", "noisy"), m("grpo", "noisy"), True),
            "DyKnow >= GRPO (with context) on the helpful slice": ge(m("dyknow_sft", "helpful"), m("grpo", "helpful")),
            "DyKnow with context >= without": ge(m("dyknow_sft"), m("dyknow_sft@no_context")),
            "AGRL >= GRPO (macro-F1)": ge(m("agrl"), m("grpo")),
            "SHE >= GRPO (macro-F1)": ge(m("she"), m("grpo")),
            "EBRM + QE >= cross-encoder (macro-F1)": ge(m("ebrm_qe"), m("cross_encoder")),
            "best generative judge >= EBRM (macro-F1)": ge(best_judge, best_ebrm)}


LR_GRID = {"sft_lr": (1e-3, 3e-3), "dpo_lr": (3e-5, 1e-4, 3e-4), "grpo_lr": (1e-4, 3e-4, 1e-3),
           "agrl_lr": (1e-4, 3e-4, 1e-3), "she_lr": (1e-4, 3e-4, 1e-3), "dyknow_lr": (1e-4, 3e-4, 1e-3)}
#: every sweep of --tune, in order: the learning rates, then DyKnow's pool threshold (the paper's 0.7
#: keeps few rows when the SFT judge is over-confident; the sweep says whether that matters here)
GRID = {**LR_GRID, "pool_threshold": (0.7, 0.9, 0.99)}


#: the encoders' learning rate (encoder and head alike for the tiny encoder; the encoder's for a pretrained one)
ENCODER_LR_GRID = {"tiny": (3e-4, 1e-3, 3e-3), "pretrained": (3e-5, 1e-4, 3e-4)}


def _next_on_grid(value: float, up: bool) -> float:
    """The next value of the 1-3-10 grid (..., 1e-4, 3e-4, 1e-3, ...) above or below `value`; a value
    off that grid moves by a factor 3."""
    mantissa = value / 10 ** math.floor(math.log10(value))
    factor = ({1: 3.0, 3: 10 / 3} if up else {1: 0.3, 3: 1 / 3}).get(round(mantissa, 6), 3.0 if up else 1 / 3)
    return float(f"{value * factor:.3g}")


def sweep(key: str, grid: Sequence[float], measure: Callable[[float], Dict[str, Any]],
          previous: Sequence[Dict[str, Any]] = (), extend: bool = False,
          under: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """[{key: value, **measure(value), "under": under}] over `grid`, sorted by value. `under`: the
    other settings the measure depends on; a `previous` row measured under the same ones is taken,
    not measured again (training is deterministic). `extend`: while one end is strictly the best,
    the grid goes on that way (the 1-3-10 grid), twice at most. The choice is the highest
    val_macro_f1 (the smaller value on a tie)."""
    done = {row[key]: row for row in previous if row.get("under") == under}
    rows: List[Dict[str, Any]] = []

    def take(value):
        rows.append(done[value] if value in done else {key: value, **measure(value), "under": under})

    for value in grid:
        take(value)
    for _ in range(2 if extend else 0):
        rows.sort(key=lambda x: x[key])
        f1 = [x["val_macro_f1"] for x in rows]
        if f1[0] > max(f1[1:], default=float("-inf")):
            take(_next_on_grid(rows[0][key], up=False))
        elif f1[-1] > max(f1[:-1], default=float("-inf")):
            take(_next_on_grid(rows[-1][key], up=True))
        else:
            break
    return sorted(rows, key=lambda x: x[key])


def tune(s: Settings, methods, files, items, workdir: str, seed: int = 0, log=print,
         only: Optional[Sequence[str]] = None, previous: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The validation sweep: for each setting of GRID (the learning rates in stage dependency
    order, then DyKnow's pool threshold; each from the best values of the ones before; `only`: a
    subset), the validation macro-F1 of the methods whose last stage it is scored through
    (`Stage.tuned`); the best value is kept, and a learning rate best at an end of its grid is
    tried further that way (the 1-3-10 grid, twice at most). `previous` (an earlier sweep's "tune" report
    under the same settings): its measured values are taken, not trained again. Then each
    encoder's learning rate. A stage is trained
    once per setting of its own chain (the shared SFT stage once per SFT learning rate). Never
    reads the test rows."""
    from recis_relevance.stages import TaskFiles

    val_files = TaskFiles(files.train, files.val, files.val, files.counts)
    results: Dict[str, Any] = {}
    cache: Dict[Any, SeedRun] = {}
    best = s
    for key, grid in GRID.items():
        scored = [m for m in methods if m.kind == "judge" and key in STAGES[m.stages[-1]].tuned]
        if not scored or (only is not None and key not in only):
            continue
        def measure(value, key=key, scored=scored):
            trial = replace(best, **{key: value})
            r = run_seed(trial, scored, val_files, items, os.path.join(workdir, f"{key}-{value}"), seed, "val", log,
                         cache)
            f1 = statistics.fmean(r[m.key]["all"]["macro_f1"] for m in scored)
            log(f"tune {key}={value}: val macro-F1 {f1:.4f} ({', '.join(m.key for m in scored)})")
            return {"val_macro_f1": f1}

        depends = sorted(swept_settings_of([m.key for m in scored]) - {key})
        rows = sweep(key, grid, measure, (previous or {}).get(key, []), extend=key in LR_GRID,
                     under={k: getattr(best, k) for k in depends})
        best = replace(best, **{key: max(rows, key=lambda x: x["val_macro_f1"])[key]})
        results[key] = rows
    chosen_lr: Dict[str, float] = dict(best.encoder_lr or {})
    val_table = pq.read_table(files.val)
    for m in methods:
        if m.kind != "encoder" or (only is not None and f"{m.key}_lr" not in only):
            continue

        def measure_encoder(value, m=m):
            trial = replace(best, encoder_lr={**chosen_lr, m.key: value})
            r = train_encoder(m, trial, val_files, items, os.path.join(workdir, f"{m.key}-{value}"), seed)
            f1 = score_predictions(r["true"], r["pred"], val_table)["all"]["macro_f1"]
            log(f"tune {m.key} lr={value}: val macro-F1 {f1:.4f} (epochs {r.get('epochs')})")
            return {"val_macro_f1": f1, "epochs": r.get("epochs")}

        rows = sweep("lr", ENCODER_LR_GRID["tiny" if s.encoder == "tiny" else "pretrained"], measure_encoder,
                     (previous or {}).get(f"{m.key}_lr", []), extend=True, under={})
        chosen_lr[m.key] = max(rows, key=lambda x: x["val_macro_f1"])["lr"]
        results[f"{m.key}_lr"] = rows
    results["chosen"] = {**{k: getattr(best, k) for k in GRID}, "encoder_lr": chosen_lr or None}
    return results


#: the settings that only the generative judges read (reports of the encoders alone may differ in them)
JUDGE_ONLY = tuple(GRID) + ("dpo_beta", "grpo_beta")


def swept_settings_of(rows: Sequence[str]) -> set:
    """The swept settings (GRID) that the judge rows' stages read."""
    out = set()
    for row in rows:
        m = METHODS.get(row.partition("@")[0])
        if m is not None and m.kind == "judge":
            out.update(k for st in m.stages for k in STAGES[st].tuned)
    return out


def merge(paths: Sequence[str], out: Optional[str] = None) -> int:
    """One table from several reports: other seeds (one process per seed) and other methods of a
    seed (e.g. the encoders run beside the judges' sweep). Their task and settings must agree,
    except the judges' settings in a report without judge rows and a swept setting (GRID) that
    only one side's rows read; a row of one seed in two reports is refused. The merged settings
    take each swept setting from a report whose rows read it."""
    reports = []
    for path in paths:
        with open(path) as fh:
            reports.append(json.load(fh))

    def has_judges(r):
        return any(k in METHODS and METHODS[k].kind == "judge" for row in r["per_seed"] for k in row)

    reads = [swept_settings_of({k for row in r["per_seed"] for k in row}) for r in reports]
    lead = next((i for i, r in enumerate(reports) if has_judges(r)), 0)
    settings = dict(reports[lead]["settings"])
    for key in GRID:
        readers = [r["settings"].get(key) for r, keys in zip(reports, reads) if key in keys]
        if readers:
            settings[key] = readers[0]
    for path, r, keys in zip(paths, reports, reads):
        skip = set(GRID) - keys if has_judges(r) else set(JUDGE_ONLY)
        differ = sorted(k for k in set(r["settings"]) | set(settings)
                        if k not in skip and r["settings"].get(k) != settings.get(k))
        if differ or r["task"] != reports[lead]["task"]:
            raise ValueError(f"{path} and {paths[lead]} differ in settings {differ or ''} or task; "
                             "merge runs of one setting")
    by_seed: Dict[int, Dict[str, Any]] = {}
    for path, r in zip(paths, reports):
        if len(r["seeds"]) != len(r["per_seed"]):
            raise ValueError(f"{path}: {len(r['seeds'])} seeds but {len(r['per_seed'])} per-seed results")
        for seed, rows in zip(r["seeds"], r["per_seed"]):
            into = by_seed.setdefault(seed, {})
            clash = sorted(k for k in rows if not k.startswith("_") and k in into)
            if clash:
                raise ValueError(f"{path}: seed {seed} rows {clash} are in another report too")
            into.update({k: v for k, v in rows.items() if not k.startswith("_")})
            into.setdefault("_stages", {}).update(rows.get("_stages", {}))
    seeds = sorted(by_seed)
    per_seed = [by_seed[sd] for sd in seeds]
    missing = {sd: sorted(set(per_seed[0]) ^ set(by_seed[sd])) for sd in seeds if set(by_seed[sd]) != set(per_seed[0])}
    if missing:
        raise ValueError(f"the seeds do not have the same rows: {missing}")
    table = summarize(per_seed)
    report = {**reports[lead], "settings": settings, "seeds": seeds, "per_seed": per_seed, "table": table,
              "targets": targets(table),
              "seconds": sum(r["seconds"] for r in reports), "merged_from": [os.path.basename(p) for p in paths]}
    print(markdown(table, seeds))
    print("\ntargets: " + json.dumps(report["targets"]))
    if out:
        with open(out, "w") as fh:
            json.dump(report, fh, indent=1, default=str)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tune", action="store_true", help="the validation sweep of the learning rates (seed 0)")
    p.add_argument("--tune-only", nargs="+", choices=list(GRID) + [f"{k}_lr" for k, m in METHODS.items()
                                                                     if m.kind == "encoder"], metavar="KEY",
                   help="with --tune: sweep only these settings (the others at their Settings values)")
    p.add_argument("--tune-from", metavar="JSON", help="with --tune: an earlier sweep's report (same settings): its "
                   "measured values are reused, only the missing ones are trained")
    p.add_argument("--tiny", action="store_true", help="a smoke run: small task and model, 2 steps per stage, one seed")
    p.add_argument("--list", action="store_true", help="the methods, and why a method is skipped")
    p.add_argument("--encoder", default="tiny", help="EBRM / cross-encoder encoder: 'tiny' or a pretrained spec")
    p.add_argument("--encoder-input", choices=("context", "full"), default="context")
    p.add_argument("--noise", type=float, default=None, help="share of noisy chunks (default 0.3)")
    p.add_argument("--max-steps", type=int, default=None, help="cap every stage at this many steps (pilots)")
    p.add_argument("--stage-epochs", type=int, default=None, help="at most this many passes per post-SFT stage")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this small model)")
    p.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary directory)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="one table from the reports of separate runs (e.g. "
                   "one process per seed: --seeds 0 --json s0.json, ...), printed and written to --json")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.json)
    torch.set_num_threads(args.threads)
    s = Settings(encoder=args.encoder, encoder_input=args.encoder_input)
    if args.encoder != "tiny":  # the encoder_lr defaults are the tiny encoder's; a pretrained one: its own (--tune)
        s = replace(s, encoder_lr=None)
    if args.noise is not None:
        s = replace(s, noise=args.noise)
    if args.max_steps is not None:
        s = replace(s, max_steps=args.max_steps)
    if args.stage_epochs is not None:
        s = replace(s, stage_epochs=args.stage_epochs)
    seeds = args.seeds
    if args.tiny:
        s = replace(s, queries=24, per_query=8, sft_epochs=1, max_steps=2, stage_epochs=1, group_size=2,
                    pool_balance=False,
                    policy={"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                       "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                                       "max_position_embeddings": 160}},
                    encoder_options={"max_epochs": 1, "patience": 1, "qe_max_epochs": 1})
        seeds = seeds[:1]
    methods, skipped = [], {}
    for key in args.methods:
        why = method_missing(METHODS[key])
        if why:
            skipped[key] = why
            print(f"skip {METHODS[key].label}: {why}", flush=True)
        else:
            methods.append(METHODS[key])
    if args.list:
        for key in args.methods:
            print(f"{key:14s} {METHODS[key].label:32s} {'runs' if key not in skipped else 'skipped'}")
        return 0
    from recis_relevance.task import movielens_items

    items = movielens_items()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recis-relevance-llm-") as tmp:
        root = args.workdir or tmp
        files = write_files(s, os.path.join(root, "data"))
        print(f"task: {files.counts}", flush=True)
        if args.tune:
            previous = None
            if args.tune_from:
                with open(args.tune_from) as fh:
                    previous = json.load(fh)["tune"]
            report: Dict[str, Any] = {"tune": tune(s, methods, files, items, os.path.join(root, "tune"),
                                                   only=args.tune_only, previous=previous)}
            print(json.dumps(report, indent=1))
        else:
            per_seed = []
            for seed in seeds:
                r = run_seed(s, methods, files, items, os.path.join(root, f"seed{seed}"), seed)
                per_seed.append(r)
                print(f"seed {seed}: " + json.dumps({k: round(v["all"]["macro_f1"], 4) for k, v in r.items()
                                                      if not k.startswith("_")}), flush=True)
            table = summarize(per_seed)
            report = {"settings": asdict(s), "task": files.counts, "seeds": seeds, "skipped": skipped,
                      "per_seed": per_seed, "table": table, "targets": targets(table),
                      "seconds": time.perf_counter() - t0}
            print(f"\nMovieLens retrieval test bed: {files.counts}; {torch.get_num_threads()} torch thread(s); "
                  f"{report['seconds']:.0f}s\n")
            print(markdown(table, seeds))
            print("\ntargets: " + json.dumps(report["targets"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
