"""Options of STREAM (methods notes §12). Every choice the notes mark as inferred ([I]) is a field
here, validated in `__post_init__`; YAML/JSON input goes through `recis.config_utils.from_mapping`.

>>> StreamConfig(labels=("CHEM", "PER")).spans.max_len
3
>>> StreamConfig(labels=("CHEM", "CHEM"))
Traceback (most recent call last):
...
ValueError: stream.labels must be distinct non-empty names other than 'NONE', got ['CHEM', 'CHEM']
>>> SpanConfig(span_filter="nouns")
Traceback (most recent call last):
...
ValueError: stream.spans.span_filter must be one of ['all', 'np'], got 'nouns'
"""
from dataclasses import dataclass, field
from typing import List, Tuple

from recis.config_utils import bounded, check_types

__all__ = ["NONE", "RULE_TYPES", "SCORERS", "SpanConfig", "RuleConfig", "ClassifierConfig", "StreamConfig"]

#: the label of a span that is no entity (the expert's and the classifier's extra class).
NONE = "NONE"
#: rule types, in the order rules are listed.
RULE_TYPES = ("SurfaceForm", "Prefix", "Suffix", "PreNgram", "PostNgram")
#: rule scorers: STREAM's (precision on the pool x log coverage) and the two naive baselines.
SCORERS = ("precision_log_coverage", "precision", "coverage")
SPAN_FILTERS = ("all", "np")
COVERAGES = ("pool", "corpus")
CONFLICTS = ("majority", "drop")
AFFIX_COUNTS = ("instances", "forms")
CALIBRATIONS = ("none", "batch")
OVERLAPS = ("votes", "longest", "shortest")


def _choice(section: str, name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{section}.{name} must be one of {list(options)}, got {value!r}")


def _lengths(section: str, name: str, values) -> Tuple[int, ...]:
    values = tuple(values)
    if not values or len(set(values)) != len(values):
        raise ValueError(f"{section}.{name} must be distinct integers >= 1, got {list(values)}")
    return values


@dataclass
class SpanConfig:
    """Candidate spans: word n-grams of 1..`max_len` tokens of a sentence.

    - `span_filter` [I]: "np" keeps noun-phrase-like spans (no punctuation token, not starting or
      ending with a stop word, not all digits unless `keep_numbers`); "all" keeps every n-gram.
    - `stop_words` [I]: the stop-word list of the "np" filter (lower case).
    - `keep_abbreviations` [I]: the tokenizer keeps a capitalised abbreviation's period ("Dr." is
      one token when a capitalised word follows), so Prefix rules can see "dr.".
    - `keep_numbers` [I]: digit-only spans pass the "np" filter (years, sizes)."""

    max_len: int = bounded(3, ge=1, le=8)
    span_filter: str = "np"
    stop_words: Tuple[str, ...] = (
        "a", "an", "the", "and", "or", "but", "of", "in", "on", "at", "to", "for", "with", "by", "from",
        "is", "are", "was", "were", "be", "been", "it", "its", "this", "that", "these", "those", "i", "me",
        "my", "we", "you", "she", "he", "they", "them", "her", "his", "so", "very", "not", "no", "as",
        "if", "than", "then", "too", "just", "also", "have", "has", "had", "do", "did", "does", "am",
        "will", "would", "could", "can", "about", "up", "out", "all", "some", "more", "one", "really",
        "which", "what", "when", "there", "here", "our", "your", "their", "into", "over", "after")
    keep_abbreviations: bool = True
    keep_numbers: bool = True

    def __post_init__(self):
        check_types(self, "stream.spans")
        _choice("stream.spans", "span_filter", self.span_filter, SPAN_FILTERS)
        self.stop_words = tuple(w.lower() for w in self.stop_words)


@dataclass
class RuleConfig:
    """Rules and their scores.

    - `affix_lengths` [I]: character lengths of Prefix / Suffix rules (a proper affix: shorter than
      the span's text, so "dr." is a prefix of "dr. smith" but not a rule about the span "dr.").
    - `context_sizes` [I]: token counts of PreNgram / PostNgram rules (the n tokens right before /
      after the span).
    - `types` [I]: which of `RULE_TYPES` are proposed.
    - `scorer` [I]: "precision_log_coverage" = precision on the pool x log(coverage) (STREAM);
      "precision" and "coverage" are the naive baselines.
    - `coverage` [I]: what coverage counts: "pool" = pool instances of the rule's label it matches
      (TALLOR), "corpus" = candidate spans it matches in the whole corpus.
    - `top_k` [I]: new rules per label (all rule types together) per iteration.
    - `min_precision` [I], `min_matches` [I]: a rule is proposed only with at least this precision on
      the pool and this many pool instances of its label.
    - `affix_count` [I]: what a Prefix / Suffix rule's hits and pool matches count: pool
      `instances` (every occurrence), or distinct surface `forms` (a form counts once, with its
      majority pool label). An affix rule claims a regularity across words, so with "forms" its
      evidence is the number of different words the pool confirms: the suffix "ess" of a pool
      full of "dress" has one form, not hundreds of instances, and `min_matches` stops it.
    - `conflict` [I]: a span that rules of several labels match gets the `majority` label (ties:
      none) or none at all (`drop`).
    - `overlap` [I]: overlapping labelled spans of a sentence are resolved (for the weak labels
      the classifier learns and for tagging) keeping first the span with the most rule `votes`
      (ties: the shorter), or the `longest`, or the `shortest`; then left to right.
    - `overlap_negatives` [I]: the spans that lose an overlap become NONE examples of the
      classifier (they teach it the span boundaries) instead of being left out."""

    affix_lengths: Tuple[int, ...] = (3, 4)
    context_sizes: Tuple[int, ...] = (1, 2)
    types: Tuple[str, ...] = RULE_TYPES
    scorer: str = "precision_log_coverage"
    coverage: str = "pool"
    top_k: int = bounded(5, ge=1)
    min_precision: float = bounded(0.6, ge=0, le=1)
    min_matches: int = bounded(2, ge=1)
    affix_count: str = "instances"
    conflict: str = "majority"
    overlap: str = "votes"
    overlap_negatives: bool = True
    boundary_none: str = "ignore"

    def __post_init__(self):
        check_types(self, "stream.rules")
        self.affix_lengths = _lengths("stream.rules", "affix_lengths", self.affix_lengths)
        self.context_sizes = _lengths("stream.rules", "context_sizes", self.context_sizes)
        if min(self.affix_lengths) < 1 or min(self.context_sizes) < 1:
            raise ValueError("stream.rules.affix_lengths and context_sizes must be >= 1, got "
                             f"{list(self.affix_lengths)} and {list(self.context_sizes)}")
        self.types = tuple(self.types)
        bad = [t for t in self.types if t not in RULE_TYPES]
        if bad or not self.types:
            raise ValueError(f"stream.rules.types must be a non-empty subset of {list(RULE_TYPES)}, got {list(self.types)}")
        _choice("stream.rules", "scorer", self.scorer, SCORERS)
        _choice("stream.rules", "coverage", self.coverage, COVERAGES)
        _choice("stream.rules", "affix_count", self.affix_count, AFFIX_COUNTS)
        _choice("stream.rules", "conflict", self.conflict, CONFLICTS)
        _choice("stream.rules", "overlap", self.overlap, OVERLAPS)
        _choice("stream.rules", "boundary_none", self.boundary_none, ("ignore", "count"))


@dataclass
class ClassifierConfig:
    """The span classifier trained on the rules' weak labels: a linear model (or one hidden layer)
    over hashed span features (tokens, character affixes, context words, shape, length).

    - `buckets` [I]: hash buckets of the features; `hidden` [I]: 0 = linear, else a ReLU layer.
    - `negative_ratio` [I]: unlabelled spans sampled as NONE per weakly labelled span.
    - `epochs`, `lr`, `weight_decay`: full-batch Adam training."""

    buckets: int = bounded(1 << 16, ge=16)
    hidden: int = bounded(0, ge=0)
    negative_ratio: float = bounded(2.0, ge=0)
    epochs: int = bounded(30, ge=1)
    lr: float = bounded(0.05, gt=0)
    weight_decay: float = bounded(1e-5, ge=0)

    def __post_init__(self):
        check_types(self, "stream.classifier")


@dataclass
class StreamConfig:
    """The STREAM loop.

    - `labels`: the entity types (NONE is added as the extra class).
    - `kappa` [I]: both templates' confidence must reach it for a seed.
    - `kappa_pool` [I] (kappa'): a classifier prediction that agrees with the rules joins the pool
      at this confidence.
    - `expert_budget` [I]: candidate spans shown to the expert (two prompts each);
      `expert_selection` [I]: "frequent" (the most frequent span texts, one occurrence each) or
      "random" (occurrences drawn uniformly, seeded).
    - `none_seeds` [I]: NONE answers both templates agree on join the pool (as negatives that
      rules' precision counts) or are dropped.
    - `none_pool` [I]: spans no rule labels that the classifier calls NONE with confidence >=
      kappa' join the pool as NONE (they agree with the rules, which say nothing about them), so
      a rule's precision on the pool counts the plain words it would also match; without them
      context rules drift (a pool made of the rules' own outputs confirms them).
    - `expert_calibration` [I]: "none", or "batch": each template's class probabilities are
      divided by their mean over all the spans shown to the expert and renormalised (batch
      calibration, Zhou et al. 2023) before the consistency filter, so a class the prompt favours
      for every span (an LM's prior for "word" after "It is a") does not win every answer; kappa
      then applies to the calibrated probabilities.
    - `min_growth` [I]: stop when the pool grows by less than this fraction (1 %).
    - `max_iterations`: a cap on the loop."""

    labels: Tuple[str, ...] = ()
    spans: SpanConfig = field(default_factory=SpanConfig)
    rules: RuleConfig = field(default_factory=RuleConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    kappa: float = bounded(0.5, ge=0, le=1)
    kappa_pool: float = bounded(0.9, ge=0, le=1)
    expert_budget: int = bounded(500, ge=1)
    expert_selection: str = "frequent"
    none_seeds: bool = True
    none_pool: bool = False
    expert_calibration: str = "none"
    min_growth: float = bounded(0.01, ge=0)
    max_iterations: int = bounded(20, ge=1)
    seed: int = bounded(0, ge=0)

    def __post_init__(self):
        if isinstance(self.spans, dict):
            self.spans = SpanConfig(**self.spans)
        if isinstance(self.rules, dict):
            self.rules = RuleConfig(**self.rules)
        if isinstance(self.classifier, dict):
            self.classifier = ClassifierConfig(**self.classifier)
        check_types(self, "stream")
        labels = list(self.labels)
        if not labels or len(set(labels)) != len(labels) or NONE in labels or not all(labels):
            raise ValueError(f"stream.labels must be distinct non-empty names other than {NONE!r}, got {labels}")
        self.labels = tuple(labels)
        _choice("stream", "expert_selection", self.expert_selection, ("frequent", "random"))
        _choice("stream", "expert_calibration", self.expert_calibration, CALIBRATIONS)

    @property
    def classes(self) -> List[str]:
        """The labels and NONE (the classifier's and the expert's classes, NONE last)."""
        return list(self.labels) + [NONE]
