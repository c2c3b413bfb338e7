"""Online-learning benchmarks (plugins/online): one command, three parts.

- `regret`: BOGD_IP, its dynamic-regret ensemble, its adaptive ensemble and projected OGD on
  drifting convex streams with a known comparator sequence: regret slopes, interval regret after
  a shift, oracle calls per round (benchmarks/_online_regret.py).
- `ctr`: MovieLens-1M replayed in timestamp order with a planted shift; prequential AUC and
  logloss of an online logistic model whose dense head each optimizer trains
  (benchmarks/_online_ctr.py).
- `stream`: STREAM rule learning: planted-rule recovery, the clothing-review rules' precision and
  recall, and EBRM with STREAM's tags vs the hand gazetteer (benchmarks/_online_stream.py).

Usage::

    python benchmarks/online.py regret [options]   # one part (see `python benchmarks/online.py PART -h`)
    python benchmarks/online.py all                # every part with its defaults

Each part prints a markdown table and writes JSON under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
if os.path.isdir(os.path.join(_ROOT, "recis")):  # run from a checkout without `pip install -e .`
    for p in (_ROOT, os.path.join(_ROOT, "plugins", "online"), os.path.join(_ROOT, "plugins", "relevance")):
        if p not in sys.path:
            sys.path.insert(0, p)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

#: part name -> module under benchmarks/ with add_args(parser) and run(args) -> dict
PARTS = {"regret": "_online_regret", "ctr": "_online_ctr", "stream": "_online_stream"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    for name, module in PARTS.items():
        sub_parser = sub.add_parser(name, help=f"the {name} benchmark ({module}.py)")
        importlib.import_module(module).add_args(sub_parser)
    sub.add_parser("all", help="every part with its default options")
    return parser


def main(argv=None) -> dict:
    parser = _parser()
    args = parser.parse_args(argv)
    names = list(PARTS) if args.part == "all" else [args.part]
    results = {}
    for name in names:
        part_args = args if args.part != "all" else _parser().parse_args([name])
        results[name] = importlib.import_module(PARTS[name]).run(part_args)
    return results


if __name__ == "__main__":
    out = main()
    print(json.dumps({k: "done" for k in out}))
