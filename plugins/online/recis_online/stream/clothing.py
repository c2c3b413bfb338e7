"""STREAM on the Women's E-Commerce Clothing Reviews (`recis.datasets.clothing_reviews`): rules
for garment type, colour, material and fit mentions, learned from SmolLM2 as the expert, and
scored against a gold set derived from the catalogue's own structured fields.

Gold (garment type only): the catalogue's Class Name and Department Name values (lower case, and
their singular: "dresses" -> "dress") that occur as words of the review text; each occurrence is
a gold mention, identified by its word position. Values that are not garment nouns in running
text are left out (`ClothingGold.exclude` [I]: "trend", "sleep", "swim", "lounge", "layering",
"intimate(s)", "knit(s)" — a material as often as a garment —, and the two-word values). The gold
set is what string matching gives: "top" in "on top of" counts as a gold garment mention too.

A predicted GARMENT span counts at its last word (the head of an English noun phrase): precision
= predicted heads that are gold positions / predicted heads; recall = gold positions that are a
predicted head / gold positions. Colour, material and fit have no catalogue field: their rules
are reported, not scored.

Validation and test (`split_reviews`): the drawn reviews are split by review (seeded) into a
validation part and a disjoint test part. Rules are learned on the text of all drawn reviews (no
gold is used to learn); options are chosen on the validation part's gold; the test part's gold is
read once, for the chosen options.
"""
import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Set, Tuple

import numpy as np
import pyarrow as pa

from recis.config_utils import bounded, check_types

from recis_online.stream.config import NONE
from recis_online.stream.spans import split_sentences, tokenize

__all__ = ["LABELS", "VERBALIZER", "TEMPLATES", "ClothingGold", "review_sentences", "gold_vocabulary",
           "gold_positions", "evaluate_garments", "head_words", "split_reviews"]

LABELS = ("GARMENT", "COLOUR", "MATERIAL", "FIT")
#: verbalizer [I]: the next word SmolLM2 gives after the templates, mapped to a class.
VERBALIZER = {"garment": "GARMENT", "clothing": "GARMENT", "dress": "GARMENT", "color": "COLOUR",
              "colour": "COLOUR", "fabric": "MATERIAL", "material": "MATERIAL", "fiber": "MATERIAL",
              "fit": "FIT", "size": "FIT", "feeling": NONE, "person": NONE, "verb": NONE, "word": NONE}
#: the two templates [I] for a causal LM (the verbalizer word is the next token).
TEMPLATES = ('Review: "{sentence}"\nIn this review, the word "{span}" refers to a',
             'Review: "{sentence}"\nQ: What is "{span}"?\nA: It is a')


@dataclass
class ClothingGold:
    """How the gold set is derived (see the module docstring)."""

    exclude: Tuple[str, ...] = ("trend", "sleep", "swim", "lounge", "layering", "intimate", "intimates",
                                "knit", "knits")
    singular: bool = True
    reviews: int = bounded(3000, ge=1)
    seed: int = bounded(0, ge=0)

    def __post_init__(self):
        check_types(self, "clothing.gold")


def _singular(word: str) -> str:
    if word.endswith("sses") or word.endswith("shes"):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and word not in ("pants", "jeans", "shorts"):
        return word[:-1]
    return word


def gold_vocabulary(table: pa.Table, cfg: ClothingGold) -> Set[str]:
    """One-word catalogue values (class and department names, lower case, with singulars)."""
    values = set()
    for col in ("class_name", "department"):
        for v in table[col].drop_null().unique().to_pylist():
            v = v.strip().lower()
            if " " in v or v in cfg.exclude:
                continue
            values.add(v)
            if cfg.singular:
                values.add(_singular(v))
    return {v for v in values if v not in cfg.exclude}


def review_sentences(table: pa.Table, cfg: ClothingGold) -> Tuple[List[List[str]], List[int]]:
    """(sentences as tokens, the review id of each) of `cfg.reviews` reviews drawn without
    replacement (seeded) from those with text."""
    rows = [r for r in table.select(["review_id", "review_text"]).to_pylist() if r["review_text"]]
    rng = np.random.default_rng(cfg.seed)
    pick = sorted(rng.choice(len(rows), size=min(cfg.reviews, len(rows)), replace=False).tolist())
    sents, owner = [], []
    for k in pick:
        text = re.sub(r"([.!?])(?=[A-Za-z])", r"\1 ", rows[k]["review_text"])
        for s in split_sentences(text):
            toks = tokenize(s)
            if toks:
                sents.append(toks)
                owner.append(int(rows[k]["review_id"]))
    return sents, owner


def split_reviews(owner: Sequence[int], validation: float = 0.5, seed: int = 1) -> Set[int]:
    """The review ids of the validation part: a `validation` share of the distinct reviews in
    `owner` (each sentence's review id), drawn without replacement with `seed`; the rest is test.

    >>> sorted(split_reviews([7, 7, 8, 9, 9, 10], 0.5, seed=0)) == sorted(split_reviews([7, 8, 9, 10], 0.5, seed=0))
    True
    """
    if not 0 < validation < 1:
        raise ValueError(f"clothing split: validation must be a share in (0, 1), got {validation!r}")
    ids = sorted(set(int(o) for o in owner))
    rng = np.random.default_rng(seed)
    k = int(round(validation * len(ids)))
    return set(int(i) for i in rng.choice(ids, size=k, replace=False).tolist()) if k else set()


def gold_positions(sentences: Sequence[Sequence[str]], vocabulary: Set[str]) -> Set[Tuple[int, int]]:
    """(sentence, word) positions whose word is in the gold vocabulary."""
    return {(s, i) for s, toks in enumerate(sentences) for i, t in enumerate(toks) if t.lower() in vocabulary}


def evaluate_garments(tags: Sequence[tuple], gold: Set[Tuple[int, int]], label: str = "GARMENT") -> Dict[str, object]:
    """Precision / recall of the predicted `label` spans' heads against the gold positions, and the
    predicted head positions (`positions`)."""
    heads = {(s, j - 1) for s, i, j, y in tags if y == label}
    tp = heads & gold
    return {"precision": len(tp) / len(heads) if heads else 0.0, "recall": len(tp) / len(gold) if gold else 0.0,
            "predicted": len(heads), "gold": len(gold), "true_positives": len(tp),
            "positions": sorted(heads)}


def head_words(sentences, positions) -> List[Tuple[str, int]]:
    """The 15 most frequent words at `positions`, with their counts."""
    from collections import Counter

    return Counter(sentences[s][i].lower() for s, i in positions).most_common(15)
