"""Experts that label candidate spans under two prompt templates, and STREAM's consistency filter.

An expert returns, for each span, a probability over the classes (entity labels, then NONE)
under template 1 and under template 2. A span becomes a seed instance only where both argmaxes
agree and both confidences reach kappa (`consistent_seeds`):

>>> import torch
>>> p1 = torch.tensor([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.55, 0.45, 0.0]])
>>> p2 = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.6, 0.4, 0.0]])
>>> consistent_seeds(p1, p2, kappa=0.6)
[(0, 0)]

- `PromptExpert`: any masked LM (the verbalizer is scored at the [MASK] position) or causal LM
  (scored at the next-token position after the prompt): one forward per prompt, batched, no
  generation. Each verbalizer word is read as its first token; the class probability is the
  softmax over the verbalizer tokens, summed (or maxed) over a class's words.
- `ScriptedExpert`: knows the true label of every span and answers it under each template with
  probability `accuracy`, else a uniformly drawn wrong class (seeded per span and template).
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from recis.config_utils import bounded, check_types

__all__ = ["consistent_seeds", "batch_calibrate", "ScriptedExpert", "PromptConfig", "PromptExpert", "load_prompt_expert",
           "CAUSAL_TEMPLATES", "MASKED_TEMPLATES", "CachedExpert"]

#: the notes' templates T1 "<sent> <span> is a [MASK]." and T2 "<span>, a kind of [MASK]".
MASKED_TEMPLATES = ("{sentence} {span} is a {mask}.", "{span}, a kind of {mask}.")
#: the same two templates for a causal LM: the verbalizer word is the next token.
CAUSAL_TEMPLATES = ('{sentence}\nIn the sentence above, "{span}" is a', '"{span}", a kind of')


def consistent_seeds(p1: torch.Tensor, p2: torch.Tensor, kappa: float) -> List[Tuple[int, int]]:
    """(row, class) of the rows whose two argmaxes agree with both confidences >= kappa."""
    if p1.shape != p2.shape or p1.dim() != 2:
        raise ValueError(f"template probabilities must be two [N, classes] tensors of one shape, got "
                         f"{tuple(p1.shape)} and {tuple(p2.shape)}")
    c1, a1 = p1.max(dim=1)
    c2, a2 = p2.max(dim=1)
    keep = (a1 == a2) & (c1 >= kappa) & (c2 >= kappa)
    return [(int(i), int(a1[i])) for i in torch.nonzero(keep).flatten().tolist()]


def batch_calibrate(p: torch.Tensor) -> torch.Tensor:
    """Batch calibration: `p` [N, classes] divided by its mean over the N rows, renormalised per row.

    >>> batch_calibrate(torch.tensor([[0.2, 0.8], [0.4, 0.6]])).round(decimals=3)
    tensor([[0.3680, 0.6320],
            [0.6090, 0.3910]])
    """
    q = p / p.mean(dim=0, keepdim=True).clamp_min(1e-12)
    return q / q.sum(dim=1, keepdim=True)


def _window(tokens: Sequence[str], start: int, end: int, width: int) -> str:
    a, b = max(0, start - width), min(len(tokens), end + width)
    return " ".join(tokens[a:b])


class ScriptedExpert:
    """`gold(sentences, span) -> class name` (NONE for no entity); each template answers it with
    probability `accuracy`, otherwise a wrong class drawn uniformly; the answer's confidence is
    drawn from U(`confidence_low`, 1), the rest of the mass spread evenly."""

    def __init__(self, classes: Sequence[str], gold: Callable[[Sequence[Sequence[str]], Tuple[int, int, int]], str],
                 accuracy: float, seed: int = 0, confidence_low: float = 0.5):
        if not 0 <= accuracy <= 1:
            raise ValueError(f"ScriptedExpert accuracy must be in [0, 1], got {accuracy!r}")
        if len(classes) < 2:
            raise ValueError(f"ScriptedExpert needs at least two classes, got {list(classes)}")
        self.classes, self.gold, self.accuracy, self.seed = list(classes), gold, accuracy, seed
        self.confidence_low = confidence_low
        self.prompts = 0

    def template_probs(self, sentences: Sequence[Sequence[str]], spans: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        k = len(self.classes)
        out = np.zeros((2, len(spans), k))
        for n, span in enumerate(spans.tolist()):
            truth = self.classes.index(self.gold(sentences, tuple(span)))
            for t in range(2):
                rng = np.random.default_rng([self.seed, t, *span])
                if rng.random() < self.accuracy:
                    answer = truth
                else:
                    answer = [c for c in range(k) if c != truth][rng.integers(k - 1)]
                conf = rng.uniform(self.confidence_low, 1.0)
                out[t, n, :] = (1 - conf) / (k - 1)
                out[t, n, answer] = conf
        self.prompts += 2 * len(spans)
        return torch.from_numpy(out[0]), torch.from_numpy(out[1])


@dataclass
class PromptConfig:
    """Options of a prompt expert.

    - `kind`: "masked" or "causal".
    - `templates` [I]: two templates with `{sentence}`, `{span}` and, for a masked LM, `{mask}`
      (default: `MASKED_TEMPLATES` / `CAUSAL_TEMPLATES`).
    - `verbalizer` [I]: word -> class (an entity label or NONE); each word is read as its first
      token (with a leading space for a causal LM's byte-level BPE, `space_prefix`).
    - `aggregate` [I]: a class's probability is the "sum" or the "max" over its words.
    - `context_words` [I]: the sentence is cut to this many words on each side of the span.
    - `batch_size`, `max_length` (tokens; longer prompts keep their end for a causal LM)."""

    kind: str = "causal"
    verbalizer: Dict[str, str] = field(default_factory=dict)
    templates: Optional[Tuple[str, str]] = None
    aggregate: str = "sum"
    context_words: int = bounded(24, ge=0)
    batch_size: int = bounded(32, ge=1)
    max_length: int = bounded(96, ge=8)
    space_prefix: Optional[bool] = None

    def __post_init__(self):
        check_types(self, "stream.expert")
        if self.kind not in ("masked", "causal"):
            raise ValueError(f"stream.expert.kind must be 'masked' or 'causal', got {self.kind!r}")
        if self.aggregate not in ("sum", "max"):
            raise ValueError(f"stream.expert.aggregate must be 'sum' or 'max', got {self.aggregate!r}")
        if not self.verbalizer:
            raise ValueError("stream.expert.verbalizer must map at least one word to a class")
        if self.templates is None:
            self.templates = MASKED_TEMPLATES if self.kind == "masked" else CAUSAL_TEMPLATES
        self.templates = tuple(self.templates)
        if len(self.templates) != 2:
            raise ValueError(f"stream.expert.templates must be two templates, got {len(self.templates)}")
        for n, t in enumerate(self.templates):
            if "{span}" not in t or (self.kind == "masked" and "{mask}" not in t):
                raise ValueError(f"stream.expert.templates[{n}] {t!r} lacks {{span}}"
                                 + (" or {mask}" if self.kind == "masked" else ""))
        if self.space_prefix is None:
            self.space_prefix = self.kind == "causal"


class PromptExpert:
    """Scores the verbalizer under two templates with a masked or causal LM (see the module
    docstring). `classes`: the entity labels then NONE; every verbalizer class must be one."""

    def __init__(self, model: torch.nn.Module, tokenizer, config: PromptConfig, classes: Sequence[str]):
        self.model, self.tok, self.cfg, self.classes = model.eval(), tokenizer, config, list(classes)
        bad = sorted({c for c in config.verbalizer.values() if c not in self.classes})
        if bad:
            raise ValueError(f"stream.expert.verbalizer maps to {bad}, which are not classes {self.classes}")
        ids: Dict[int, str] = {}
        self.word_ids: List[int] = []
        self.word_class: List[int] = []
        for word, cls in config.verbalizer.items():
            piece = (" " + word) if config.space_prefix else word
            toks = tokenizer(piece, add_special_tokens=False)["input_ids"]
            if not toks or toks[0] == getattr(tokenizer, "unk_token_id", None):
                raise ValueError(f"stream.expert.verbalizer word {word!r} has no token of its own in the tokenizer")
            if toks[0] in ids and ids[toks[0]] != word:
                raise ValueError(f"stream.expert.verbalizer words {ids[toks[0]]!r} and {word!r} share their first token")
            ids[toks[0]] = word
            self.word_ids.append(toks[0])
            self.word_class.append(self.classes.index(cls))
        if config.kind == "masked" and tokenizer.mask_token is None:
            raise ValueError("a masked-LM expert needs a tokenizer with a mask token")
        self.prompts = 0
        self.seconds = 0.0

    def prompt(self, template: int, sentence: str, span: str) -> str:
        t = self.cfg.templates[template]
        return t.format(sentence=sentence, span=span, mask=self.tok.mask_token or "")

    def _encode(self, texts: Sequence[str]):
        rows = [self.tok(t, add_special_tokens=True)["input_ids"] for t in texts]
        if self.cfg.kind == "causal":
            rows = [r[-self.cfg.max_length:] for r in rows]
        else:
            rows = [r[:self.cfg.max_length] for r in rows]
        width = max(len(r) for r in rows)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        return ids, mask, [len(r) for r in rows]

    @torch.no_grad()
    def class_probs(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, classes] class probabilities of the prompts `texts`."""
        import time

        t0 = time.perf_counter()
        out = []
        word_ids = torch.tensor(self.word_ids)
        word_class = torch.tensor(self.word_class)
        for a in range(0, len(texts), self.cfg.batch_size):
            ids, mask, lens = self._encode(texts[a:a + self.cfg.batch_size])
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            if self.cfg.kind == "causal":
                pos = torch.tensor(lens) - 1
            else:
                hit = ids == self.tok.mask_token_id
                if not bool(hit.any(dim=1).all()):
                    raise ValueError("a masked-LM prompt lost its mask token (truncated: raise max_length)")
                pos = hit.float().argmax(dim=1)
            row = logits[torch.arange(len(ids)), pos].float()
            p_words = torch.softmax(row[:, word_ids], dim=-1)
            probs = torch.zeros(len(ids), len(self.classes))
            if self.cfg.aggregate == "sum":
                probs.index_add_(1, word_class, p_words)
            else:
                for c in range(len(self.classes)):
                    sel = word_class == c
                    if sel.any():
                        probs[:, c] = p_words[:, sel].max(dim=1).values
                probs = probs / probs.sum(dim=1, keepdim=True)
            out.append(probs)
        self.prompts += len(texts)
        self.seconds += time.perf_counter() - t0
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def template_probs(self, sentences: Sequence[Sequence[str]], spans: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        ctx, texts = [], []
        for s, i, j in spans.tolist():
            ctx.append(_window(sentences[s], i, j, self.cfg.context_words))
            texts.append(" ".join(sentences[s][i:j]))
        return tuple(self.class_probs([self.prompt(t, c, x) for c, x in zip(ctx, texts)]) for t in range(2))


class CachedExpert:
    """Wraps an expert and keeps its answers in a file (a JSON map of "sentence\tstart\tend" to
    the two probability rows), so a rerun on the same corpus asks the model nothing new. The
    file belongs to one expert (model, templates, verbalizer): use a new file for another."""

    def __init__(self, expert, path):
        import json
        import os

        self.expert, self.path = expert, str(path)
        self.answers = json.load(open(self.path)) if os.path.exists(self.path) else {}

    @property
    def prompts(self) -> int:
        return getattr(self.expert, "prompts", 0)

    @property
    def seconds(self) -> float:
        return getattr(self.expert, "seconds", 0.0)

    def template_probs(self, sentences, spans: np.ndarray):
        import json

        keys = [f"{' '.join(sentences[s])}\t{i}\t{j}" for s, i, j in spans.tolist()]
        todo = [n for n, k in enumerate(keys) if k not in self.answers]
        if todo:
            p1, p2 = self.expert.template_probs(sentences, spans[todo])
            for r, n in enumerate(todo):
                self.answers[keys[n]] = [p1[r].tolist(), p2[r].tolist()]
            with open(self.path, "w") as f:
                json.dump(self.answers, f)
        return (torch.tensor([self.answers[k][0] for k in keys]), torch.tensor([self.answers[k][1] for k in keys]))


def load_prompt_expert(model: Union[str, Dict[str, Any]], config: PromptConfig, classes: Sequence[str],
                       tokenizer: Union[str, Dict[str, Any], None] = None) -> PromptExpert:
    """A PromptExpert over `model`: a `pip:` spec, a path / hub name, or a `{config: {...}, seed: N}`
    random model (transformers' AutoModelForMaskedLM or, via `recis.towers.causal_lm`,
    AutoModelForCausalLM); `tokenizer` defaults to the model's own (a path model) and is required
    for a random one."""
    from recis.towers.hub import resolve_model

    if tokenizer is None and not isinstance(model, str):
        raise ValueError("a random expert model needs a tokenizer spec")
    model = resolve_model(model, needed=()) if isinstance(model, str) else model
    if config.kind == "causal":
        from recis.towers.causal_lm import load_causal_lm, load_lm_tokenizer

        lm, _ = load_causal_lm(model)
        tok = load_lm_tokenizer(tokenizer if tokenizer is not None else model)
    else:
        from transformers import AutoModelForMaskedLM

        from recis.towers.hf import from_config_spec, from_pretrained, load_tokenizer

        lm = from_pretrained(AutoModelForMaskedLM, model, "expert") if isinstance(model, str) else \
            from_config_spec(AutoModelForMaskedLM, model, "expert")[0]
        tok = load_tokenizer(tokenizer if tokenizer is not None else model)
    return PromptExpert(lm, tok, config, classes)
