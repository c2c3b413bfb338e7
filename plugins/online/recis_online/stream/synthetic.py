"""A seeded corpus generated from planted rules, with its gold spans (tests and the benchmark).

Every entity mention is written by one planted rule: a CHEM name ends in "ine" (Suffix), a
person is "Dr. <Name>" (Prefix "dr."), a place follows "lives in" (PreNgram), a disease name is
followed by "syndrome" (PostNgram), and "aspirin" is a CHEM (SurfaceForm). Names are random
syllable strings, so no surface form repeats often; filler sentences hold distractors that
break the naive rules ("fine", "line" end in "ine"; "in" and "with" precede other words).
Entity mentions are bounded by stop words or punctuation (what a noun-phrase chunker gives), and
no entity is longer than two tokens: learn with `SpanConfig(max_len=2)`.

>>> corpus = planted_corpus(sentences=20, seed=0)
>>> len(corpus.sentences), sorted(corpus.labels)
(20, ['CHEM', 'DISEASE', 'LOC', 'PER'])
>>> [str(r) for r in PLANTED]
["Suffix('ine') -> CHEM", "Prefix('dr.') -> PER", "PreNgram('lives in') -> LOC", "PostNgram('syndrome') -> DISEASE", "SurfaceForm('aspirin') -> CHEM"]
"""
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from recis_online.stream.config import NONE
from recis_online.stream.rules import Rule

__all__ = ["PLANTED", "PlantedCorpus", "planted_corpus"]

PLANTED = (Rule("Suffix", "ine", "CHEM"), Rule("Prefix", "dr.", "PER"), Rule("PreNgram", "lives in", "LOC"),
           Rule("PostNgram", "syndrome", "DISEASE"), Rule("SurfaceForm", "aspirin", "CHEM"))
_SYL = ("ka", "lo", "mi", "ra", "ten", "vo", "su", "ber", "dal", "ni", "qua", "zor", "pe", "gri", "fo")
_FILLER = ("the results were fine and the line was long .", "we walked with friends in the morning .",
           "the report came in late with many notes .", "she said the weather was fine today .",
           "patients waited in line for hours .", "the team met with the board in spring .")
_TEMPLATES = ("the patient took the {CHEM} at noon .", "{PER} gave the {CHEM} to the patient .",
              "my cousin lives in {LOC} with a dog .", "{PER} studies the {DISEASE} syndrome in children .",
              "the doctor said that {DISEASE} syndrome is rare .", "a friend of {PER} lives in {LOC} .",
              "we gave the {CHEM} to the mice .", "{CHEM} and {CHEM} were mixed in a flask .")


@dataclass
class PlantedCorpus:
    sentences: List[List[str]]
    gold: Dict[Tuple[int, int, int], str]   # (sentence, start, end) -> label
    labels: Tuple[str, ...]

    def label_of(self, sentences, span) -> str:
        """The gold class of a span (NONE where no entity), for `ScriptedExpert`."""
        return self.gold.get(tuple(int(x) for x in span), NONE)


def _name(rng: np.random.Generator, cap: bool) -> str:
    w = "".join(rng.choice(_SYL, size=int(rng.integers(2, 4))))
    return w.capitalize() if cap else w


def planted_corpus(sentences: int = 600, seed: int = 0, filler: float = 0.4) -> PlantedCorpus:
    """`sentences` sentences: a `filler` share of distractor sentences, the rest from entity
    templates whose slots are filled by the planted rules."""
    rng = np.random.default_rng(seed)
    out: List[List[str]] = []
    gold: Dict[Tuple[int, int, int], str] = {}
    for s in range(sentences):
        if rng.random() < filler:
            out.append(str(rng.choice(_FILLER)).split())
            continue
        toks: List[str] = []
        for piece in str(rng.choice(_TEMPLATES)).split():
            if piece.startswith("{") and piece.endswith("}"):
                label = piece[1:-1]
                if label == "CHEM":
                    words = ["aspirin"] if rng.random() < 0.25 else [_name(rng, False) + "ine"]
                elif label == "PER":
                    words = ["Dr.", _name(rng, True)]
                else:
                    words = [_name(rng, True)]
                gold[(s, len(toks), len(toks) + len(words))] = label
                toks += words
            else:
                toks.append(piece)
        out.append(toks)
    return PlantedCorpus(out, gold, ("CHEM", "PER", "LOC", "DISEASE"))
