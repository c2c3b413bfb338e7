"""The `recis` command: `recis train CONFIG.yaml`, `recis eval CONFIG.yaml --checkpoint DIR`, `recis bench NAME`."""
import argparse
import json
import os
import subprocess
import sys
from typing import List, Optional

BENCHMARKS = {"embedding": "embedding_step.py", "io": "io_bench.py", "e2e": "e2e_movielens.py"}


def _print_result(title: str, result: dict) -> None:
    print(f"\n{title}")
    f1 = [k for k in result if k.startswith("f1_")]  # per-class F1 of a confusion metric
    known = ("auc", "gauc", "logloss", "calibration", "accuracy", "macro_f1", *f1)
    tail = ("loss", "examples", "train_examples_per_s", "train_seconds", "world_size", "files_skipped")
    # the rest: a tower metric's values (TowerOutput.values), by name
    values = [k for k in result if k not in known + tail + ("step", "eval_seconds", "train_examples")]
    for key in (*known, *values, *tail):
        if key in result:
            print(f"  {key:>22}: {result[key]:.4f}" if isinstance(result[key], float) else f"  {key:>22}: {result[key]}")


def _run_job(cfg, run):
    """run(job) on the Job of cfg; returns (its result, this rank). A process group that the job
    made (under torchrun) is shut down once the job is gone, so the process exits cleanly."""
    import torch.distributed as dist

    from recis.distributed import shutdown
    from recis.run import Job

    had_group = dist.is_available() and dist.is_initialized()
    job = Job(cfg)
    result, rank = run(job), job.env.rank
    del job
    if not had_group and dist.is_available() and dist.is_initialized():
        shutdown()
    return result, rank


def _train(args) -> int:
    from recis.run import RunConfig

    cfg = RunConfig.from_yaml(args.config)
    if args.max_steps is not None:
        cfg.trainer.max_steps = args.max_steps
    if args.log_dir is not None:
        cfg.trainer.log_dir = args.log_dir
    result, rank = _run_job(cfg, lambda job: job.train())
    if rank > 0:  # under torchrun, rank 0 reports for the job
        return 0
    _print_result("test metrics (final evaluation)", result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _eval(args) -> int:
    from recis.run import RunConfig

    cfg = RunConfig.from_yaml(args.config)
    if args.checkpoint_dir is not None:
        cfg.checkpoint.dir = args.checkpoint_dir
    result, rank = _run_job(cfg, lambda job: job.evaluate(args.checkpoint))
    if rank > 0:
        return 0
    _print_result("evaluation", result)
    return 0


def _bench(args, rest: List[str]) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "benchmarks", BENCHMARKS[args.name])
    if not os.path.isfile(script):
        print(f"recis bench: {script} not found (benchmarks ship with the source checkout, not the wheel)",
              file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, script, *rest])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="recis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the job described by a YAML config")
    p.add_argument("config")
    p.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps")
    p.add_argument("--log-dir", default=None, help="override trainer.log_dir")
    p.add_argument("--json", default=None, help="also write the final metrics to this JSON file")
    p = sub.add_parser("eval", help="evaluate a checkpoint of a job on its eval data")
    p.add_argument("config")
    p.add_argument("--checkpoint", default="latest", help="checkpoint name or path (default: latest)")
    p.add_argument("--checkpoint-dir", default=None, help="override checkpoint.dir")
    p = sub.add_parser("bench", help="run a benchmark of benchmarks/ (extra arguments go to it)")
    p.add_argument("name", choices=sorted(BENCHMARKS))
    args, rest = parser.parse_known_args(argv)
    if args.command != "bench" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "train":
        return _train(args)
    if args.command == "eval":
        return _eval(args)
    return _bench(args, rest)


if __name__ == "__main__":
    sys.exit(main())
