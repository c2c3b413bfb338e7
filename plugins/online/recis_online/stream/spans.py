"""Sentences, tokens and candidate spans (functional; no learning here).

A corpus is a list of sentences, each a list of tokens. A candidate span is (sentence, start,
end) with `end` exclusive; its text is its tokens, lower-cased, joined by single spaces.

>>> tokenize("Dr. Smith gave 5 mg of caffeine, twice.")
['Dr.', 'Smith', 'gave', '5', 'mg', 'of', 'caffeine', ',', 'twice', '.']
>>> sents = [tokenize("the patient took caffeine today")]
>>> spans = candidate_spans(sents, SpanConfig(max_len=2))
>>> [span_text(sents, s) for s in spans.tolist()]
['patient', 'patient took', 'took', 'took caffeine', 'caffeine', 'caffeine today', 'today']
>>> sorted(span_keys(sents, (0, 4, 5), RuleConfig(affix_lengths=(3,), context_sizes=(1, 2))))
[('PostNgram', '<e>'), ('PostNgram', '<e> <e>'), ('PreNgram', 'caffeine'), ('PreNgram', 'took caffeine'), ('Prefix', 'tod'), ('Suffix', 'day'), ('SurfaceForm', 'today')]
"""
import re
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from recis_online.stream.config import RuleConfig, SpanConfig

__all__ = ["tokenize", "split_sentences", "candidate_spans", "span_text", "span_keys", "KeyIndex"]

_ABBREV = re.compile(r"[A-Z][a-z]{0,3}\.(?=\s+[A-Z])")
_TOKEN = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]", re.UNICODE)
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")
_PUNCT = re.compile(r"^[^\w]+$", re.UNICODE)
#: the padding token of PreNgram / PostNgram keys at a sentence's start / end.
EDGE = "<e>"


def tokenize(text: str, keep_abbreviations: bool = True) -> List[str]:
    """Word and punctuation tokens; a capitalised abbreviation ("Dr.", "Mrs.") followed by a
    capitalised word keeps its period when `keep_abbreviations`."""
    if not isinstance(text, str):
        raise TypeError(f"tokenize needs a string, got {type(text).__name__}")
    out: List[str] = []
    pos = 0
    if keep_abbreviations:
        for m in _ABBREV.finditer(text):
            out += _TOKEN.findall(text[pos:m.start()])
            out.append(m.group())
            pos = m.end()
    out += _TOKEN.findall(text[pos:])
    return out


def split_sentences(text: str) -> List[str]:
    """Sentences of a text: split after '.', '!' or '?' followed by space and a capital or digit
    (an abbreviation such as "Dr." followed by a capitalised name is not a boundary)."""
    parts = _SENT.split(text.strip()) if text and text.strip() else []
    out: List[str] = []
    for p in parts:
        if out and re.search(r"\b[A-Z][a-z]{0,3}\.$", out[-1]):
            out[-1] += " " + p
        else:
            out.append(p)
    return out


def _ok(tokens: Sequence[str], cfg: SpanConfig) -> bool:
    low = [t.lower() for t in tokens]
    if any(_PUNCT.match(t) and not t.endswith(".") or t == "." for t in tokens):
        return False
    if low[0] in cfg.stop_words or low[-1] in cfg.stop_words:
        return False
    if not cfg.keep_numbers and all(t.isdigit() for t in low):
        return False
    return True


def candidate_spans(sentences: Sequence[Sequence[str]], cfg: SpanConfig) -> np.ndarray:
    """int64 [N, 3] (sentence, start, end) of every candidate span, in reading order (by start,
    then length)."""
    rows: List[Tuple[int, int, int]] = []
    for s, toks in enumerate(sentences):
        n = len(toks)
        for i in range(n):
            for j in range(i + 1, min(i + cfg.max_len, n) + 1):
                if cfg.span_filter == "all" or _ok(toks[i:j], cfg):
                    rows.append((s, i, j))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def span_text(sentences: Sequence[Sequence[str]], span: Sequence[int]) -> str:
    s, i, j = (int(x) for x in span)
    return " ".join(t.lower() for t in sentences[s][i:j])


def span_keys(sentences: Sequence[Sequence[str]], span: Sequence[int], cfg: RuleConfig) -> List[Tuple[str, str]]:
    """The (rule type, pattern) keys a span matches: its text (SurfaceForm), its proper character
    prefixes / suffixes of `affix_lengths`, and the `context_sizes` tokens before / after it
    (padded with `<e>` at the sentence's edges)."""
    s, i, j = (int(x) for x in span)
    toks = [t.lower() for t in sentences[s]]
    text = " ".join(toks[i:j])
    keys: List[Tuple[str, str]] = []
    if "SurfaceForm" in cfg.types:
        keys.append(("SurfaceForm", text))
    for n in cfg.affix_lengths:
        if n < len(text):
            if "Prefix" in cfg.types:
                keys.append(("Prefix", text[:n]))
            if "Suffix" in cfg.types:
                keys.append(("Suffix", text[-n:]))
    for n in cfg.context_sizes:
        if "PreNgram" in cfg.types:
            pre = toks[max(0, i - n):i]
            keys.append(("PreNgram", " ".join([EDGE] * (n - len(pre)) + pre)))
        if "PostNgram" in cfg.types:
            post = toks[j:j + n]
            keys.append(("PostNgram", " ".join(post + [EDGE] * (n - len(post)))))
    return keys


class KeyIndex:
    """Inverted index (rule type, pattern) -> span ids, over a corpus's candidate spans."""

    def __init__(self, sentences: Sequence[Sequence[str]], spans: np.ndarray, cfg: RuleConfig):
        self.cfg = cfg
        index: Dict[Tuple[str, str], List[int]] = {}
        self.keys: List[List[Tuple[str, str]]] = []
        #: each span's text (`span_text`), for counting distinct surface forms
        self.texts: List[str] = []
        for sid, span in enumerate(spans.tolist()):
            self.texts.append(span_text(sentences, span))
            ks = span_keys(sentences, span, cfg)
            self.keys.append(ks)
            for k in ks:
                index.setdefault(k, []).append(sid)
        self.index = {k: np.asarray(v, dtype=np.int64) for k, v in index.items()}

    def matches(self, key: Tuple[str, str]) -> np.ndarray:
        """Span ids the key matches (empty when none)."""
        return self.index.get(tuple(key), np.zeros(0, dtype=np.int64))

    def keys_of(self, span_ids: Iterable[int]) -> Dict[Tuple[str, str], List[int]]:
        """key -> the given span ids it matches."""
        out: Dict[Tuple[str, str], List[int]] = {}
        for sid in span_ids:
            for k in self.keys[int(sid)]:
                out.setdefault(k, []).append(int(sid))
        return out
