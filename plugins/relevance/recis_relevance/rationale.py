"""The rationale a teacher gives for a (query, item) of the MovieLens relevance task: one step per
rule of docs/relevance_task.md, in a fixed order, then the grade.

Steps, in this order (a step is present only when the query has the part it checks):

- ``genre``: is the wanted genre g among the item's genres? words ``<g> present|missing``, verdict
  ``yes|no``;
- ``negation`` (only when the query excludes a genre g2): is g2 absent? words
  ``<g2> missing|present``, verdict ``yes|no``;
- ``decade`` (only when the query names a decade D): words ``<D>s year <year>``, verdict ``yes``
  (the year is in D), ``near`` (1 or 2 years outside D) or ``no`` (further out).

A verdict says whether the item satisfies the rule (``yes``), partly (``near``) or not (``no``).
Words are lower-case tokens as the word tokenizer splits them (``Sci-Fi`` is ``sci - fi``).

The step logic here is written from the rules, not by calling `recis_relevance.task.grade`, so the
test that `grade_of_steps(rationale(row))` equals the task's label for every row checks two
independent encodings of the rules against each other.

>>> for s in steps(["Comedy", "Romance"], 1988, "Comedy", "Horror", 1990):
...     print(s.rule, " ".join(s.words), s.verdict)
genre comedy present yes
negation horror missing yes
decade 1990s year 1988 near
>>> grade_of_steps(steps(["Comedy", "Romance"], 1988, "Comedy", "Horror", 1990))
3
>>> step_references({"genres": ["Sci-Fi"], "year": 1977, "want_genre": "Sci-Fi", "avoid_genre": None,
...                  "decade": None})
{'genre': 'yes'}
"""
import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

from recis_relevance.task import NEAR, row_value

__all__ = ["RULES", "VERDICTS", "Step", "canonical_words", "steps", "rationale", "step_references",
           "grade_of_steps", "FACT_WORDS"]

RULES = ("genre", "negation", "decade")
#: the verdict tokens each rule may give, best first
VERDICTS: Dict[str, Tuple[str, ...]] = {"genre": ("yes", "no"), "negation": ("yes", "no"),
                                        "decade": ("yes", "near", "no")}
PRESENT, MISSING, YEAR = "present", "missing", "year"
#: the fixed words the steps use besides genres, decades and years
FACT_WORDS = (PRESENT, MISSING, YEAR)

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def canonical_words(text: str) -> Tuple[str, ...]:
    """Lower-case word tokens of plain text, split on whitespace and at every punctuation
    character (how the word tokenizer splits words; reserved tokens are not handled here).

    >>> canonical_words("Children's Sci-Fi (1995)")
    ('children', "'", 's', 'sci', '-', 'fi', '(', '1995', ')')
    """
    return tuple(_TOKEN.findall(text.lower()))


@dataclass(frozen=True)
class Step:
    """One rule check: the rule's name, a few words stating the facts checked, and the verdict."""

    rule: str
    words: Tuple[str, ...]
    verdict: str

    def __post_init__(self):
        if self.rule not in VERDICTS:
            raise ValueError(f"unknown rule {self.rule!r} (known: {list(RULES)})")
        if self.verdict not in VERDICTS[self.rule]:
            raise ValueError(f"rule {self.rule!r} has no verdict {self.verdict!r} (known: {list(VERDICTS[self.rule])})")
        if not isinstance(self.words, tuple):
            raise TypeError(f"step {self.rule!r}: words must be a tuple of str, got {type(self.words).__name__}")
        for w in self.words:
            if not isinstance(w, str) or canonical_words(w) != (w,):
                raise ValueError(f"step {self.rule!r}: word {w!r} is not one lower-case word or punctuation mark")


def _genre_step(rule: str, genre: str, item_genres: Sequence[str], ok_when_present: bool) -> Step:
    present = genre in item_genres
    return Step(rule, canonical_words(genre) + (PRESENT if present else MISSING,),
                "yes" if present == ok_when_present else "no")


def _decade_verdict(year: int, decade: int) -> str:
    last = decade + 9
    if decade <= year <= last:
        return "yes"
    distance = decade - year if year < decade else year - last
    return "near" if distance <= NEAR else "no"


def steps(genres: Sequence[str], year: int, want: str, avoid: Optional[str], decade: Optional[int]) -> Tuple[Step, ...]:
    """The ordered rule checks of an item (genres, year) for a query (want, avoid, decade)."""
    out = [_genre_step("genre", want, genres, ok_when_present=True)]
    if avoid is not None:
        out.append(_genre_step("negation", avoid, genres, ok_when_present=False))
    if decade is not None:
        out.append(Step("decade", (f"{int(decade)}s", YEAR, str(int(year))), _decade_verdict(int(year), int(decade))))
    return tuple(out)


def rationale(row: Mapping) -> Tuple[Step, ...]:
    """The steps of a row of `build_task`'s tables (columns genres, year, want_genre, avoid_genre,
    decade)."""
    return steps(row_value(row, "genres"), row_value(row, "year"), row_value(row, "want_genre"),
                 row_value(row, "avoid_genre"), row_value(row, "decade"))


def step_references(row: Mapping) -> Dict[str, str]:
    """rule -> the verdict its check gives on this row, in step order: the per-step references a
    completion's steps are checked against (AGRL's step rewards, SHE's offline verifier)."""
    return {s.rule: s.verdict for s in rationale(row)}


def grade_of_steps(checks: Sequence[Step]) -> int:
    """The grade the verdicts imply: 1 if a genre check fails, else 2 if the decade check says
    ``no``, 3 if it says ``near``, 4 otherwise. Needs the genre step."""
    verdicts = {s.rule: s.verdict for s in checks}
    if "genre" not in verdicts:
        raise ValueError(f"steps {[s.rule for s in checks]} lack the genre check")
    if verdicts["genre"] == "no" or verdicts.get("negation") == "no":
        return 1
    return {"no": 2, "near": 3}.get(verdicts.get("decade", "yes"), 4)
