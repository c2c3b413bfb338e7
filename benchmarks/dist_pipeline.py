"""Pipelined input on 2 gloo ranks: how long the forward waits for the ids exchange, with and
without the pipeline (the Trainer training a DeepFM on synthetic batches, as in the tests).

    python benchmarks/dist_pipeline.py [--steps 30] [--batch 8192] [--rounds 2]
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import _dist_workers as workers  # noqa: E402  (the rank bodies the distributed tests use)
from recis.distributed.local import run_local  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8192, help="global batch (split over 2 ranks)")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    print("| pipeline | round | median wait ms | mean wait ms | steps x ranks |\n|---|---|---|---|---|")
    for r in range(a.rounds):
        for pipe in (False, True):
            results = run_local(workers.pipelined_losses, 2, pipe, a.steps, a.batch, timeout_s=600)
            waits = [x * 1e3 for res in results for x in res.value[2][2:]]  # the first steps warm up
            print(f"| {'on' if pipe else 'off'} | {r + 1} | {statistics.median(waits):.3f} | "
                  f"{statistics.mean(waits):.3f} | {len(waits)} |")


if __name__ == "__main__":
    main()
