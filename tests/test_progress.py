"""Progress output: a tqdm bar on a terminal; in a log (not a terminal, or under torchrun) plain
lines every N steps, with no carriage returns."""
import io

import pytest

from recis.train import ProgressBar, TrainerConfig
from test_trainer import make_batches, make_trainer


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def no_launcher(monkeypatch):
    for var in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def _fit(config, stream, n_batches=23, hooks_stream=True):
    trainer = make_trainer(config, metrics=False)
    bars = [h for h in trainer.hooks if isinstance(h, ProgressBar)]
    assert len(bars) == 1
    if hooks_stream:
        bars[0].stream = stream
    trainer.fit(make_batches(n_batches=n_batches, batch_size=16))
    return trainer


@pytest.mark.parametrize("every,steps,expected", [(5, 23, [5, 10, 15, 20, 23]), (4, 20, [4, 8, 12, 16, 20]),
                                                  (50, 7, [7])])
def test_a_log_gets_plain_lines_every_n_steps(no_launcher, every, steps, expected):
    out = io.StringIO()  # not a terminal
    _fit(TrainerConfig(log_every=every, progress=True), out, n_batches=steps)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert [int(line.split()[1]) for line in lines] == expected
    assert all(" loss " in f" {line} " for line in lines if int(line.split()[1]) % every == 0)


def test_progress_every_overrides_log_every(no_launcher):
    out = io.StringIO()
    _fit(TrainerConfig(log_every=2, progress_every=10, progress=True), out, n_batches=30)
    assert [int(line.split()[1]) for line in out.getvalue().splitlines()] == [10, 20, 30]


def test_under_torchrun_a_terminal_gets_lines_too(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr("sys.stdout", Terminal())
    out = Terminal()
    _fit(TrainerConfig(log_every=10, progress=True), out, n_batches=25)
    assert "\r" not in out.getvalue() and len(out.getvalue().splitlines()) == 3


def test_a_terminal_gets_the_bar(no_launcher, monkeypatch):
    monkeypatch.setattr("sys.stdout", Terminal())
    out = Terminal()
    _fit(TrainerConfig(log_every=10, progress=True), out, n_batches=25)
    text = out.getvalue()
    assert text.count("\r") >= 2 and "25step" in text and "loss=" in text  # tqdm redraws one line


def test_stdout_redirected_means_lines_even_if_stderr_is_a_terminal(no_launcher, capsys):
    out = Terminal()  # the progress stream is a terminal, but stdout (captured here) is not
    _fit(TrainerConfig(log_every=10, progress=True), out, n_batches=20)
    assert "\r" not in out.getvalue() and len(out.getvalue().splitlines()) == 2


def test_the_default_stream_is_stderr(no_launcher, capsys):
    _fit(TrainerConfig(log_every=5, progress=True), None, n_batches=10, hooks_stream=False)
    err = capsys.readouterr().err
    assert "\r" not in err and [line.split()[1] for line in err.splitlines() if line.startswith("step ")] == ["5", "10"]


def test_progress_every_is_checked():
    with pytest.raises(ValueError, match=r"trainer.progress_every must be an integer >= 1 or null, got 0"):
        TrainerConfig(progress_every=0)


def test_only_rank_zero_reports_progress(no_launcher):
    """A Trainer used directly on every rank of a job prints one progress report, not one per rank."""
    import torch

    from recis.distributed import ShardingEnv
    from recis.models import DeepFM
    from recis.optim import SparseAdagrad
    from recis.train import Trainer

    def hooks(rank):
        model = DeepFM(["user", "item"], 2, 8, hidden=(16,))
        env = ShardingEnv(rank=rank, world_size=2, group=object())
        trainer = Trainer(model, SparseAdagrad(model, lr=0.1), torch.optim.SGD(model.parameters(), lr=0.1),
                          config=TrainerConfig(progress=True), env=env)
        return [type(h).__name__ for h in trainer.hooks]

    assert hooks(0) == ["ProgressBar"] and hooks(1) == []
