"""PUMGPT vs its baselines on Fashion-MNIST: category accuracy on the official test split.

Three models on the same frozen catalogue LM (a small Llama pre-trained on the templates' text,
no images) and the same frozen ViT (SimMIM-pre-trained on train images, no labels), trained by
the same YAML job (`examples/pumgpt_fashion.yaml`, recis.run) on the same instructions:

- text_only: the LM fine-tuned whole on the instructions, without the image;
- prefix: K visual tokens as prefix embeddings (LLaVA-style), the projector sized to PUMGPT's
  trainable-parameter count (`PrefixLM.matching`);
- pumgpt: K visual tokens through zero-initialised gated cross-attention adapters in every layer.

Every contestant, baselines included, is trained to convergence with settings chosen on the
validation split (held-out train items; never the test split):
- the learning rate, per model, from `--lrs` by a short pilot at seed 0 (`--pilot-steps`; the
  best validation category accuracy of its evaluations);
- the number of steps, per model and seed: category accuracy on `--valid-rows` validation items
  every `--eval-every` (K) steps, the best evaluation's trainable weights kept in memory, training
  stopped after `--patience` (P) evaluations without improvement or at `--max-steps`
  (`recis.train.EarlyStopping` with `restore_best`).
Then 3 seeds (the adapters' / projector's init is fixed by the LM's and ViT's seeds; the seed moves
the data order and the instruction sampling) are evaluated once, on the kept weights, on the
official 10,000-item test split (category accuracy by ranking the ten category answers'
log-likelihood; attribute-extraction exact match). Runs go to `--jobs` processes of `--threads`
torch threads. Prints the settings, each run's validation curve and chosen step, and markdown
tables; writes them to benchmarks/results/pumgpt.md (`--out`) after every finished run.

    python benchmarks/pumgpt.py            # the default budget (about 40 min on 2 shared CPU cores)
    python benchmarks/pumgpt.py --quick    # a smoke run (minutes)
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
YAML = ROOT / "examples" / "pumgpt_fashion.yaml"
VARIANTS = ("text_only", "prefix", "pumgpt")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "results" / "pumgpt.md"))
    p.add_argument("--work", default="runs/bench_pumgpt", help="run directory (pre-trained models, jobs)")
    p.add_argument("--max-steps", type=int, default=6000, help="optimizer steps at most per training run")
    p.add_argument("--eval-every", type=int, default=500, help="K: steps between validation evaluations")
    p.add_argument("--patience", type=int, default=2, help="P: stop after P evaluations without improvement")
    p.add_argument("--pilot-steps", type=int, default=500, help="steps of the lr pilot (seed 0, per lr)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lrs", default="0.003,0.01", help="learning rates tried on the validation split")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--tasks", default="category,attributes")
    p.add_argument("--valid-rows", type=int, default=1000, help="validation items (lr pilot and step choice)")
    p.add_argument("--test-rows", type=int, default=None, help="test items (default: all 10,000)")
    p.add_argument("--lm-steps", type=int, default=300)
    p.add_argument("--vit-steps", type=int, default=200)
    p.add_argument("--variants", default=",".join(VARIANTS), help="models compared (a subset of the three)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (1: no oversubscription)")
    p.add_argument("--jobs", type=int, default=2, help="training runs in parallel processes")
    p.add_argument("--quick", action="store_true", help="a smoke run: few steps and rows, one seed")
    args = p.parse_args(argv)
    if args.quick:
        args.max_steps, args.eval_every, args.pilot_steps, args.lrs, args.seeds = 60, 20, 20, "0.003", "0"
        args.valid_rows, args.test_rows, args.lm_steps, args.vit_steps = 100, 200, 60, 30
    if args.pilot_steps % args.eval_every:
        p.error(f"--pilot-steps {args.pilot_steps} must be a multiple of --eval-every {args.eval_every}")
    return args


_CTX = {}


def _init_worker(threads):
    import torch

    torch.set_num_threads(threads)


def _context(args):
    """Per process: the data files, the pre-trained models' paths and the evaluation tables."""
    if not _CTX:
        import pyarrow.parquet as pq

        from recis.datasets import fashion_mnist
        from recis_multimodal.pumgpt.fashion import prepare

        files = fashion_mnist.load()
        models = prepare(str(Path(args.work)), files, lm_steps=args.lm_steps, vit_steps=args.vit_steps,
                         log=lambda *a: None)
        test = pq.read_table(files.test)
        _CTX.update(files=files, models=models, valid=pq.read_table(files.valid).slice(0, args.valid_rows),
                    test=test if args.test_rows is None else test.slice(0, args.test_rows))
    return _CTX


def train_run(args, variant, lr, seed, steps, test):
    """One training run: evaluated on the validation items every `eval_every` steps, stopped after
    `patience` evaluations without improvement (or at `steps`), the best weights kept; then (when
    `test`) the official test split, once, on the kept weights. Returns plain numbers."""
    from recis.run.stages import run_stage
    from recis.train import EarlyStopping
    from recis_multimodal.pumgpt.fashion import evaluate_tower, job_config

    ctx = _context(args)
    name = f"{variant}-lr{lr}-seed{seed}" + ("" if test else "-pilot")
    run_dir = Path(args.work) / "jobs" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # every run trains afresh (the pre-trained models are reused)
    cfg = job_config(str(YAML), ctx["files"].train, None, str(run_dir),
                     model={**ctx["models"], "variant": variant, "tasks": args.tasks.split(","), "seed": seed},
                     trainer={"max_steps": steps, "seed": seed, "epochs": 10 ** 6, "log_every": 50},
                     optim={"dense": {"lr": lr}}, data={"batch_size": args.batch_size, "seed": seed})
    cfg.checkpoint.dir = None  # the best weights are kept in memory by the selection hook
    t0 = time.perf_counter()
    state = {}

    def hooks(job):
        state["sel"] = EarlyStopping(score=lambda tower: evaluate_tower(tower, job.engine, ctx["valid"])["accuracy"],
                                     every=args.eval_every, patience=args.patience if test else 10 ** 9,
                                     restore_best=True)  # the pilot runs its steps (no early stop)
        return [state["sel"]]

    done = run_stage(cfg, hooks=hooks)
    sel = state["sel"]
    out = {"variant": variant, "lr": lr, "seed": seed, "steps_run": done["job"].trainer.step,
           "best_step": sel.best_step, "valid_best": sel.best, "curve": sel.curve, "stopped": sel.stopped,
           "train_examples_per_s": done["examples_per_s"], "seconds": time.perf_counter() - t0}
    tower = done["job"].model
    out["visual_tokens"] = 0 if variant == "text_only" else tower.cfg.pumgpt.num_visual_tokens
    out["trainable"], _, out["share"] = tower.trainable_share()
    if test:
        r = evaluate_tower(tower, done["job"].engine, ctx["test"])
        out.update(accuracy=r["accuracy"], attributes_exact=r["attributes_exact"], items_per_s=r["items_per_s"])
    out["seconds"] = time.perf_counter() - t0
    return out


def _call(task):
    return train_run(*task)


def _curve(r) -> str:
    return " ".join(f"{s}:{v:.3f}" for s, v in r["curve"])


def main(argv=None):
    args = parse(argv)
    import multiprocessing as mp

    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    ctx = _context(args)  # pre-trains the frozen models once (reused from --work when already built)
    shutil.rmtree(Path(args.work) / "jobs", ignore_errors=True)
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    variants = args.variants.split(",")
    settings = {"max_steps": args.max_steps, "eval_every": args.eval_every, "patience": args.patience,
                "pilot_steps": args.pilot_steps, "batch_size": args.batch_size, "lrs": lrs, "seeds": seeds,
                "tasks": args.tasks.split(","), "valid_rows": ctx["valid"].num_rows,
                "test_rows": ctx["test"].num_rows, "lm_steps": args.lm_steps, "vit_steps": args.vit_steps,
                "threads": args.threads, "jobs": args.jobs, "yaml": "examples/pumgpt_fashion.yaml"}
    print("settings:", json.dumps(settings), flush=True)
    pool = mp.get_context("spawn").Pool(args.jobs, initializer=_init_worker, initargs=(args.threads,)) \
        if args.jobs > 1 else None
    imap = pool.imap_unordered if pool is not None else map
    rows = {v: {"pilot": {}, "runs": []} for v in variants}

    def write():
        table = markdown(rows, settings, time.perf_counter() - t_start)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        Path(args.out).write_text(table + "\n")
        return table

    try:
        # the lr pilot: seed 0, `pilot_steps` steps per lr, the best validation accuracy of its evaluations
        tasks = [(args, v, lr, 0, args.pilot_steps, False) for v in variants for lr in lrs]
        for r in imap(_call, tasks):
            rows[r["variant"]]["pilot"][r["lr"]] = r
            print(f"pilot {r['variant']} lr={r['lr']}: valid {_curve(r)} ({r['seconds']:.0f} s)", flush=True)
        for v in variants:
            pilot = rows[v]["pilot"]
            rows[v]["lr"] = max(lrs, key=lambda lr: (pilot[lr]["valid_best"], -lr))  # ties: the smaller lr
        # the runs: the chosen lr, steps chosen on validation, then the test split once
        tasks = [(args, v, rows[v]["lr"], seed, args.max_steps, True) for seed in seeds for v in variants]
        for r in imap(_call, tasks):
            rows[r["variant"]]["runs"].append(r)
            rows[r["variant"]]["runs"].sort(key=lambda x: x["seed"])
            print(f"{r['variant']} lr={r['lr']} seed={r['seed']}: best step {r['best_step']} of {r['steps_run']} "
                  f"({r['stopped']}), valid {_curve(r)}; test accuracy {r['accuracy']:.4f}, attributes exact "
                  f"{r['attributes_exact']:.4f} ({r['seconds']:.0f} s)", flush=True)
            write()
    finally:
        if pool is not None:
            pool.terminate()
    table = write()
    print(table)
    return rows


def _ms(xs):
    m = statistics.mean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:.4f} ± {s:.4f}"


def markdown(rows, settings, seconds) -> str:
    names = {"text_only": "text-only LM (fine-tuned, no image)", "prefix": "prefix tokens (LLaVA-style)",
             "pumgpt": "PUMGPT (gated layer-wise adapters)"}
    s = settings
    lines = [f"Fashion-MNIST, official test split ({s['test_rows']} items), seeds {s['seeds']} (mean ± sample std) "
             f"on tasks {', '.join(s['tasks'])}, batch {s['batch_size']}. Steps chosen on {s['valid_rows']} "
             f"validation items per model and seed: category accuracy every {s['eval_every']} steps, the best "
             f"evaluation's weights kept, stop after {s['patience']} evaluations without improvement or at "
             f"{s['max_steps']} steps; the test split evaluated once, on the kept weights. Learning rate chosen "
             f"per model from {s['lrs']} on the same validation items by a {s['pilot_steps']}-step pilot at seed 0. "
             f"Frozen catalogue LM (Llama, 2 layers, hidden 64, {s['lm_steps']} steps on the templates' text) "
             f"and frozen ViT (SimMIM, {s['vit_steps']} steps, no labels). Total {seconds / 60:.1f} min, "
             f"{s['jobs']} process(es) of {s['threads']} torch thread(s).", "",
             "| model | lr | steps (chosen per seed) | category accuracy | attribute exact match "
             "| visual tokens / image | trainable params (share) | train examples/s | eval items/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for variant, r in rows.items():
        runs = r["runs"]
        if not runs:
            continue
        missing = "" if len(runs) == len(s["seeds"]) else f" ({len(runs)} of {len(s['seeds'])} seeds)"
        lines.append(f"| {names[variant]}{missing} | {r['lr']} | {', '.join(str(x['best_step']) for x in runs)} | "
                     f"{_ms([x['accuracy'] for x in runs])} | {_ms([x['attributes_exact'] for x in runs])} | "
                     f"{runs[0]['visual_tokens']} | {runs[0]['trainable']:,} ({runs[0]['share']:.1%}) | "
                     f"{statistics.mean(x['train_examples_per_s'] for x in runs):.0f} | "
                     f"{statistics.mean(x['items_per_s'] for x in runs):.0f} |")
    lines += ["", "Per run: validation category accuracy at each evaluation (step:accuracy), the chosen step, "
              "why training ended, test accuracy.", "",
              "| model | lr | seed | validation curve | chosen step | steps run | ended | test category accuracy "
              "| test attribute exact |", "|---|---|---|---|---|---|---|---|---|"]
    for variant, r in rows.items():
        for x in r["runs"]:
            lines.append(f"| {variant} | {x['lr']} | {x['seed']} | {_curve(x)} | {x['best_step']} | {x['steps_run']} "
                         f"| {x['stopped']} | {x['accuracy']:.4f} | {x['attributes_exact']:.4f} |")
    lines += ["", f"Learning-rate pilot (seed 0, {s['pilot_steps']} steps, validation category accuracy):", "",
              "| model | lr | validation curve | best |", "|---|---|---|---|"]
    for variant, r in rows.items():
        for lr, x in sorted(r["pilot"].items()):
            chosen = " (chosen)" if r.get("lr") == lr else ""
            lines.append(f"| {variant} | {lr}{chosen} | {_curve(x)} | {x['valid_best']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
