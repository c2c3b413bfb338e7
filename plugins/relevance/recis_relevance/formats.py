"""Output formats of a generative relevance judge: how a completion writes the grade and the
rationale, how it is parsed back, and its reward.

A completion is a sequence of tokens: the reserved tokens (`RESERVED_TOKENS`: the label tokens
``<L1>``..``<L4>`` and the step separator ``<STEP>``) and lower-case words as the word tokenizer
splits them (`recis_relevance.rationale.canonical_words`). Whitespace and case do not matter, so a
completion decoded by the word tokenizer (tokens joined by spaces) parses like the rendered text.
A step is written ``<STEP> rule word ... verdict`` (`recis_relevance.rationale.Step`).

Formats (`FORMATS`):

- ``label_only``: the label token alone: ``<L3>``;
- ``post_cot``: the label, then one or more steps (TaoSR1's deployment format: the label is the
  first token, so label-only decoding reads it without generating the rationale);
- ``pre_cot``: one or more steps, then the label as the last token.

The retrieval test bed's format (`CONTEXT_FORMATS`), DyKnow-RAG's structured rationale:

- ``post_cot_context``: the label, then the context decision token (``<USE>`` adopt, ``<PARTIAL>``
  partial, ``<IGNORE>`` ignore: `DECISION_TOKENS`), then one or more steps. `parse` returns the
  decision too (`Parsed.decision`).

A completion is well formed iff it has exactly this shape; otherwise `parse` returns grade None and
one of the fixed `REASONS`, and never raises. Malformed are:

- an empty completion, no label, or two labels (in any format);
- in ``post_cot_context``: no decision token, two, or one that is not the second token; in the
  other formats: any decision token;
- a label out of its place (``label_only``: the only token; ``post_cot``: the first; ``pre_cot``:
  the last), or anything after it when the completion is well formed up to it (trailing junk);
- a CoT format without steps, or text before the first step;
- a step without a rule and a verdict, an unknown rule, the same rule twice, or a step whose last
  token is not a verdict its rule has (``genre near``; words trailing after a post-CoT's last step
  land here).

Step words between the rule and the verdict are free (any words or punctuation), and the order of
the steps is not checked, only that each rule appears at most once. The caller strips
end-of-sequence and padding before parsing: ``<eos>`` is read as the words ``< eos >`` and makes a
completion malformed.

>>> from recis_relevance.rationale import Step
>>> s = (Step("genre", ("comedy", "present"), "yes"), Step("decade", ("1990s", "year", "1988"), "near"))
>>> render("post_cot", 3, s)
'<L3> <STEP> genre comedy present yes <STEP> decade 1990s year 1988 near'
>>> render("pre_cot", 3, s)
'<STEP> genre comedy present yes <STEP> decade 1990s year 1988 near <L3>'
>>> parse("post_cot", "<L3><STEP>Genre comedy present yes <STEP> decade 1990s year 1988 near") == Parsed(3, s)
True
>>> parse("post_cot", "<L3> <STEP> genre comedy present yes <L4>")
Parsed(grade=None, steps=(), reason='two labels', decision=None)
>>> render("post_cot_context", 3, s, "partial")
'<L3> <PARTIAL> <STEP> genre comedy present yes <STEP> decade 1990s year 1988 near'
>>> parse("post_cot_context", "<L3> <PARTIAL> <STEP> genre comedy present yes").decision
'partial'
>>> reward(parse("label_only", "<L2>"), 2), reward(parse("label_only", "<L2> ok"), 2)
(1.0, 0.0)
"""
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from recis.config_utils import is_integer
from recis_relevance.rationale import VERDICTS, Step, canonical_words, rationale
from recis_relevance.task import row_value

__all__ = ["FORMATS", "CONTEXT_FORMATS", "ALL_FORMATS", "DECISION_TOKENS", "decision_token", "GRADES", "LABEL_TOKENS", "STEP", "RESERVED_TOKENS", "TOKEN_TEXT", "label_token", "tokens", "render",
           "Parsed", "REASONS", "parse", "reward", "Scored", "score", "gold_completion", "check_format"]

#: the formats without a context decision
FORMATS = ("label_only", "post_cot", "pre_cot")
#: the formats with one (the retrieval test bed's with-context judges: DyKnow-RAG)
CONTEXT_FORMATS = ("post_cot_context",)
ALL_FORMATS = FORMATS + CONTEXT_FORMATS
GRADES = (1, 2, 3, 4)
LABEL_TOKENS = tuple(f"<L{g}>" for g in GRADES)
STEP = "<STEP>"
#: the context decision (recis_relevance.retrieval.CONTEXT_DECISIONS) -> its reserved token
DECISION_TOKENS = {"adopt": "<USE>", "partial": "<PARTIAL>", "ignore": "<IGNORE>"}
#: every reserved token of the task, in the order the word tokenizer gives them ids
RESERVED_TOKENS = LABEL_TOKENS + (STEP,) + tuple(DECISION_TOKENS.values())
#: the plain text each reserved token stands for: a pretrained LM that learns the reserved tokens
#: as new vocabulary rows starts each row from the embedding of this text [I]
TOKEN_TEXT = {**{t: str(g) for g, t in zip(GRADES, LABEL_TOKENS)}, STEP: "step",
              **{t: d for d, t in DECISION_TOKENS.items()}}

_GRADE_OF = {t: g for g, t in zip(GRADES, LABEL_TOKENS)}
_DECISION_OF = {t: d for d, t in DECISION_TOKENS.items()}
_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in RESERVED_TOKENS) + ")", re.IGNORECASE)
_CASE = {t.lower(): t for t in RESERVED_TOKENS}


def check_format(fmt: str) -> str:
    if fmt not in ALL_FORMATS:
        raise ValueError(f"unknown output format {fmt!r} (known: {list(ALL_FORMATS)})")
    return fmt


def decision_token(decision: str) -> str:
    """The reserved token of a context decision: adopt ``<USE>``, partial ``<PARTIAL>``, ignore ``<IGNORE>``."""
    if decision not in DECISION_TOKENS:
        raise ValueError(f"a context decision must be one of {list(DECISION_TOKENS)}, got {decision!r}")
    return DECISION_TOKENS[decision]


def _check_grade(grade) -> int:
    if not is_integer(grade) or int(grade) not in GRADES:
        raise ValueError(f"a grade must be one of {list(GRADES)}, got {grade!r}")
    return int(grade)


def label_token(grade: int) -> str:
    """The label token of a grade: ``<L1>``..``<L4>``."""
    return LABEL_TOKENS[_check_grade(grade) - 1]


def tokens(text: str) -> Tuple[str, ...]:
    """The tokens of a completion: reserved tokens (any case) and lower-case words.

    >>> tokens("<l4><STEP> Sci-Fi  present")
    ('<L4>', '<STEP>', 'sci', '-', 'fi', 'present')
    """
    out: List[str] = []
    for i, piece in enumerate(_SPLIT.split(text)):
        if i % 2:
            out.append(_CASE[piece.lower()])
        else:
            out.extend(canonical_words(piece))
    return tuple(out)


def render(fmt: str, grade: int, steps: Sequence[Step] = (), decision: Optional[str] = None) -> str:
    """The completion text of a grade and its steps in a format (label_only ignores the steps;
    the CoT formats need at least one; the context formats need the context `decision`)."""
    label = label_token(grade)
    if check_format(fmt) == "label_only":
        return label
    if fmt in CONTEXT_FORMATS:
        label = f"{label} {decision_token(decision)}"
    if not steps:
        raise ValueError(f"format {fmt!r} needs at least one step")
    for s in steps:
        if not isinstance(s, Step):
            raise TypeError(f"steps must be Step objects, got {type(s).__name__}")
    cot = " ".join(" ".join((STEP, s.rule) + s.words + (s.verdict,)) for s in steps)
    return f"{cot} {label}" if fmt == "pre_cot" else f"{label} {cot}"


@dataclass(frozen=True)
class Parsed:
    """A parsed completion: its grade and steps (and its context decision in a context format), or
    grade None, no steps and the reason it is malformed."""

    grade: Optional[int]
    steps: Tuple[Step, ...] = ()
    reason: Optional[str] = None
    decision: Optional[str] = None

    @property
    def malformed(self) -> bool:
        return self.reason is not None


def _bad(reason: str) -> Parsed:
    return Parsed(None, (), reason)


#: why a completion is malformed (`Parsed.reason`): a fixed set, so that reasons can be counted
REASONS = ("not text", "empty", "no label", "two labels", "label in the wrong place", "trailing junk", "no steps",
           "text before the first step", "a step without a rule and a verdict", "unknown rule",
           "a step that does not end in a verdict of its rule", "a rule twice", "no context decision",
           "two context decisions", "context decision in the wrong place", "a context decision in a format without one")


def _parse_steps(toks: Sequence[str]):
    """The steps of a token run that must be exactly ``<STEP> rule ... verdict`` repeated: a tuple
    of Step, or the reason it is not."""
    if not toks:
        return "no steps"
    if toks[0] != STEP:
        return "text before the first step"
    chunks: List[List[str]] = []
    for t in toks:
        if t == STEP:
            chunks.append([])
        else:
            chunks[-1].append(t)
    out, seen = [], set()
    for chunk in chunks:
        if len(chunk) < 2:
            return "a step without a rule and a verdict"
        rule, verdict = chunk[0], chunk[-1]
        if rule not in VERDICTS:
            return "unknown rule"
        if verdict not in VERDICTS[rule]:
            return "a step that does not end in a verdict of its rule"
        if rule in seen:
            return "a rule twice"
        seen.add(rule)
        out.append(Step(rule, tuple(chunk[1:-1]), verdict))
    return tuple(out)


def parse(fmt: str, text: str) -> Parsed:
    """The grade and steps of a completion in format `fmt`, or a malformed Parsed whose reason is
    one of `REASONS`. Raises only for an unknown format, never for any text."""
    check_format(fmt)
    if not isinstance(text, str):
        return _bad("not text")
    toks = tokens(text)
    if not toks:
        return _bad("empty")
    where = [i for i, t in enumerate(toks) if t in _GRADE_OF]
    if not where:
        return _bad("no label")
    if len(where) > 1:
        return _bad("two labels")
    pos, grade = where[0], _GRADE_OF[toks[where[0]]]
    decisions = [i for i, t in enumerate(toks) if t in _DECISION_OF]
    if fmt in CONTEXT_FORMATS:  # the label, the decision, then the steps (post-CoT)
        if pos != 0:
            return _bad("label in the wrong place")
        if not decisions:
            return _bad("no context decision")
        if len(decisions) > 1:
            return _bad("two context decisions")
        if decisions[0] != 1:
            return _bad("context decision in the wrong place")
        got = _parse_steps(toks[2:])
        return _bad(got) if isinstance(got, str) else Parsed(grade, got, None, _DECISION_OF[toks[1]])
    if decisions:
        return _bad("a context decision in a format without one")
    if fmt == "label_only":
        if len(toks) == 1:
            return Parsed(grade)
        return _bad("trailing junk" if pos == 0 else "label in the wrong place")
    if fmt == "post_cot":
        if pos != 0:
            return _bad("label in the wrong place")
        rest = toks[1:]
    else:
        if pos != len(toks) - 1:  # junk after a well-formed completion, or a label out of place
            return _bad("trailing junk" if isinstance(_parse_steps(toks[:pos]), tuple) else "label in the wrong place")
        rest = toks[:-1]
    got = _parse_steps(rest)
    return _bad(got) if isinstance(got, str) else Parsed(grade, got)


def reward(parsed: Parsed, gold: int) -> float:
    """1.0 if the completion is well formed and its grade is the gold grade, else 0.0."""
    return 1.0 if not parsed.malformed and parsed.grade == _check_grade(gold) else 0.0


@dataclass
class Scored:
    """Rewards of a batch of completions, and how many were malformed (by reason)."""

    rewards: torch.Tensor
    parsed: List[Parsed]
    malformed: int
    reasons: Dict[str, int] = field(default_factory=dict)

    @property
    def stats(self) -> Dict[str, float]:
        n = max(1, len(self.parsed))
        return {"reward": float(self.rewards.mean()) if len(self.parsed) else 0.0,
                "malformed_fraction": self.malformed / n}


def score(fmt: str, texts: Sequence[str], golds: Sequence[int]) -> Scored:
    """Parse and reward every completion against its gold grade (float32 rewards [N])."""
    if len(texts) != len(golds):
        raise ValueError(f"{len(texts)} completions but {len(golds)} gold grades")
    parsed = [parse(fmt, t) for t in texts]
    rewards = torch.tensor([reward(p, g) for p, g in zip(parsed, golds)], dtype=torch.float32)
    reasons = Counter(p.reason for p in parsed if p.malformed)
    return Scored(rewards, parsed, sum(reasons.values()), dict(sorted(reasons.items())))


def gold_completion(fmt: str, row: Mapping) -> str:
    """The teacher's completion of a task row: its label and its rationale in format `fmt` (and, in
    a context format, the row's `context_decision`: rows of a task built with a retriever)."""
    decision = row_value(row, "context_decision") if check_format(fmt) in CONTEXT_FORMATS else None
    return render(fmt, int(row_value(row, "label")), rationale(row), decision)
