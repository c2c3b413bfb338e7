"""Pretraining the QE module from click logs: QE labels generated from impressions.

For a query, the entities of clicked items are positives; same-type entities of items that were
shown and not clicked are negatives (unless the entity is also a positive for that query: a
positive wins). `simulate_click_logs` draws seeded sessions over a graded task (the public data
have no logs).

>>> logs = [ClickLog("red shoes", shown=[1, 2], clicked=[1])]
>>> items = {1: ["colour: red", "category: shoes"], 2: ["colour: blue", "category: shoes", "brand: acme"]}
>>> qe_labels_from_logs(logs, items)
[('red shoes', 'colour: red', 1.0), ('red shoes', 'category: shoes', 1.0), ('red shoes', 'colour: blue', 0.0)]
"""
import random
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

import pyarrow as pa
import torch

from recis_relevance.entities import Entity

__all__ = ["ClickLog", "qe_labels_from_logs", "simulate_click_logs", "pretrain_qe", "CLICK_PROB"]

CLICK_PROB = {1: 0.02, 2: 0.10, 3: 0.35, 4: 0.75}


@dataclass
class ClickLog:
    """One impression list: the items shown for a query and those clicked."""

    query: str
    shown: Sequence[int]
    clicked: Sequence[int] = field(default_factory=list)

    def __post_init__(self):
        stray = [i for i in self.clicked if i not in set(self.shown)]
        if stray:
            raise ValueError(f"log of {self.query!r}: clicked items {stray} were not shown")


def qe_labels_from_logs(logs: Sequence[ClickLog], item_entities: Mapping[int, Sequence[str]]
                        ) -> List[Tuple[str, str, float]]:
    """(query, entity text, 1.0 / 0.0) QE labels, positives first per query, without duplicates."""
    pos: Dict[str, Dict[str, None]] = {}
    neg: Dict[str, Dict[str, None]] = {}
    for log in logs:
        for item in log.shown:
            if item not in item_entities:
                raise KeyError(f"log of {log.query!r}: item {item!r} has no entities")
        clicked = set(log.clicked)
        p = pos.setdefault(log.query, {})
        for item in log.clicked:
            p.update(dict.fromkeys(item_entities[item]))
        types = {Entity.parse(e).type for item in log.clicked for e in item_entities[item]}
        n = neg.setdefault(log.query, {})
        for item in log.shown:
            if item not in clicked:
                n.update(dict.fromkeys(e for e in item_entities[item] if Entity.parse(e).type in types))
    out = []
    for q in pos:
        out += [(q, e, 1.0) for e in pos[q]]
        out += [(q, e, 0.0) for e in neg.get(q, {}) if e not in pos[q]]
    return out


def simulate_click_logs(table: pa.Table, click_prob: Mapping[int, float] = CLICK_PROB, seed: int = 0,
                        sessions_per_query: int = 3) -> List[ClickLog]:
    """Seeded sessions over a graded task table (query, item_id, label): each session shows a
    query's items and clicks each with click_prob[grade]."""
    rng = random.Random(seed)
    by_query: Dict[str, List[Tuple[int, int]]] = {}
    for q, item, g in zip(table["query"].to_pylist(), table["item_id"].to_pylist(), table["label"].to_pylist()):
        by_query.setdefault(q, []).append((item, int(g)))
    logs = []
    for q, shown in by_query.items():
        for _ in range(sessions_per_query):
            clicked = [i for i, g in shown if rng.random() < click_prob[g]]
            if clicked:
                logs.append(ClickLog(q, [i for i, _ in shown], clicked))
    return logs


def pretrain_qe(tower, labels: Sequence[Tuple[str, str, float]], heads: Sequence[int] = (0,), epochs: int = 1,
                batch_size: int = 64, lr: float = 5e-5, seed: int = 0) -> List[float]:
    """BCE of the tower's QE heads `heads` (0: match) on QE labels; returns the loss per epoch."""
    if not labels:
        raise ValueError("pretrain_qe got no QE labels")
    params = [p for g in tower.optimizer_groups() for p in g["params"]]
    opt = torch.optim.AdamW(params, lr=lr)
    rng = random.Random(seed)
    order = list(range(len(labels)))
    tower.train()
    history = []
    for _ in range(epochs):
        rng.shuffle(order)
        total = 0.0
        for start in range(0, len(order), batch_size):
            chunk = [labels[i] for i in order[start:start + batch_size]]
            logits = tower.qe_logits([(q, e) for q, e, _ in chunk], use_cache=False)[:, list(heads)]
            target = torch.tensor([[y] * len(heads) for _, _, y in chunk], dtype=logits.dtype)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(chunk)
        history.append(total / len(labels))
    tower.clear_cache()
    return history
