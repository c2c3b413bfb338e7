"""Step time of the demo job (DeepFM on MovieLens-1M, examples/movielens_deepfm.yaml) with its
batches already in memory, plus the recis table-op calls per step.

    python benchmarks/demo_step.py --steps 300 --repeats 3

Prints the median step time (ms) of each repeat, wall clock and the process's CPU time (which
other processes on a loaded machine disturb less), and how many `recis::` op calls one training
step makes (forward lookups, backward/fused updates), from torch.profiler over a few steps.
"""
import argparse
import json
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_HERE, "..", "recis")):
    sys.path.insert(0, os.path.dirname(_HERE))

import torch  # noqa: E402

from recis.run.config import RunConfig  # noqa: E402
from recis.run.job import Job  # noqa: E402
from recis.train.hooks import Hook  # noqa: E402

CONFIG = os.path.join(_HERE, "..", "examples", "movielens_deepfm.yaml")


class _Clock(Hook):
    """Time between consecutive optimizer steps."""

    def __init__(self):
        self.stamps, self.cpu = [], []

    def on_step_end(self, trainer, step, logs):
        self.stamps.append(time.perf_counter())
        self.cpu.append(time.process_time())


def _fit(trainer, batches):
    trainer.config.epochs, trainer.config.max_steps = 1, None
    trainer.epoch = 0  # each call is one more pass over the same batches
    trainer.fit(batches)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg = RunConfig.from_yaml(CONFIG)
    cfg.trainer.log_dir = None
    job = Job(cfg)
    batches = []
    for b in job.train_data:
        batches.append(b)
        if len(batches) >= a.steps:
            break
    trainer = job.trainer
    clock = _Clock()
    trainer.hooks.append(clock)
    times, cpu_times = [], []
    for r in range(a.repeats):
        clock.stamps, clock.cpu = [], []
        _fit(trainer, batches)
        for stamps, out in ((clock.stamps, times), (clock.cpu, cpu_times)):
            gaps = [b - a_ for a_, b in zip(stamps, stamps[1:])]
            out.append(round(statistics.median(gaps[10:]) * 1e3, 3))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _fit(trainer, batches[:10])
    calls = {}
    for e in prof.key_averages():
        if e.key.startswith("recis::"):
            calls[e.key] = e.count / 10
    out = {"median_step_ms": times, "median_step_cpu_ms": cpu_times, "recis_op_calls_per_step": calls}
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
