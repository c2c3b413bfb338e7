"""pass@N DPO preference pairs (TaoSR1's second stage): N completions sampled per prompt from the
SFT model, each marked correct or wrong, become (chosen, rejected) pairs.

Per prompt (a `Group`):

- mixed (some correct, some wrong): pairs (a correct sample, a wrong sample);
- all wrong: pairs (the gold completion, a wrong sample), teaching the label the model misses;
- all correct: no pair (nothing to prefer).

Samples are compared as token sequences (`recis_relevance.formats.tokens`: case and whitespace do
not matter): duplicates count once, and a pair never has chosen and rejected with the same tokens.
A group gives at most `PairConfig.max_pairs` pairs [I] (default 1, so every prompt weighs the
same), drawn without replacement from all distinct (chosen, rejected) combinations with a seeded
`random.Random` in group order: the same groups and seed give the same pairs.

>>> g = Group("p", gold="<L4> <STEP> genre comedy present yes",
...           samples=(Sample("<L4> <STEP> genre comedy present yes", True), Sample("<L1>", False)))
>>> pairs, counts = build_pairs([g, Group("q", "<L2>", (Sample("<L2>", True),))])
>>> [(p.chosen, p.rejected, p.kind) for p in pairs], counts
([('<L4> <STEP> genre comedy present yes', '<L1>', 'mixed')], {'mixed': 1, 'all_wrong': 0, 'all_correct': 1, 'pairs': 1})
"""
import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from recis.config_utils import bounded, check_types
from recis_relevance.formats import parse, reward, tokens

__all__ = ["Sample", "Group", "Pair", "PairConfig", "build_pairs", "group_from_completions", "KINDS"]

KINDS = ("mixed", "all_wrong", "all_correct")


@dataclass(frozen=True)
class Sample:
    """A sampled completion, whether it is correct, and the grade it was parsed to (None when
    malformed; informative only)."""

    text: str
    correct: bool
    grade: Optional[int] = None


@dataclass(frozen=True)
class Group:
    """The N samples of one prompt and its gold (teacher) completion."""

    prompt: str
    gold: str
    samples: Tuple[Sample, ...]


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    kind: str  # "mixed" or "all_wrong"


@dataclass
class PairConfig:
    """max_pairs: at most this many pairs per group [I]; seed: of the choice among the candidates."""

    max_pairs: int = bounded(1, ge=1)
    seed: int = bounded(0, ge=0)

    def __post_init__(self):
        check_types(self, "pairs")


def group_from_completions(fmt: str, prompt: str, gold: str, gold_grade: int, texts: Sequence[str]) -> Group:
    """A group whose samples are marked correct by parsing them in `fmt` against the gold grade
    (`recis_relevance.formats.reward`)."""
    samples = []
    for t in texts:
        p = parse(fmt, t)
        samples.append(Sample(t, reward(p, gold_grade) == 1.0, p.grade))
    return Group(prompt, gold, tuple(samples))


def _distinct(samples: Sequence[Sample], where: str) -> Tuple[List[Sample], List[Sample]]:
    """Correct and wrong samples, first of each token sequence kept; a sequence marked both
    correct and wrong is an error."""
    seen: Dict[Tuple[str, ...], bool] = {}
    right, wrong = [], []
    for s in samples:
        if not isinstance(s, Sample):
            raise TypeError(f"{where}: samples must be Sample objects, got {type(s).__name__}")
        key = tokens(s.text)
        if key in seen:
            if seen[key] != bool(s.correct):
                raise ValueError(f"{where}: the completion {s.text!r} is marked both correct and wrong")
            continue
        seen[key] = bool(s.correct)
        (right if s.correct else wrong).append(s)
    return right, wrong


def build_pairs(groups: Sequence[Group], config: Optional[PairConfig] = None) -> Tuple[List[Pair], Dict[str, int]]:
    """The DPO pairs of `groups` and the counts {mixed, all_wrong, all_correct, pairs} (groups of
    each kind and pairs made)."""
    cfg = config if config is not None else PairConfig()
    rng = random.Random(cfg.seed)
    counts = dict.fromkeys(KINDS + ("pairs",), 0)
    out: List[Pair] = []
    for i, g in enumerate(groups):
        where = f"group {i} (prompt {g.prompt[:60]!r})"
        if not g.samples:
            raise ValueError(f"{where} has no samples")
        right, wrong = _distinct(g.samples, where)
        if not wrong:
            counts["all_correct"] += 1
            continue
        if right:
            kind, chosen = "mixed", [s.text for s in right]
        else:
            gold = tokens(g.gold)
            if any(tokens(s.text) == gold for s in wrong):
                raise ValueError(f"{where}: a sample identical to the gold completion is marked wrong")
            kind, chosen = "all_wrong", [g.gold]
        counts[kind] += 1
        candidates = [(c, w.text) for c in chosen for w in wrong]
        picked = rng.sample(range(len(candidates)), min(cfg.max_pairs, len(candidates)))
        out += [Pair(g.prompt, *candidates[j], kind) for j in sorted(picked)]
    counts["pairs"] = len(out)
    return out, counts
