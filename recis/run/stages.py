"""One job of a multi-job experiment (a training stage, a benchmark contestant, a tuning trial)
from a YAML job: its data files, output directory, starting checkpoint and option overrides set
in code, and running it.

    cfg = stage_config(RunConfig.from_yaml("sft.yaml"), "runs/sft", train="train.parquet",
                       eval="val.parquet", trainer={"max_steps": 200}, optim={"dense": {"lr": 1e-3}})
    done = run_stage(cfg)          # {"job", "result", "seconds", "examples_per_s"}

Model options are overridden with `merge_options`: a section given as a mapping on both sides
(``{"sampling": {"group_size": 2}}``) is updated key by key, unless it is one of the names in
`replace` (a model spec is replaced whole); any other value replaces the YAML's.

>>> merge_options({"sampling": {"group_size": 4, "seed": 1}, "policy": {"config": {"a": 1}}},
...               {"sampling": {"group_size": 2}, "policy": {"config": {"b": 2}}}, replace=("policy",))
{'sampling': {'group_size': 2, 'seed': 1}, 'policy': {'config': {'b': 2}}}
"""
import copy
import os
import time
from typing import Any, Dict, Mapping, Optional, Sequence

__all__ = ["merge_options", "stage_config", "run_stage"]


def merge_options(base: Mapping[str, Any], override: Mapping[str, Any], replace: Sequence[str] = ()) -> Dict[str, Any]:
    """A copy of `base` with `override` applied (see the module docstring)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if key not in replace and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **copy.deepcopy(dict(value))}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_fields(section, values: Optional[Mapping[str, Any]], where: str) -> None:
    for key, value in (values or {}).items():
        if not hasattr(section, key):
            raise ValueError(f"{where}: unknown option {key!r}")
        setattr(section, key, value)


def stage_config(cfg, run_dir: str, *, train: Optional[str] = None, eval: Optional[str] = None,
                 init_from: Optional[str] = None, model: Optional[Mapping[str, Any]] = None,
                 replace: Sequence[str] = (), trainer: Optional[Mapping[str, Any]] = None,
                 optim: Optional[Mapping[str, Any]] = None, data: Optional[Mapping[str, Any]] = None):
    """`cfg` (a RunConfig, changed in place and returned) writing its logs to `run_dir` and its
    checkpoints to `run_dir`/checkpoints, without a progress bar, reading `train` / `eval` when
    given (in place of the YAML's files or dataset), starting from the weights of `init_from` (a
    checkpoint directory or root), with option overrides: `data`, `trainer` (fields of their
    sections), `optim` (``{"dense": {...}, "sparse": {...}}``, updated key by key) and `model`
    (`merge_options` with `replace`)."""
    if train is not None:
        cfg.data.train = str(train)
        cfg.data.dataset = None
        cfg.data.options = {}
    if eval is not None:
        cfg.data.eval = str(eval)
    _set_fields(cfg.data, data, "data")
    cfg.trainer.log_dir = str(run_dir)
    cfg.trainer.progress = False
    _set_fields(cfg.trainer, trainer, "trainer")
    cfg.checkpoint.dir = os.path.join(str(run_dir), "checkpoints")
    cfg.checkpoint.init_from = None if init_from is None else str(init_from)
    cfg.model.args = merge_options(cfg.model.args, model or {}, replace)
    for part, values in (optim or {}).items():
        section = getattr(cfg.optim, part, None)
        if not isinstance(section, dict):
            raise ValueError(f"optim: unknown section {part!r}")
        section.update(values)
    for section in (cfg.data, cfg.trainer, cfg.checkpoint, cfg.optim):
        section.__post_init__()  # the overrides checked as the YAML's values are
    return cfg


def run_stage(cfg, hooks=()) -> Dict[str, Any]:
    """Trains the job of `cfg` (resuming its own checkpoints when it has some) and returns the
    job, its result, the seconds it took and its training examples per second. `hooks`: Trainer
    hooks added to the job's, or a function job -> hooks (for hooks that need the built model,
    e.g. a `recis.train.EarlyStopping` scoring it). A stage that took no step still leaves a
    checkpoint of its weights, for the next stage's `init_from`."""
    from recis.run.job import Job

    job = Job(cfg)
    job.trainer.hooks.extend(hooks(job) if callable(hooks) else hooks)
    t0 = time.perf_counter()
    result = job.train()
    seconds = time.perf_counter() - t0
    ckpt = job.trainer.checkpoint
    if ckpt is not None and ckpt.latest() is None:  # Job.train saves after steps only
        job.trainer.save_checkpoint()
    return {"job": job, "result": result, "seconds": seconds,
            "examples_per_s": job.trainer.examples / max(seconds, 1e-9)}
