"""Text columns from the batch (pass-through features in `batch.extras`) and batch tokenization.

>>> import pyarrow as pa
>>> from types import SimpleNamespace
>>> batch = SimpleNamespace(extras={"query": pa.array(["red shoes", "tea"])})
>>> text_column(batch, "query")
['red shoes', 'tea']
>>> text_column(batch, "title")
Traceback (most recent call last):
...
recis.towers.text.MissingTextColumnError: "text column 'title' is not in the batch; its pass-through columns are ['query'] (add a feature {name: title, kind: passthrough, column: ...} to the feature config)"
"""
from typing import List, Sequence

__all__ = ["MissingTextColumnError", "column", "text_column", "list_column", "tokenize"]


class MissingTextColumnError(KeyError):
    """A text column the tower reads is not among the batch's pass-through columns."""


def _column(batch, name: str):
    extras = getattr(batch, "extras", None) or {}
    if name not in extras:
        raise MissingTextColumnError(f"text column {name!r} is not in the batch; its pass-through columns are "
                                     f"{sorted(extras)} (add a feature {{name: {name}, kind: passthrough, column: "
                                     "...}} to the feature config)")
    col = extras[name]
    return col.to_pylist() if hasattr(col, "to_pylist") else list(col)


def column(batch, name: str) -> list:
    """The values of pass-through column `name`, one per row, as Python objects (any type)."""
    return _column(batch, name)


def text_column(batch, name: str) -> List[str]:
    """One string per row of pass-through column `name`; nulls and non-strings raise, naming the column."""
    values = _column(batch, name)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"text column {name!r}, row {i}: expected a string, found {v!r}")
    return values


def list_column(batch, name: str) -> List[List[str]]:
    """One list of strings per row of pass-through column `name` (a null row is an empty list)."""
    out = []
    for i, v in enumerate(_column(batch, name)):
        v = [] if v is None else v
        if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
            raise TypeError(f"column {name!r}, row {i}: expected a list of strings, found {v!r}")
        out.append(list(v))
    return out


def tokenize(tokenizer, first: Sequence[str], second: Sequence[str] = None, max_length: int = 64, device=None):
    """One tokenizer call for the whole batch (texts, or text pairs): padded tensors, truncated to
    `max_length`, on `device`."""
    if second is not None and len(second) != len(first):
        raise ValueError(f"tokenize: {len(first)} first texts but {len(second)} second texts")
    enc = tokenizer(list(first), None if second is None else list(second), padding=True, truncation=True,
                    max_length=max_length, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()} if device is not None else dict(enc)
