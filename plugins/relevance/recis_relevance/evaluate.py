"""Graded predictions of a relevance tower over a task table: accuracy, macro-F1 and items/s,
overall and per slice of the retrieval test bed (`slice_masks`: helpful / noisy chunk, head /
tail item, negation queries).

>>> macro_f1([1, 2, 2, 3], [1, 2, 3, 3], classes=[1, 2, 3])
0.7777777777777777
>>> t = pa.table({"chunk_helpful": [True, False, True], "head": [True, True, False],
...               "avoid_genre": [None, "Horror", None]})
>>> {k: v.tolist() for k, v in slice_masks(t).items()}
{'helpful': [True, False, True], 'noisy': [False, True, False], 'head': [True, True, False], 'tail': [False, False, True], 'negation': [False, True, False]}
>>> slice_metrics([4, 1, 3], [4, 2, 3], slice_masks(t), classes=[1, 2, 3, 4])["noisy"]["accuracy"]
0.0
"""
import time
from typing import Dict, List, Mapping, Optional, Sequence

import pyarrow as pa
import numpy as np
import torch

__all__ = ["per_class_f1", "macro_f1", "accuracy", "predict_grades", "evaluate", "SLICES", "slice_masks",
           "metrics", "slice_metrics", "evaluate_slices"]

#: the benchmark's slices of a task built with a retriever
SLICES = ("helpful", "noisy", "head", "tail", "negation")


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


def slice_masks(table) -> Dict[str, np.ndarray]:
    """slice -> bool mask [rows] of a task table built with a retriever: `helpful` (the chunk is
    the item's own: column chunk_helpful) and `noisy` (its complement), `head` (column head) and
    `tail` (its complement), `negation` (the query excludes a genre: avoid_genre is not null, or
    the column negation when the table has it). A table (pyarrow) or a mapping of columns."""
    cols = table.column_names if isinstance(table, pa.Table) else list(table)
    missing = [c for c in ("chunk_helpful", "head") if c not in cols]
    if missing or ("negation" not in cols and "avoid_genre" not in cols):
        raise KeyError(f"slices need the columns chunk_helpful, head and negation (or avoid_genre); the table lacks "
                       f"{missing or ['negation']} (build the task with a retriever: build_task(context=...))")

    def values(name):
        col = table[name]
        return col.to_pylist() if hasattr(col, "to_pylist") else list(col)

    helpful = np.array(values("chunk_helpful"), dtype=bool)
    head = np.array(values("head"), dtype=bool)
    negation = (np.array(values("negation"), dtype=bool) if "negation" in cols else
                np.array([v is not None for v in values("avoid_genre")], dtype=bool))
    return {"helpful": helpful, "noisy": ~helpful, "head": head, "tail": ~head, "negation": negation}


def metrics(true: Sequence[int], pred: Sequence[int], classes: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """accuracy, macro_f1, items, and f1_<class> for each of `classes` (default: the classes seen)."""
    out = {"accuracy": accuracy(true, pred), "macro_f1": macro_f1(true, pred, classes), "items": float(len(true))}
    out.update({f"f1_{c}": v for c, v in per_class_f1(true, pred, classes).items()})
    return out


def slice_metrics(true: Sequence[int], pred: Sequence[int], masks: Mapping[str, np.ndarray],
                  classes: Optional[Sequence[int]] = None) -> Dict[str, Dict[str, float]]:
    """slice -> `metrics` of the rows its mask selects (an empty slice: items 0, the rest 0)."""
    if any(len(m) != len(true) for m in masks.values()) or len(pred) != len(true):
        raise ValueError(f"{len(true)} labels, {len(pred)} predictions and masks of lengths "
                         f"{sorted({len(m) for m in masks.values()})}")
    out = {}
    for name, mask in masks.items():
        idx = np.flatnonzero(mask)
        out[name] = metrics([true[i] for i in idx], [pred[i] for i in idx], classes)
    return out


def evaluate_slices(tower, engine, table: pa.Table, batch_size: int = 256,
                    classes: Optional[Sequence[int]] = None) -> Dict[str, Dict[str, float]]:
    """{"all": `evaluate`'s metrics (items_per_s included), and each slice of `slice_masks(table)`:
    its `metrics`}, from one pass of the tower over the table."""
    masks = slice_masks(table)
    r = predict_grades(tower, engine, table, batch_size)
    out = {"all": {**metrics(r["true"], r["pred"], classes), "items_per_s": len(r["pred"]) / max(r["seconds"], 1e-9)}}
    out.update(slice_metrics(r["true"], r["pred"], masks, classes))
    return out
