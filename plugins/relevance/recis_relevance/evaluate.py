"""Graded predictions of a relevance tower over a task table: accuracy, macro-F1 and items/s.

>>> macro_f1([1, 2, 2, 3], [1, 2, 3, 3], classes=[1, 2, 3])
0.7777777777777777
"""
import time
from typing import Dict, List, Optional, Sequence

import pyarrow as pa
import torch

__all__ = ["per_class_f1", "macro_f1", "accuracy", "predict_grades", "evaluate"]


def per_class_f1(true: Sequence[int], pred: Sequence[int], classes: Optional[Sequence[int]] = None
                 ) -> Dict[int, float]:
    """class -> its F1 (0 for a class never true nor predicted), for each of `classes` (default:
    the classes seen)."""
    if len(true) != len(pred):
        raise ValueError(f"{len(true)} labels but {len(pred)} predictions")
    classes = sorted(set(true) | set(pred)) if classes is None else list(classes)
    scores = {}
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(true, pred))
        fp = sum(t != c and p == c for t, p in zip(true, pred))
        fn = sum(t == c and p != c for t, p in zip(true, pred))
        scores[c] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return scores


def macro_f1(true: Sequence[int], pred: Sequence[int], classes: Optional[Sequence[int]] = None) -> float:
    """The unweighted mean over `classes` of each class's F1 (0 for a class never true nor predicted)."""
    scores = per_class_f1(true, pred, classes)
    return sum(scores.values()) / len(scores) if scores else 0.0


def accuracy(true: Sequence[int], pred: Sequence[int]) -> float:
    return sum(t == p for t, p in zip(true, pred)) / max(len(true), 1)


@torch.no_grad()
def predict_grades(tower, engine, table: pa.Table, batch_size: int = 256) -> Dict[str, object]:
    """Runs `tower` (eval mode) over `table` through `engine`: predicted grades (`pred`), true grades
    (`true`), grade probabilities (`probs`, [N, grades]) and `seconds` of tower forward."""
    was = tower.training
    tower.eval()
    pred: List[int] = []
    true: List[int] = []
    probs: List[torch.Tensor] = []
    seconds = 0.0
    try:
        for start in range(0, table.num_rows, batch_size):
            batch = engine(table.slice(start, batch_size))
            t0 = time.perf_counter()
            out = tower(batch)
            seconds += time.perf_counter() - t0
            pred += [int(g) for g in out.outputs["grade"]]
            probs.append(out.outputs["grade_probs"].detach().float().cpu())
            true += [int(round(float(x))) for x in batch.labels]
    finally:
        tower.train(was)
    return {"pred": pred, "true": true, "seconds": seconds,
            "probs": torch.cat(probs) if probs else torch.zeros(0, 0)}


def evaluate(tower, engine, table: pa.Table, batch_size: int = 256, classes: Optional[Sequence[int]] = None
             ) -> Dict[str, float]:
    """accuracy, macro_f1, items_per_s (tower forward time only), items, and f1_<class> for each
    of `classes` when given."""
    r = predict_grades(tower, engine, table, batch_size)
    out = {"accuracy": accuracy(r["true"], r["pred"]), "macro_f1": macro_f1(r["true"], r["pred"], classes),
           "items_per_s": len(r["pred"]) / max(r["seconds"], 1e-9), "items": float(len(r["pred"]))}
    if classes is not None:
        out.update({f"f1_{c}": v for c, v in per_class_f1(r["true"], r["pred"], classes).items()})
    return out
