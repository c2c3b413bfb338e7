"""Trainer: the training loop over a recis model, its sparse optimizer and any dense torch optimizer."""
import contextlib
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import nn

from recis.distributed.data import LockstepBatches, is_padding
from recis.distributed.pipeline import pipelined
from recis.towers.base import Tower, TowerOutput
from recis.train.config import TrainerConfig
from recis.train.hooks import CSVLogger, CurvePlot, Hook, ProgressBar, TensorBoardLogger
from recis.train.outputs import check_metrics, check_values, flat_len
from recis.train.prequential import Prequential, merged_scores
from recis.train.rollout import Refill, generator_states, has_rollout, load_generator_states, run_rollout
from recis.train.stats import LogWindow


class NonFiniteLossError(FloatingPointError):
    """The loss was NaN or Inf; nothing was updated or saved for that step."""


class _Out(NamedTuple):
    """One forward: logits [B] float (None: a tower without a binary logit), loss, binary metric
    targets, predicted classes, statistics, per-example values, the batch's rows, and the
    model's raw output (for Hook.on_batch)."""

    logits: Optional[torch.Tensor]
    loss: torch.Tensor
    targets: Optional[torch.Tensor]
    predicted: Optional[torch.Tensor]
    stats: Mapping[str, float]
    values: Mapping[str, torch.Tensor]
    rows: int
    raw: object = None


class Trainer:
    """Trains `model` (batch -> logits [B]) with BCE-with-logits by default. A tower
    (recis.towers) returns a `TowerOutput` instead: its own loss (else `loss_fn(logits, labels)`),
    the targets its metrics compare with (else the batch labels), the predicted classes that
    multi-class metrics (`metric.multiclass`, e.g. ConfusionMatrix) compare with the batch labels,
    per-example values for the `tower` metric (`metric.tower_values`, recis.metrics.TowerValues),
    and training statistics; statistics and the batch means of the values are averaged over each
    log window into the logs (CSV, TensorBoard, curves, progress). A tower with `has_logits =
    False` returns no logits (and its own loss): binary metrics and `predict` refuse it.

    A tower that overrides `Tower.rollout` trains by rollouts: per training batch, the rollout
    runs in eval mode without gradients and returns a `RolloutPhase`; then `inner_steps` passes
    over its minibatches, each a forward (train mode), backward and optimizer step (with
    `grad_accum_steps`; a rollout ends on a step). Evaluations and checkpoints that fall due
    inside a rollout run after its last step, so a checkpoint never splits a rollout; max_steps
    (or a stop request) may end training inside one. The tower's `generators()` are part of the
    trainer state (exact resume).

    `sparse_optimizer` is a recis.optim optimizer over the model's hash tables; `dense_optimizer`
    any torch optimizer over `model.parameters()`; each may have its own LR scheduler, stepped once
    per optimizer step. With `grad_accum_steps` > 1 an epoch that ends mid-accumulation steps on
    the micro-batches it has (each loss still divided by `grad_accum_steps`). `metrics` maps names
    to metric objects with update(preds, labels[, groups]), compute() and reset() (recis.metrics).
    Batches carry `.labels`, `.size` (or labels' length), and, for GAUC, the column
    `config.group_key` in `.extras`. A `checkpoint` manager gets the model, optimizers,
    schedulers, trainer state and the training data's resume state. Under
    torch.distributed (`env`), ranks step in lockstep, metrics are reduced over ranks, and with
    `pipeline` the next batch's ids exchange overlaps the current step.

    With `config.prequential`, every training batch is scored by its own forward, before the
    update on it (recis.train.prequential): the logs get `preq_*` metrics, `prequential_history`
    one entry per completed window, and the state holds them (exact resume). Checkpoints fall due
    every `checkpoint_every` steps or `checkpoint_every_minutes` minutes (read from `clock`, a
    monotonic clock in seconds), whichever comes first.
    """

    def __init__(self, model: nn.Module, sparse_optimizer=None, dense_optimizer=None, *,
                 sparse_scheduler=None, dense_scheduler=None, loss_fn: Optional[Callable] = None,
                 metrics: Optional[Mapping[str, object]] = None, config: Optional[TrainerConfig] = None,
                 hooks: Sequence[Hook] = (), checkpoint=None, env=None, pipeline: bool = True):
        from recis.distributed.env import ShardingEnv

        self.model = model
        self.env = env or ShardingEnv.current()
        self.pipeline = pipeline  # prefetch the next batch's ids exchange (sharded tables only)
        self.sparse_optimizer, self.dense_optimizer = sparse_optimizer, dense_optimizer
        self.sparse_scheduler, self.dense_scheduler = sparse_scheduler, dense_scheduler
        self.loss_fn = loss_fn or nn.BCEWithLogitsLoss()
        self.metrics = dict(metrics or {})
        self.config = config or TrainerConfig()
        self.checkpoint = checkpoint
        if self.config.grad_accum_steps > 1 and sparse_optimizer is not None and getattr(sparse_optimizer, "fused",
                                                                                         False):
            raise ValueError("gradient accumulation needs a non-fused sparse optimizer (fused=True updates rows "
                             "inside backward)")
        check_metrics(_unwrap(model), self.metrics)
        grouped = [name for name, m in self.metrics.items() if getattr(m, "needs_groups", False)]
        if grouped and self.config.group_key is None:
            raise ValueError(f"metrics {grouped} need a group per example: set TrainerConfig.group_key to the batch "
                             "extras column that holds it (e.g. the user id)")
        self.hooks: List[Hook] = list(hooks)
        if self.config.log_dir:
            import os

            os.makedirs(self.config.log_dir, exist_ok=True)
            self.hooks += [CSVLogger(self.config.log_dir), CurvePlot(self.config.log_dir)]
            if self.config.tensorboard:
                self.hooks.append(TensorBoardLogger(self.config.log_dir))
        if self.config.progress and self.env.rank == 0:  # one progress report per job, not one per rank
            self.hooks.append(ProgressBar(every=self.config.progress_every or self.config.log_every))
        self.step = 0          # optimizer steps taken
        self.epoch = 0         # completed passes over the training data
        self.skipped_nonfinite = 0
        self.examples = 0       # training examples consumed
        self.epoch_batches = 0  # batches consumed in the current epoch (for resuming data without state)
        self._fast_forward = 0
        self.history: List[Dict[str, float]] = []
        self._stop_reason: Optional[str] = None
        self._window = LogWindow()
        self._tower = isinstance(_unwrap(model), Tower)
        self._rollout = has_rollout(_unwrap(model))
        self._in_rollout, self._due = False, set()  # evaluations / checkpoints due at the rollout's end
        self.prequential: Optional[Prequential] = None
        if self.config.prequential:
            if self._rollout:
                raise ValueError(f"TrainerConfig.prequential scores each training batch's forward before the update "
                                 f"on it; {type(_unwrap(model)).__name__} trains by rollouts (minibatches of its own), "
                                 "which prequential evaluation does not cover")
            self.prequential = Prequential(self.config.prequential_window, self.config.prequential_cumulative_auc)
        self.clock: Callable[[], float] = time.monotonic  # for checkpoint_every_minutes (tests replace it)
        self._last_save = self.clock()
        if self.config.seed is not None:
            torch.manual_seed(self.config.seed)

    # ---- public API ----
    def fit(self, train: Iterable, eval_data: Optional[Iterable] = None) -> List[Dict[str, float]]:
        """Trains for `config.epochs` passes (or `config.max_steps` steps); returns the eval history."""
        cfg = self.config
        self._stop_reason = None
        train, eval_data = self._lockstep(train, False), self._lockstep(eval_data, True)
        self._last_save = self.clock()
        for h in self.hooks:
            h.on_fit_start(self)
        try:
            while self.epoch < cfg.epochs and not self._done():
                self._train_epoch(train, eval_data)
                if self._stop_reason is None and not self._done():
                    self.epoch += 1
                    if hasattr(train, "set_epoch"):
                        train.set_epoch(self.epoch)
            if eval_data is not None and (not self.history or self.history[-1]["step"] != self.step):
                self._run_eval(eval_data)
        finally:
            for h in self.hooks:
                h.on_fit_end(self)
        return self.history

    def evaluate(self, data: Iterable) -> Dict[str, float]:
        """Metrics (and mean loss) over `data`, in eval mode without touching the tables."""
        was_training = self.model.training
        self.model.eval()
        for m in self.metrics.values():
            m.reset()
        total, n = 0.0, 0
        try:
            with torch.no_grad(), self._autocast():
                for batch in self._lockstep(data, True):
                    out = self._forward(batch)
                    if is_padding(batch):  # a rank that ran out keeps its peers' collectives company
                        continue
                    rows = out.rows
                    total += float(out.loss) * rows
                    n += rows
                    self._update_metrics(out, batch)
        finally:
            self.model.train(was_training)
        if self.env.distributed:
            sums = self.env.all_reduce(torch.tensor([total, float(n)], dtype=torch.float64), what="eval loss")
            total, n = float(sums[0]), int(sums[1])
            for m in self.metrics.values():
                m.sync(self.env.group)
        result = {"loss": total / max(n, 1), "examples": float(n)}
        for name, m in self.metrics.items():
            values = m.results() if hasattr(m, "results") else {name: m.compute()}
            for key, value in values.items():
                if key in result:
                    raise ValueError(f"metric {name!r} reports {key!r}, which another metric (or the loss) reports "
                                     "too; select only one of them")
                result[key] = float(value)
            if self.env.distributed:
                m.unsync()
        return result

    def predict(self, data: Iterable) -> torch.Tensor:
        """Click probabilities of every example in `data`, concatenated (a tower with
        `has_logits = False` has none: an error)."""
        tower = _unwrap(self.model)
        if not getattr(tower, "has_logits", True):
            raise ValueError(f"Trainer.predict gives sigmoid(TowerOutput.logits), but {type(tower).__name__} has no "
                             "binary logit (has_logits = False); evaluate() reports its tower metrics")
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            with torch.no_grad(), self._autocast():
                for batch in self._lockstep(data, True):
                    probs = torch.sigmoid(_logits(self.model(batch)))
                    if not is_padding(batch):
                        out.append(probs)
        finally:
            self.model.train(was_training)
        return torch.cat(out) if out else torch.empty(0)

    def request_stop(self, reason: str) -> None:
        """Ends fit after the current step (hooks call this, e.g. early stopping)."""
        self._stop_reason = reason

    @property
    def stop_reason(self) -> Optional[str]:
        return self._stop_reason

    @property
    def prequential_history(self) -> List[Dict[str, float]]:
        """One dict per completed prequential window (window, examples, step, logloss, auc, or the
        tower's values); empty without `config.prequential`. `step` is the optimizer step that
        trained on the window's last example."""
        return self.prequential.history if self.prequential is not None else []

    # ---- state (for checkpoints) ----
    @property
    def stat_names(self) -> tuple:
        """The training statistics reported so far (TowerOutput.stats, RolloutPhase.stats)."""
        return self._window.stat_names

    def state_dict(self) -> Dict:
        """Step, epoch, data position, history, the torch RNG, the tower's generators and the
        prequential metrics."""
        state = {"step": self.step, "epoch": self.epoch, "epoch_batches": self.epoch_batches,
                 "skipped_nonfinite": self.skipped_nonfinite, "history": self.history,
                 "rng": torch.get_rng_state().tolist()}
        if self.prequential is not None:
            state["prequential"] = self.prequential.state_dict()
        gens = generator_states(_unwrap(self.model))
        if gens:
            state["generators"] = gens
        return state

    def load_state_dict(self, state: Mapping, where: str = "the trainer state") -> None:
        load_generator_states(_unwrap(self.model), state.get("generators", {}), where)
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.skipped_nonfinite = int(state.get("skipped_nonfinite", 0))
        self.epoch_batches = int(state.get("epoch_batches", 0))
        self.history = list(state.get("history", []))
        if self.prequential is not None:
            if "prequential" in state:
                self.prequential.load_state_dict(state["prequential"], f"{where} (prequential)")
            else:
                warnings.warn(f"{where} holds no prequential metrics (saved without trainer.prequential): they "
                              f"count from step {self.step} on", stacklevel=2)
        if "rng" in state:
            torch.set_rng_state(torch.tensor(state["rng"], dtype=torch.uint8))

    # ---- internals ----
    def _done(self) -> bool:
        return self._stop_reason is not None or (self.config.max_steps is not None
                                                 and self.step >= self.config.max_steps)

    def _autocast(self):
        if not self.config.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=_device_type(self.model), dtype=torch.bfloat16)

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank: ranks skip (or stop) a batch together, so no
        rank waits in a backward collective for a peer that dropped its batch."""
        flag = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)  # on the loss device (nccl: cuda)
        if self.env.distributed:
            import torch.distributed as dist

            self.env.all_reduce(flag, what="loss finiteness", op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _zero_grad(self):
        for opt in (self.dense_optimizer, self.sparse_optimizer):
            if opt is not None:
                opt.zero_grad(set_to_none=True)

    def _train_epoch(self, train: Iterable, eval_data) -> None:
        self.model.train()
        window = self._window
        window.restart()  # loss, statistics and examples/s of this epoch
        self._zero_grad()
        skip, self._fast_forward = self._fast_forward, 0
        if not skip:
            self.epoch_batches = 0
        batches = Refill(iter(pipelined(train, self.model) if self.pipeline else train), self._took)
        for batch in batches:
            if skip:  # resuming data that keeps no state of its own: skip what was consumed
                skip -= 1
                continue
            self.epoch_batches += 1
            if self._rollout:
                self._train_rollout(batch, batches, train, eval_data)
            else:
                self._train_micro(batch, train, eval_data, count=True)
            if self._done():
                return
        if window.micro:  # the epoch ended mid-accumulation: step on what it accumulated (as Lightning and HF do)
            self._step(train, eval_data)

    def _took(self, batch) -> None:
        """A rollout took `batch` from the data through refill()."""
        self.epoch_batches += 1
        self._count(_rows(batch))

    def _count(self, rows: int) -> None:
        """`rows` training examples consumed (for `examples` and examples/s)."""
        self.examples += rows
        self._window.meter.add(rows)

    def _train_micro(self, batch, train, eval_data, count: bool) -> None:
        """Forward and backward of one (micro-)batch; the optimizer step once `grad_accum_steps`
        of them are in. `count`: the batch is training data (not a rollout's minibatch)."""
        cfg, window = self.config, self._window
        out = self._forward(batch)
        if not self._finite_everywhere(out.loss):
            if cfg.on_nonfinite == "raise":
                self._zero_grad()
                where = f"loss is {float(out.loss.detach())}" if not torch.isfinite(out.loss) else \
                    f"loss is finite on rank {self.env.rank} but not on a peer rank"
                raise NonFiniteLossError(f"{where} at step {self.step + 1} (epoch {self.epoch}); "
                                         "training stopped before any update, and no checkpoint was written")
            # Only this batch is dropped (before its backward): the micro-batches accumulated
            # so far keep their gradients and still make up this step.
            self.skipped_nonfinite += 1
            return
        loss = out.loss.detach()
        for h in self.hooks:
            on_batch = getattr(h, "on_batch", None)  # hooks written before on_batch may not have it
            if on_batch is not None:
                on_batch(self, batch, out.raw, loss)
        if count and self.prequential is not None:  # under torch.distributed: every rank's batch, merged
            self.prequential.update(*merged_scores(self.env, out.logits, out.targets, out.values), step=self.step + 1)
        (out.loss / cfg.grad_accum_steps).backward()
        window.micro += 1
        window.add_loss(float(out.loss.detach()))
        tower = type(_unwrap(self.model)).__name__
        window.add_stats(out.stats, f"{tower} TowerOutput.stats")
        if out.values and out.rows:
            window.add_stats({k: v.detach().double().mean() for k, v in out.values.items()},
                             f"{tower} TowerOutput.values")
        if count:
            self._count(out.rows)
        if window.micro >= cfg.grad_accum_steps:
            self._step(train, eval_data)

    def _train_rollout(self, batch, batches: Refill, train, eval_data) -> None:
        """The rollout phase of `batch`, then its inner steps; what fell due inside runs after."""
        tower = _unwrap(self.model)
        phase = run_rollout(self.model, tower, batch, batches, self._autocast)
        self._count(_rows(batch))
        self._window.add_stats(phase.stats, f"{type(tower).__name__}.rollout stats")
        self._in_rollout, finished = True, False
        try:
            for _ in range(phase.inner_steps):
                for minibatch in phase.minibatches:
                    self._train_micro(minibatch, train, eval_data, count=False)
                    if self._done():  # max_steps or a stop request ends training inside the rollout
                        return
            if self._window.micro:  # a rollout ends on an optimizer step (no gradients carry over)
                self._step(train, eval_data)
            finished = True
        finally:
            self._in_rollout = False
            due, self._due = self._due, set()
            if finished:
                self._after_step(due, train, eval_data)

    def _step(self, train, eval_data) -> None:
        """One optimizer step, then the logs, hooks, evaluation and checkpoint that follow it."""
        cfg = self.config
        self._optimizer_step()
        self._window.micro = 0
        logs: Dict[str, float] = {}
        if self.step % cfg.log_every == 0:
            # statistics come from towers only: other models' ranks need not gather them
            logs = {**self._window.read(self.env if self._tower else None), **self._lrs()}
            if self.prequential is not None:
                logs.update(self.prequential.logs())
        for h in self.hooks:
            h.on_step_end(self, self.step, logs)
        due = set()
        if cfg.eval_every and eval_data is not None and self.step % cfg.eval_every == 0:
            due.add("eval")
        minutes = cfg.checkpoint_every_minutes
        if self.checkpoint is not None and ((cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or (
                minutes and self.clock() - self._last_save >= 60 * minutes)):
            due.add("checkpoint")
        if self._in_rollout:
            self._due |= due
        else:
            self._after_step(due, train, eval_data)

    def _after_step(self, due, train, eval_data) -> None:
        if "eval" in due:
            self._run_eval(eval_data)
        if "checkpoint" in due:
            self.save_checkpoint(train)

    def _forward(self, batch) -> _Out:
        """A CTR model's logits with `loss_fn`, or a tower's TowerOutput, as an `_Out`."""
        with self._autocast():
            out = self.model(batch)
        if isinstance(out, TowerOutput):
            tower = type(_unwrap(self.model)).__name__
            if out.logits is None and out.loss is None:
                raise ValueError(f"{tower} returned a TowerOutput with neither logits nor a loss: a tower without a "
                                 "binary logit returns its own loss")
            logits = None if out.logits is None else out.logits.float()
            rows = logits.numel() if logits is not None else (
                _rows(batch) or (flat_len(next(iter(out.values.values()))) if out.values else 0))
            values = check_values(out.values, out.stats, rows, tower)
            loss = out.loss.float() if out.loss is not None else self.loss_fn(logits, batch.labels.float())
            targets = out.targets if out.targets is not None else getattr(batch, "labels", None)
            # a rollout's minibatch may carry no labels: its targets serve no metric
            return _Out(logits, loss, None if targets is None else targets.float(), out.predicted, out.stats,
                        values, rows, out)
        logits = out.float()
        labels = batch.labels.float()
        return _Out(logits, self.loss_fn(logits, labels), labels, None, {}, {}, logits.numel(), out)

    def _optimizer_step(self) -> None:
        if self.config.clip_grad_norm is not None:
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.config.clip_grad_norm)
        if self.dense_optimizer is not None:
            self.dense_optimizer.step()
        if self.sparse_optimizer is not None:
            self.sparse_optimizer.step()
        for sched in (self.dense_scheduler, self.sparse_scheduler):
            if sched is not None:
                sched.step()
        self._zero_grad()
        self.step += 1

    def _lrs(self) -> Dict[str, float]:
        out = {}
        for name, opt in (("lr_dense", self.dense_optimizer), ("lr_sparse", self.sparse_optimizer)):
            # the first group with a learning rate (online optimizers such as BOGD_IP have none)
            lr = None if opt is None else next((g["lr"] for g in opt.param_groups if "lr" in g), None)
            if lr is not None:
                out[name] = float(lr)
        return out

    def _update_metrics(self, out: _Out, batch) -> None:
        """Binary metrics get sigmoid(logits) and the targets; multi-class ones (`multiclass`)
        the predicted classes and the batch labels; the tower metric (`tower_values`) the
        tower's values."""
        groups = None
        if self.config.group_key is not None:
            extras = getattr(batch, "extras", None) or {}
            if self.config.group_key not in extras:
                raise KeyError(f"config.group_key {self.config.group_key!r} is not among the batch's extras "
                               f"{sorted(extras)}")
            groups = _as_tensor(extras[self.config.group_key])
        probs = None if out.logits is None else torch.sigmoid(out.logits)
        tower = type(_unwrap(self.model)).__name__
        for name, m in self.metrics.items():
            if getattr(m, "tower_values", False):
                if not out.values:
                    raise ValueError(f"metric {name!r} ({type(m).__name__}) averages TowerOutput.values, but {tower} "
                                     "returns none; report per-example values, or drop the metric")
                try:
                    m.update(out.values)
                except (TypeError, ValueError) as e:
                    raise type(e)(f"metric {name!r} on {tower}: {e}") from None
            elif getattr(m, "multiclass", False):
                if out.predicted is None:
                    raise ValueError(f"metric {name!r} ({type(m).__name__}) compares predicted classes with the "
                                     f"labels, but {type(_unwrap(self.model)).__name__} returns no "
                                     "TowerOutput.predicted; return the predicted class labels, or drop the metric")
                m.update(out.predicted, batch.labels)
            elif probs is None:
                raise ValueError(f"metric {name!r} ({type(m).__name__}) needs a binary logit, but {tower} returned a "
                                 "TowerOutput without logits; use the tower metric (its TowerOutput.values), or "
                                 "return logits")
            elif groups is not None and getattr(m, "needs_groups", False):
                m.update(probs, out.targets, groups=groups)
            else:
                m.update(probs, out.targets)

    def _run_eval(self, eval_data) -> Dict[str, float]:
        t0 = time.perf_counter()
        metrics = self.evaluate(eval_data)
        metrics["eval_seconds"] = time.perf_counter() - t0
        metrics["step"] = float(self.step)
        self.history.append(metrics)
        for h in self.hooks:
            h.on_eval_end(self, self.step, metrics)
        return metrics

    def save_checkpoint(self, train=None):
        """Saves through the checkpoint manager (model, optimizers, schedulers, trainer and data state)."""
        if self.checkpoint is None:
            raise ValueError("Trainer has no checkpoint manager")
        extra = {"trainer": self.state_dict()}
        if train is not None and hasattr(train, "state_dict"):
            extra["data"] = train.state_dict()
        self._last_save = self.clock()
        return self.checkpoint.save(self.step, model=_unwrap(self.model), optimizers=self._optimizers(),
                                    extra_state=extra)

    def resume(self, path="latest", train=None) -> bool:
        """Loads a checkpoint (the latest complete one by default) into everything; returns False if
        the directory holds none yet."""
        if self.checkpoint is None:
            raise ValueError("Trainer has no checkpoint manager")
        if path == "latest" and self.checkpoint.latest() is None:
            return False
        where = f"checkpoint {self.checkpoint.resolve(path)}"
        extra = self.checkpoint.load(path, model=_unwrap(self.model), optimizers=self._optimizers())
        self.load_state_dict(extra["trainer"], where)
        if train is not None and hasattr(train, "load_state_dict") and "data" in extra:
            train.load_state_dict(extra["data"])
        else:
            self._fast_forward = self.epoch_batches
        return True

    def init_from(self, path) -> Path:
        """Starts from the weights of another run's checkpoint (a checkpoint directory, or a
        checkpoint root: its latest): the model state only; optimizers, schedulers, step and
        data position stay as they are (fresh, on a new Trainer). Then the tower's
        `on_weights_loaded()`. Returns the checkpoint directory loaded; a checkpoint of another
        model raises IncompatibleCheckpointError naming it and the keys / shapes that differ."""
        from recis.checkpoint import load_weights

        model = _unwrap(self.model)
        loaded = load_weights(path, model)
        hook = getattr(model, "on_weights_loaded", None)
        if hook is not None:
            hook()
        return loaded

    def _lockstep(self, data, pad: bool):
        """`data` stepping in lockstep with the other ranks (as is in a single process)."""
        if data is None or not self.env.distributed or isinstance(data, LockstepBatches):
            return data
        return LockstepBatches(data, self.env, pad)

    def _optimizers(self) -> Dict[str, object]:
        """Everything with a state_dict besides the model: optimizers and LR schedulers."""
        named = (("sparse", self.sparse_optimizer), ("dense", self.dense_optimizer),
                 ("sparse_scheduler", self.sparse_scheduler), ("dense_scheduler", self.dense_scheduler))
        return {name: obj for name, obj in named if obj is not None}


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (checkpoints hold the plain module's keys)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _rows(batch) -> int:
    """Examples in a training batch: its `size`, else the length of its labels."""
    size = getattr(batch, "size", None)
    if isinstance(size, int):
        return size
    labels = getattr(batch, "labels", None)
    if isinstance(labels, torch.Tensor):
        return int(labels.shape[0]) if labels.dim() else 1
    if isinstance(labels, Mapping) and labels:
        return int(next(iter(labels.values())).shape[0])
    return 0


def _logits(out) -> torch.Tensor:
    if isinstance(out, TowerOutput) and out.logits is None:
        raise ValueError("Trainer.predict gives sigmoid(TowerOutput.logits), but the tower returned no logits")
    return (out.logits if isinstance(out, TowerOutput) else out).float()


def _device_type(model: nn.Module) -> str:
    for p in model.parameters():
        return p.device.type
    return "cpu"


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if hasattr(x, "to_numpy"):  # an Arrow column: copy (its buffers are read-only)
        return torch.tensor(x.to_numpy(zero_copy_only=False))
    return torch.as_tensor(x)
