"""Trainer hooks: each gets called at fit start/end, after every optimizer step, and after evaluations."""
import csv
import os
import sys
import time
from typing import Dict, List, Optional

import torch

from recis.config_utils import Range, check_value
from recis.train.prequential import PREFIX


class Hook:
    """Override what you need. `logs` holds floats (loss, lr, examples/s, the training
    statistics named in `trainer.stat_names`, averaged over the log window, and the prequential
    metrics `preq_*` with `TrainerConfig.prequential`); `metrics` an evaluation's results.

    `on_batch(trainer, batch, output, loss)` runs once per training (micro-)batch, right after its
    forward and before its backward and optimizer step (so `trainer.model` has not trained on it
    yet), and only when the loss is finite (after the non-finite check: a skipped batch is not
    shown). `output` is the model's raw output (the logits tensor, or a tower's TowerOutput) and
    `loss` the detached loss tensor. A rollout tower's minibatches are training batches too; the
    rollout phase's own eval-mode forwards (`Tower.rollout`) are not shown. Online methods record
    their regret here without a second forward."""

    def on_fit_start(self, trainer) -> None: ...

    def on_batch(self, trainer, batch, output, loss: torch.Tensor) -> None: ...

    def on_step_end(self, trainer, step: int, logs: Dict[str, float]) -> None: ...

    def on_eval_end(self, trainer, step: int, metrics: Dict[str, float]) -> None: ...

    def on_fit_end(self, trainer) -> None: ...


def under_launcher() -> bool:
    """Whether this process was started by torchrun / torch.distributed.elastic (its output is
    then usually collected into a log, not shown on a terminal)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


#: Evaluation results that the progress report and the curve show (when present).
SHOWN_METRICS = ("auc", "gauc", "accuracy", "macro_f1")
#: Prequential metrics (TrainerConfig.prequential) that the progress report shows.
_PREQ_SHOWN = tuple(f"{PREFIX}{k}" for k in ("logloss", "auc", "window_logloss", "window_auc"))


class ProgressBar(Hook):
    """A tqdm bar with loss, examples/s and the training statistics on a terminal; in a log (the
    output stream or stdout is not a terminal, or the process runs under torchrun) one plain line
    every `every` steps and at the end, without carriage returns.

    stream: where to write (default: sys.stderr, tqdm's). every: steps between lines (default 50).
    `bar` is None in the plain-line mode."""

    def __init__(self, stream=None, every: int = 50):
        check_value("ProgressBar every", every, int, Range(ge=1))
        self.stream, self.every = stream, every
        self.bar = None

    def on_fit_start(self, trainer):
        self.out = self.stream if self.stream is not None else sys.stderr
        self.lines = not (_isatty(self.out) and _isatty(sys.stdout)) or under_launcher()
        self.total = trainer.config.max_steps
        self.loss: Optional[float] = None
        self.rate: Optional[float] = None
        self.stats: Dict[str, float] = {}
        self.last = trainer.step
        self.t0 = time.perf_counter()
        if not self.lines:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=trainer.step, unit="step", dynamic_ncols=True, file=self.out)

    def on_step_end(self, trainer, step, logs):
        if "loss" in logs:
            self.loss, self.rate = logs["loss"], logs.get("examples_per_s", 0.0)
            self.stats.update({k: logs[k] for k in getattr(trainer, "stat_names", ()) if k in logs})
            self.stats.update({k: logs[k] for k in _PREQ_SHOWN if k in logs})
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.4f}", ex_s=f"{logs.get('examples_per_s', 0):.0f}",
                                     **{k: f"{v:.4g}" for k, v in self.stats.items()})
        elif step % self.every == 0:
            self._line(step)

    def _line(self, step: int) -> None:
        parts = [f"step {step}" + (f"/{self.total}" if self.total else "")]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.rate is not None:
            parts.append(f"examples/s {self.rate:.0f}")
        parts.extend(f"{k} {v:.4g}" for k, v in sorted(self.stats.items()))
        parts.append(f"elapsed {time.perf_counter() - self.t0:.1f}s")
        print("  ".join(parts), file=self.out, flush=True)
        self.last = step

    def on_eval_end(self, trainer, step, metrics):
        if self.bar is None:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in SHOWN_METRICS + ("logloss", "loss"))
            print(f"eval at step {step}  {shown}".rstrip(), file=self.out, flush=True)

    def on_fit_end(self, trainer):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif trainer.step != self.last:
            self._line(trainer.step)


class CSVLogger(Hook):
    """Appends every logged row (train and eval) to `{log_dir}/metrics.csv`; the columns are the
    union of every row's keys (a statistic that appears later adds a column; rows without it
    leave it empty)."""

    def __init__(self, log_dir: str):
        self.path = os.path.join(log_dir, "metrics.csv")
        self.rows: List[Dict[str, float]] = []

    def _write(self, row):
        self.rows.append(row)
        keys = sorted({k for r in self.rows for k in r}, key=lambda k: (k not in ("step", "split"), k))
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)

    def on_step_end(self, trainer, step, logs):
        if "loss" in logs:
            self._write({"step": step, "split": "train", **logs})

    def on_eval_end(self, trainer, step, metrics):
        self._write({"step": step, "split": "eval", **metrics})


class TensorBoardLogger(Hook):
    def __init__(self, log_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir)

    def on_step_end(self, trainer, step, logs):
        for k, v in logs.items():
            self.writer.add_scalar(f"train/{k}", v, step)

    def on_eval_end(self, trainer, step, metrics):
        for k, v in metrics.items():
            self.writer.add_scalar(f"eval/{k}", v, step)

    def on_fit_end(self, trainer):
        self.writer.flush()
        self.writer.close()


class CurvePlot(Hook):
    """Writes `{log_dir}/curve.png` at the end of fit: training loss and the eval metrics of
    SHOWN_METRICS (AUC, GAUC, accuracy, macro-F1) over steps; `{log_dir}/stats.png`, one
    panel per training statistic (`trainer.stat_names`), when there are any; and
    `{log_dir}/prequential.png`, the prequential metrics (cumulative and last window) over
    steps, with `TrainerConfig.prequential`."""

    def __init__(self, log_dir: str):
        self.path = os.path.join(log_dir, "curve.png")
        self.stats_path = os.path.join(log_dir, "stats.png")
        self.preq_path = os.path.join(log_dir, "prequential.png")
        self.train, self.eval = [], []
        self.stats: Dict[str, List[tuple]] = {}
        self.preq: Dict[str, List[tuple]] = {}

    def on_step_end(self, trainer, step, logs):
        if "loss" in logs:
            self.train.append((step, logs["loss"]))
            for k in getattr(trainer, "stat_names", ()):
                if k in logs:
                    self.stats.setdefault(k, []).append((step, logs[k]))
            for k, v in logs.items():
                if k.startswith(PREFIX) and k != f"{PREFIX}examples":
                    self.preq.setdefault(k, []).append((step, v))

    def on_eval_end(self, trainer, step, metrics):
        self.eval.append((step, metrics))

    def on_fit_end(self, trainer):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        if self.train:
            ax.plot(*zip(*self.train), label="train loss", color="tab:blue")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        keys = [k for k in SHOWN_METRICS if any(k in m for _, m in self.eval)]
        if keys:
            ax2 = ax.twinx()
            for k, color in zip(keys, ("tab:red", "tab:green", "tab:purple", "tab:orange")):
                pts = [(s, m[k]) for s, m in self.eval if k in m]
                ax2.plot(*zip(*pts), marker="o", label=f"eval {k}", color=color)
            ax2.set_ylabel("eval metric")
            ax2.legend(loc="lower right")
        if self.train:
            ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(self.path, dpi=100)
        plt.close(fig)
        if self.stats:
            self._plot_stats(plt)
        if self.preq:
            self._plot_prequential(plt)

    def _plot_prequential(self, plt) -> None:
        """`prequential.png`: one panel per metric (logloss, AUC, a tower's values), the
        cumulative value and the last complete window's over steps."""
        window = f"{PREFIX}window_"
        names = sorted({k[len(window):] if k.startswith(window) else k[len(PREFIX):] for k in self.preq})
        fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.2), squeeze=False)
        for ax, name in zip(axes.flat, names):
            for key, label, color in ((f"{PREFIX}{name}", "cumulative", "tab:blue"),
                                      (f"{window}{name}", "last window", "tab:orange")):
                if key in self.preq:
                    ax.plot(*zip(*self.preq[key]), label=label, color=color)
            ax.set_title(f"prequential {name}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(self.preq_path, dpi=100)
        plt.close(fig)

    def _plot_stats(self, plt) -> None:
        names = sorted(self.stats)
        cols = min(3, len(names))
        rows = -(-len(names) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names):
            ax.plot(*zip(*self.stats[name]), color="tab:blue")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(self.stats_path, dpi=100)
        plt.close(fig)


class TableStats(Hook):
    """Every `every` steps: logs live rows, inserts and evictions of every table group. It only
    reads: eviction is the tables' own (a TTLEviction sweeps every `interval_steps` training
    steps, an LFUEviction as new ids pass the capacity; see recis.nn.TableConfig).
    `evict=True` (this hook's former extra TTL sweep) is refused with a pointer to TTLEviction."""

    def __init__(self, every: int = 100, evict: bool = False):
        if evict:
            raise ValueError("TableStats(evict=True): the tables run their TTL sweeps themselves, every "
                             "TTLEviction.interval_steps training steps; to sweep more often, lower interval_steps "
                             "in the table's eviction (TableConfig.eviction), or call TableGroup.evict_expired()")
        self.every = every

    def on_step_end(self, trainer, step, logs):
        if step % self.every:
            return
        from recis.nn import named_table_groups

        for _, group in named_table_groups(trainer.model):
            stats = group.stats()
            name = "+".join(group.names)
            for key in ("live", "inserts", "evictions"):
                if key in stats:
                    logs[f"table/{name}/{key}"] = float(stats[key])


class Profiler(Hook):
    """Profiles steps [start, start + steps) with torch.profiler and writes a Chrome trace to `path`."""

    def __init__(self, path: str, start: int = 10, steps: int = 5):
        self.path, self.start, self.steps = path, start, steps
        self.prof = None

    def on_step_end(self, trainer, step, logs):
        if step == self.start and self.prof is None:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
            self.prof.__enter__()
        elif self.prof is not None and step == self.start + self.steps:
            self._finish()

    def _finish(self):
        self.prof.__exit__(None, None, None)
        self.prof.export_chrome_trace(self.path)
        self.prof = None

    def on_fit_end(self, trainer):
        if self.prof is not None:
            self._finish()


class Throughput:
    """Examples/s over the steps since the last read."""

    def __init__(self):
        self.t0, self.n = time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.n += n

    def read(self) -> float:
        now = time.perf_counter()
        rate = self.n / max(now - self.t0, 1e-9)
        self.t0, self.n = now, 0
        return rate
