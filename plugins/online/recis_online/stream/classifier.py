"""The span classifier STREAM trains on the rules' weak labels: hashed span features (tokens,
character affixes, context words, shape, length) into `torch.nn.EmbeddingBag` (sum), i.e. a
linear model over sparse features, or one ReLU layer on top (`ClassifierConfig.hidden`).

Features are hashed with CRC-32 (the same stable hash recis uses for table seeds and file
shards), so they do not depend on the Python process.

>>> sents = [["Dr.", "Smith", "took", "caffeine"]]
>>> feats = span_features(sents, (0, 0, 2))
>>> feats[:4]
['t:dr.', 't:smith', 'text:dr. smith', 'p2:dr']
"""
import zlib
from typing import List, Sequence

import numpy as np
import torch
from torch import nn

from recis_online.stream.config import ClassifierConfig

__all__ = ["span_features", "hashed_features", "SpanClassifier", "train_classifier", "predict"]


def _shape(tok: str) -> str:
    if tok.isdigit():
        return "d"
    if tok[:1].isupper():
        return "X"
    return "x" if tok.isalpha() else "o"


def span_features(sentences: Sequence[Sequence[str]], span: Sequence[int]) -> List[str]:
    """The feature strings of one span (sentence, start, end)."""
    s, i, j = (int(x) for x in span)
    toks = sentences[s]
    low = [t.lower() for t in toks[i:j]]
    text = " ".join(low)
    out = [f"t:{w}" for w in low] + [f"text:{text}"]
    for n in (2, 3, 4):
        out += [f"p{n}:{text[:n]}", f"s{n}:{text[-n:]}", f"hs{n}:{low[-1][-n:]}"]
    out += [f"prev1:{toks[i - 1].lower() if i > 0 else '<e>'}", f"next1:{toks[j].lower() if j < len(toks) else '<e>'}",
            f"prev2:{' '.join(t.lower() for t in toks[max(0, i - 2):i])}",
            f"next2:{' '.join(t.lower() for t in toks[j:j + 2])}",
            f"shape:{''.join(_shape(t) for t in toks[i:j])}", f"len:{j - i}", "bias"]
    return out


def hashed_features(sentences: Sequence[Sequence[str]], spans: np.ndarray, buckets: int) -> torch.Tensor:
    """int64 [N, F]: every span's hashed feature ids, padded with `buckets` (the padding row)."""
    rows = [[zlib.crc32(f.encode("utf-8")) % buckets for f in span_features(sentences, span)]
            for span in spans.tolist()]
    width = max((len(r) for r in rows), default=1)
    out = np.full((len(rows), width), buckets, dtype=np.int64)
    for k, r in enumerate(rows):
        out[k, :len(r)] = r
    return torch.from_numpy(out)


class SpanClassifier(nn.Module):
    """Scores [N, classes] of spans given by their padded hashed feature ids [N, F]: the sum of
    the features' rows of `weight` (the padding row is zero), then an optional ReLU layer."""

    def __init__(self, classes: int, cfg: ClassifierConfig):
        super().__init__()
        self.pad = cfg.buckets
        self.weight = nn.Parameter(torch.zeros(cfg.buckets + 1, cfg.hidden or classes))
        self.bias = nn.Parameter(torch.zeros(cfg.hidden or classes))
        self.out = nn.Linear(cfg.hidden, classes) if cfg.hidden else None

    def head(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.bias
        return self.out(torch.relu(h)) if self.out is not None else h

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.weight[ids].sum(dim=1))


def train_classifier(features: torch.Tensor, rows: np.ndarray, targets: np.ndarray, classes: int,
                     cfg: ClassifierConfig, seed: int = 0) -> SpanClassifier:
    """A SpanClassifier trained (full batch, Adam, class-balanced cross-entropy) on the spans
    `rows` (indices into `features`) with class indices `targets`.

    Only the feature rows these spans use are trained (a compact copy, written back after), which
    gives the same result as training the full table: the other rows get no gradient, and Adam's
    weight decay is applied to the rows in use only."""
    if len(rows) != len(targets):
        raise ValueError(f"train_classifier: {len(rows)} rows but {len(targets)} targets")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SpanClassifier(classes, cfg)
        if model.out is not None:
            nn.init.normal_(model.weight, std=0.01)
            with torch.no_grad():
                model.weight[cfg.buckets].zero_()
    x = features[torch.as_tensor(np.asarray(rows), dtype=torch.int64)]
    used, inverse = torch.unique(x, return_inverse=True)
    keep = (x != cfg.buckets).unsqueeze(-1).float()
    compact = nn.Parameter(model.weight.detach()[used].clone())
    y = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    counts = torch.bincount(y, minlength=classes).float()
    weight = torch.where(counts > 0, counts.sum() / (classes * counts.clamp_min(1)), torch.zeros_like(counts))
    params = [compact, model.bias] + (list(model.out.parameters()) if model.out is not None else [])
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    for _ in range(cfg.epochs):
        opt.zero_grad()
        loss = loss_fn(model.head((compact[inverse] * keep).sum(dim=1)), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.weight[used] = compact.detach()
        model.weight[cfg.buckets].zero_()
    model.eval()
    return model


@torch.no_grad()
def predict(model: SpanClassifier, features: torch.Tensor, rows: np.ndarray, chunk: int = 65536) -> torch.Tensor:
    """Class probabilities [len(rows), classes] of the spans `rows`."""
    rows = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
    outs = [torch.softmax(model(features[rows[a:a + chunk]]), dim=-1) for a in range(0, len(rows), chunk)]
    return torch.cat(outs) if outs else torch.zeros(0, 0)
