"""Learned rules as a tagger of raw text: `RuleTagger(rules, config).tag(text)` gives (label,
value) pairs, the form `recis_relevance.entities.EntityExtractor(tagger=...)` reads.

>>> tagger = RuleTagger([Rule("Suffix", "ine", "chem"), Rule("Prefix", "dr.", "person")])
>>> tagger.tag("Dr. Kalo gave the caffeine to the mice.")
[('person', 'dr. kalo'), ('chem', 'caffeine')]
>>> RuleTagger.from_dict(tagger.to_dict()).rules == tagger.rules
True
"""
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from recis.config_utils import from_mapping

from recis_online.stream.config import RuleConfig, SpanConfig, StreamConfig
from recis_online.stream.learner import tag
from recis_online.stream.rules import Rule
from recis_online.stream.spans import split_sentences, tokenize

__all__ = ["RuleTagger"]


class RuleTagger:
    """Tags text with `rules`; candidate spans and overlaps follow `spans` / `rules` options (by
    default those of `StreamConfig`)."""

    def __init__(self, rules: Sequence[Rule], spans: Optional[SpanConfig] = None, rule_config: Optional[RuleConfig] = None):
        self.rules = list(rules)
        labels = tuple(dict.fromkeys(r.label for r in self.rules)) or ("_",)
        self.config = StreamConfig(labels=labels, spans=spans or SpanConfig(), rules=rule_config or RuleConfig())

    def tag(self, text: str) -> List[Tuple[str, str]]:
        sents = [tokenize(s, self.config.spans.keep_abbreviations) for s in split_sentences(text)]
        sents = [s for s in sents if s]
        return [(y, " ".join(t.lower() for t in sents[s][i:j])) for s, i, j, y in tag(sents, self.rules, self.config)]

    def to_dict(self) -> Dict[str, Any]:
        return {"rules": [r.to_dict() for r in self.rules], "spans": asdict(self.config.spans),
                "rule_config": asdict(self.config.rules)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RuleTagger":
        unknown = sorted(set(d) - {"rules", "spans", "rule_config"})
        if unknown:
            raise ValueError(f"rule tagger: unknown key(s) {unknown} (known: ['rule_config', 'rules', 'spans'])")
        rules = []
        for n, r in enumerate(d.get("rules", [])):
            try:
                rules.append(Rule.from_dict(r))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"rule tagger: rules[{n}] {r!r}: {e}") from None
        return cls(rules, from_mapping(SpanConfig, d.get("spans"), "rule tagger.spans"),
                   from_mapping(RuleConfig, d.get("rule_config"), "rule tagger.rule_config"))
