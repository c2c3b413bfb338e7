"""Prequential ("test, then train") evaluation: every training batch is scored by the forward
that runs before the model updates on it.

The Trainer hands each training (micro-)batch's logits and targets (or, for a tower without a
binary logit, its per-example `TowerOutput.values`) to `Prequential.update` right after the
forward and before the backward and optimizer step, so each example is scored by a model that
has never trained on it. Kept, with the metrics of `recis.metrics`:

- cumulative: log loss (`LogLoss(from_logits=True)`, float64) and exact AUC (`AUC`, ranked by
  the logits) over every example scored so far; the cumulative AUC keeps one entry per distinct
  score, so its memory grows with the examples (about 32 bytes each): `cumulative_auc=False`
  drops it (the windowed AUC stays);
- windowed: the same over tumbling windows of `window` examples (a batch that straddles a
  window's end is split there by rows); each completed window is appended to `history`;
- the tower's values: the mean of each `TowerOutput.values` name, cumulative and windowed
  (`TowerValues`), when the tower has no logits.

>>> import torch
>>> p = Prequential(window=3)
>>> p.update(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0]), {}, step=1)
>>> p.update(torch.tensor([0.5, -3.0]), torch.tensor([0.0, 1.0]), {}, step=2)
>>> [(h["window"], h["examples"], h["step"], round(h["auc"], 4)) for h in p.history]
[(1, 3, 2, 1.0)]
>>> logs = p.logs()
>>> sorted(logs), logs["preq_examples"]
(['preq_auc', 'preq_examples', 'preq_logloss', 'preq_window_auc', 'preq_window_logloss'], 4.0)
"""
from typing import Dict, List, Mapping, Optional

import torch

from recis.config_utils import Range, check_value
from recis.metrics import AUC, LogLoss, TowerValues

__all__ = ["Prequential", "PREFIX", "merged_scores"]

#: Log names of the prequential metrics start with this (statistics may not use it).
PREFIX = "preq_"


class Prequential:
    """Cumulative and windowed prequential metrics (see the module notes). `update` is called
    once per scored batch; `logs()` gives the cumulative values and those of the last complete
    window; `state_dict()` / `load_state_dict()` resume exactly (cumulative sums, AUC state,
    the open window)."""

    def __init__(self, window: int = 10000, cumulative_auc: bool = True):
        check_value("prequential_window", window, int, Range(ge=1))
        check_value("prequential_cumulative_auc", cumulative_auc, bool)
        self.window, self.cumulative_auc = window, cumulative_auc
        self.examples = 0          # examples scored
        self.in_window = 0         # examples in the open window
        self.history: List[Dict[str, float]] = []  # one entry per completed window
        self._cum = {"logloss": LogLoss(from_logits=True), **({"auc": AUC()} if cumulative_auc else {})}
        self._win = {"logloss": LogLoss(from_logits=True), "auc": AUC()}
        self._cum_values, self._win_values = TowerValues(), TowerValues()

    # ---- scoring ----
    def update(self, logits: Optional[torch.Tensor], targets: Optional[torch.Tensor],
               values: Mapping[str, torch.Tensor], step: int) -> None:
        """Scores one batch: `logits` [N] and binary `targets` [N] (None: a tower without a
        binary logit, whose `values` name -> [N] are averaged instead); `step` is the optimizer
        step that will train on the batch (recorded for the windows it completes)."""
        scored = logits is not None and targets is not None
        if scored:
            logits = logits.detach().reshape(-1).to(torch.float64)
            targets = targets.detach().reshape(-1).to(torch.float64)
            if targets.numel() != logits.numel():
                raise ValueError(f"prequential: {logits.numel()} logits but {targets.numel()} targets")
            n = logits.numel()
            values = {}
        else:
            values = {k: v.detach().reshape(-1) for k, v in values.items()}
            if not values:
                return
            n = next(iter(values.values())).numel()
        self._add(self._cum, self._cum_values, logits, targets, values, scored)
        offset = 0
        while offset < n:
            take = min(n - offset, self.window - self.in_window)
            part = slice(offset, offset + take)
            self._add(self._win, self._win_values, logits[part] if scored else None,
                      targets[part] if scored else None, {k: v[part] for k, v in values.items()}, scored)
            offset += take
            self.in_window += take
            self.examples += take
            if self.in_window == self.window:
                self._close(step)

    @staticmethod
    def _add(metrics, tower_values, logits, targets, values, scored: bool) -> None:
        try:
            if scored:
                for m in metrics.values():
                    m.update(logits, targets)
            elif values:
                tower_values.update(values)
        except (TypeError, ValueError) as e:
            raise type(e)(f"prequential evaluation: {e}") from None

    def _close(self, step: int) -> None:
        entry = {"window": len(self.history) + 1, "examples": self.examples, "step": step}
        entry.update(self._results(self._win, self._win_values))
        self.history.append(entry)
        for m in (*self._win.values(), self._win_values):
            m.reset()
        self.in_window = 0

    @staticmethod
    def _results(metrics, tower_values) -> Dict[str, float]:
        out = {name: m.compute() for name, m in metrics.items() if _seen(m)}
        out.update(tower_values.results())
        return out

    # ---- reporting ----
    def logs(self) -> Dict[str, float]:
        """preq_examples, the cumulative preq_logloss and preq_auc (or the tower's values,
        preq_<name>), and preq_window_<metric> of the last complete window (once there is one)."""
        if not self.examples:
            return {}
        out = {f"{PREFIX}examples": float(self.examples)}
        out.update({f"{PREFIX}{k}": v for k, v in self._results(self._cum, self._cum_values).items()})
        if self.history:
            out.update({f"{PREFIX}window_{k}": v for k, v in self.history[-1].items()
                        if k not in ("window", "examples", "step")})
        return out

    # ---- state ----
    def state_dict(self) -> Dict:
        return {"window": self.window, "cumulative_auc": self.cumulative_auc, "examples": self.examples,
                "in_window": self.in_window, "history": [dict(h) for h in self.history],
                "cumulative": {k: m.state() for k, m in self._cum.items()},
                "open_window": {k: m.state() for k, m in self._win.items()},
                "cumulative_values": self._cum_values.state(), "window_values": self._win_values.state()}

    def load_state_dict(self, state: Mapping, where: str = "the prequential state") -> None:
        for key, mine in (("window", self.window), ("cumulative_auc", self.cumulative_auc)):
            if state.get(key) != mine:
                option = "prequential_window" if key == "window" else "prequential_cumulative_auc"
                raise ValueError(f"{where} was saved with trainer.{option}={state.get(key)!r}; this trainer has "
                                 f"{mine!r} (the metrics would not continue the same windows)")
        self.examples, self.in_window = int(state["examples"]), int(state["in_window"])
        self.history = [dict(h) for h in state["history"]]
        for metrics, saved in ((self._cum, state["cumulative"]), (self._win, state["open_window"])):
            for k, m in metrics.items():
                m.load_state(saved[k])
        self._cum_values.load_state(state["cumulative_values"])
        self._win_values.load_state(state["window_values"])


def merged_scores(env, logits: Optional[torch.Tensor], targets: Optional[torch.Tensor],
                  values: Mapping[str, torch.Tensor]):
    """(logits, targets, values) of one training micro-step, for `Prequential.update`. Under
    torch.distributed (`env.distributed`) every rank's, concatenated in rank order: every rank
    then scores one merged stream and holds the same windows and metrics (the ranks train in
    lockstep, so each calls this with its batch of the same micro-step). In one process: as given."""
    if not env.distributed:
        return logits, targets, values
    if logits is not None and targets is not None:
        pairs = torch.stack([logits.detach().reshape(-1).double(), targets.detach().reshape(-1).double()], 1)
        pairs = torch.cat(env.all_gather_rows(pairs, what="prequential scores"))
        return pairs[:, 0], pairs[:, 1], {}
    return None, None, {k: torch.cat(env.all_gather_rows(values[k].detach().reshape(-1).double(),
                                                         what=f"prequential value {k!r}")) for k in sorted(values)}


def _seen(metric) -> bool:
    """Whether a binary metric has any example (a tower without logits leaves them empty)."""
    state = metric.state()
    if "sums" in state:
        return bool(state["sums"][-1] > 0)
    return state["scores"].numel() > 0

