"""The Trainer's rollout step, with a toy contextual bandit written here (no recis.rl): a softmax
policy over 4 actions samples with its own generator; rewards, old log-probs and the clipped
ratio loss are computed in this file. Checked against a plain loop written in the test, and:
the second inner step sees ratios != 1, statistics reach the logs, resume is bit-identical
(also with refills), checkpoints never split a rollout."""
import csv
import io
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from recis.checkpoint import CheckpointManager
from recis.metrics import ConfusionMatrix
from recis.towers import RolloutPhase, Tower, TowerOutput
from recis.train import NonFiniteLossError, ProgressBar, Trainer, TrainerConfig

DIM, ACTIONS = 3, 4
TRUE_W = torch.tensor([[1.0, -1.0, 0.5], [-0.5, 1.0, 1.0], [0.0, 0.5, -1.0], [1.0, 1.0, 1.0]])


def make_batches(n=6, size=16, seed=0, start=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = torch.randn(size, DIM, generator=g)
        best = (x @ TRUE_W.T).argmax(1)
        out.append(SimpleNamespace(x=x, labels=(best + 1).float(), size=size, id=start + i))
    return out


class Bandit(Tower):
    """Softmax policy over ACTIONS actions of a context x; reward 1 for the best action.
    rollout: sample (own generator), reward, advantage = reward - mean, old log-probs, a
    shuffled split into minibatches. forward on a minibatch: the PPO-clip loss; on data: the
    cross-entropy of the best action, with `predicted` = argmax + 1."""

    def __init__(self, seed=0, inner_steps=2, minibatches=2, refills=0, eps=0.2, kl=0.0, predicted=True):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.policy = torch.nn.Linear(DIM, ACTIONS)
        with torch.no_grad():
            self.policy.weight.copy_(0.3 * torch.randn(ACTIONS, DIM, generator=g))
            self.policy.bias.zero_()
        self.sampler = torch.Generator().manual_seed(seed + 100)
        self.inner_steps, self.minibatches, self.refills = inner_steps, minibatches, refills
        self.eps, self.kl, self.predicted = eps, kl, predicted
        self.seen, self.rollouts, self.loaded = [], 0, 0
        self.poison = set()  # (rollout, minibatch) pairs whose loss is NaN
        self.reference = None  # the starting weights (on_weights_loaded); not a submodule
        self.reset_reference()

    @classmethod
    def from_features(cls, features, **args):
        return cls(**args)

    def reset_reference(self):
        self.reference = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}

    def on_weights_loaded(self):
        self.loaded += 1
        self.reset_reference()

    def generators(self):
        return {"sampler": self.sampler}

    def rollout(self, batch, refill):
        assert not self.training and not torch.is_grad_enabled()
        batches = [batch] + [b for b in (refill() for _ in range(self.refills)) if b is not None]
        self.seen += [getattr(b, "id", None) for b in batches]
        x = torch.cat([_x(b) for b in batches])
        best = torch.cat([b.labels for b in batches]).long() - 1
        logp_all = F.log_softmax(self.policy(x), dim=1)
        actions = torch.multinomial(logp_all.exp(), 1, generator=self.sampler).squeeze(1)
        old = logp_all.gather(1, actions[:, None]).squeeze(1)
        reward = (actions == best).float()
        adv = reward - reward.mean()
        order = torch.randperm(len(x), generator=self.sampler)
        mbs = [SimpleNamespace(x=x[i], actions=actions[i], old_logp=old[i], adv=adv[i], labels=best[i].float() + 1,
                               poison=(self.rollouts, j) in self.poison)
               for j, i in enumerate(order.chunk(self.minibatches))]
        self.rollouts += 1
        return RolloutPhase(mbs, self.inner_steps, {"reward_mean": float(reward.mean()), "refilled": len(batches) - 1})

    def forward(self, batch):
        logits = self.policy(_x(batch))
        if not hasattr(batch, "actions"):  # data: evaluation
            best = batch.labels.long() - 1
            return TowerOutput(logits.max(1).values, F.cross_entropy(logits, best),
                               predicted=logits.argmax(1) + 1 if self.predicted else None)
        logp = F.log_softmax(logits, dim=1).gather(1, batch.actions[:, None]).squeeze(1)
        ratio = torch.exp(logp - batch.old_logp)
        surrogate = torch.minimum(ratio * batch.adv, ratio.clamp(1 - self.eps, 1 + self.eps) * batch.adv)
        loss = -surrogate.mean()
        if self.kl:
            loss = loss + self.kl * sum(((p - self.reference[n]) ** 2).sum() for n, p in self.policy.named_parameters())
        if batch.poison:
            loss = loss * float("nan")
        stats = {"ratio_dev": float((ratio.detach() - 1).abs().max())}
        if bool((ratio.detach() != 1).any()):  # appears once the policy moved: a column that comes later
            stats["log_ratio_mean"] = float((logp - batch.old_logp).detach().mean())
        return TowerOutput(logits.max(1).values.detach(), loss, stats=stats)


def _x(batch):
    return batch.x if hasattr(batch, "x") else batch.dense


def reference_loop(tower, batches, opt, accum=1, skip=()):
    """What the Trainer should do, written out: per batch a rollout without gradients, then
    inner_steps passes over the minibatches (accumulating `accum` of them per step; a rollout
    ends on a step); minibatches in `skip` (rollout, index) are dropped."""
    for r, batch in enumerate(batches):
        tower.eval()
        with torch.no_grad():
            phase = tower.rollout(batch, lambda: None)
        tower.train()
        micro = 0
        for _ in range(phase.inner_steps):
            for j, mb in enumerate(phase.minibatches):
                if (r, j) in skip:
                    continue
                (tower(mb).loss / accum).backward()
                micro += 1
                if micro == accum:
                    opt.step()
                    opt.zero_grad()
                    micro = 0
        if micro:
            opt.step()
            opt.zero_grad()


def assert_identical(a: Bandit, b: Bandit):
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(a.sampler.get_state(), b.sampler.get_state())


def test_second_inner_step_sees_ratios_off_one_and_statistics_reach_the_logs(tmp_path):
    tower = Bandit(inner_steps=2, minibatches=1)
    out = io.StringIO()
    trainer = Trainer(tower, None, torch.optim.SGD(tower.parameters(), lr=0.5), config=TrainerConfig(
        log_every=1, log_dir=str(tmp_path), progress=False), hooks=[ProgressBar(stream=out, every=1)])
    trainer.fit(make_batches(3))
    assert trainer.step == 6 and tower.rollouts == 3  # one rollout per batch, not one per step
    rows = [r for r in csv.DictReader(open(tmp_path / "metrics.csv")) if r["split"] == "train"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        first = int(r["step"]) % 2 == 1
        # first inner step: the policy is the sampling one (ratio exactly 1); second: it moved
        assert (float(r["ratio_dev"]) == 0.0) if first else (float(r["ratio_dev"]) > 1e-4), r
        assert (r["reward_mean"] != "") == first and (r["log_ratio_mean"] == "") == first, r
    assert 0 <= float(rows[0]["reward_mean"]) <= 1
    assert "ratio_dev" in out.getvalue() and "reward_mean" in out.getvalue()
    assert (tmp_path / "stats.png").stat().st_size > 1000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"train/ratio_dev", "train/reward_mean", "train/log_ratio_mean"} <= set(events.Tags()["scalars"])


def test_statistics_are_averaged_over_the_log_window(tmp_path):
    """log_every=2 logs, per statistic, the mean of the reports of steps 1-2 (as logged one by one)."""
    rows = {}
    for every in (1, 2):
        tower = Bandit(inner_steps=2, minibatches=1)
        Trainer(tower, None, torch.optim.SGD(tower.parameters(), lr=0.5), config=TrainerConfig(
            log_every=every, log_dir=str(tmp_path / str(every)), progress=False, tensorboard=False)).fit(
            make_batches(2))
        rows[every] = [r for r in csv.DictReader(open(tmp_path / str(every) / "metrics.csv"))]
    one, two = rows[1], rows[2]
    assert [r["step"] for r in two] == ["2", "4"]
    for k in (0, 1):
        a, b, merged = one[2 * k], one[2 * k + 1], two[k]
        for name in ("ratio_dev", "loss"):
            assert float(merged[name]) == pytest.approx((float(a[name]) + float(b[name])) / 2, abs=1e-12)
        assert float(merged["reward_mean"]) == float(a["reward_mean"])  # reported once, by the rollout
        assert float(merged["log_ratio_mean"]) == float(b["log_ratio_mean"])  # reported at step 2 only


@pytest.mark.parametrize("accum,minibatches", [(1, 2), (2, 3)])
def test_rollout_training_equals_a_plain_loop(accum, minibatches):
    """Inner steps over minibatches with grad accumulation: each rollout ends on a step."""
    data = make_batches(3)
    tower, ref = Bandit(minibatches=minibatches), Bandit(minibatches=minibatches)
    Trainer(tower, None, torch.optim.Adam(tower.parameters(), lr=0.05),
            config=TrainerConfig(progress=False, grad_accum_steps=accum)).fit(data)
    reference_loop(ref, data, torch.optim.Adam(ref.parameters(), lr=0.05), accum)
    assert_identical(tower, ref)


def test_a_nonfinite_minibatch_is_skipped_alone_or_stops_with_the_step():
    data = make_batches(3)
    tower, ref = Bandit(), Bandit()
    tower.poison = {(1, 0)}
    trainer = Trainer(tower, None, torch.optim.SGD(tower.parameters(), lr=0.5),
                      config=TrainerConfig(progress=False, on_nonfinite="skip", grad_accum_steps=2))
    trainer.fit(data)
    reference_loop(ref, data, torch.optim.SGD(ref.parameters(), lr=0.5), accum=2, skip={(1, 0)})
    assert trainer.skipped_nonfinite == 2  # that minibatch in both inner steps
    assert_identical(tower, ref)
    stops = Bandit()
    stops.poison = {(1, 1)}
    with pytest.raises(NonFiniteLossError, match="at step 6"):  # rollout 0: 4 steps; rollout 1: 1st minibatch ok
        Trainer(stops, None, torch.optim.SGD(stops.parameters(), lr=0.5),
                config=TrainerConfig(progress=False)).fit(data)


def run(ckpt_dir, max_steps, data, resume=False, refills=0, every=3):
    tower = Bandit(refills=refills)
    trainer = Trainer(tower, None, torch.optim.Adam(tower.parameters(), lr=0.05),
                      config=TrainerConfig(epochs=2, max_steps=max_steps, checkpoint_every=every, progress=False,
                                           seed=0),
                      checkpoint=CheckpointManager(ckpt_dir, keep_last=None))
    if resume:
        assert trainer.resume()
    trainer.fit(data)
    return trainer


@pytest.mark.parametrize("refills", [0, 1])
def test_killed_and_resumed_equals_uninterrupted_bit_for_bit(tmp_path, refills):
    """4 steps per rollout, a checkpoint due every 3 steps: saved at the rollout's end (never
    inside it). Killed at step 10 (inside the 3rd rollout), resumed with new objects."""
    data = make_batches(6)
    full = run(tmp_path / "a", 20, data, refills=refills)
    killed = run(tmp_path / "b", 10, data, refills=refills)
    assert killed.step == 10
    steps = [c.step for c in CheckpointManager(tmp_path / "b").checkpoints()]
    assert steps == [4, 8]  # due at 3 and 6, saved at the ends of rollouts 1 and 2; 9's was cut off
    resumed = run(tmp_path / "b", 20, data, resume=True, refills=refills)
    assert resumed.step == full.step == 20
    assert_identical(resumed.model, full.model)
    for k, v in full.dense_optimizer.state_dict()["state"].items():
        for name, t in v.items():
            assert torch.equal(t, resumed.dense_optimizer.state_dict()["state"][k][name]), name
    assert resumed.epoch == full.epoch and resumed.epoch_batches == full.epoch_batches


def test_refill_takes_the_next_batches_and_counts_them():
    data = make_batches(7)
    tower = Bandit(refills=1)
    trainer = Trainer(tower, None, torch.optim.SGD(tower.parameters(), lr=0.1), config=TrainerConfig(progress=False))
    trainer.fit(data)
    assert tower.seen == list(range(7))  # every batch once, in order; the last refill found no more data
    assert tower.rollouts == 4 and trainer.step == 16
    assert trainer.examples == 7 * 16 and trainer.epoch_batches == 7


def test_generators_are_part_of_the_trainer_state(tmp_path):
    tower = Bandit()
    trainer = Trainer(tower, None, torch.optim.SGD(tower.parameters(), lr=0.1), config=TrainerConfig(progress=False),
                      checkpoint=CheckpointManager(tmp_path))
    trainer.fit(make_batches(1))
    state = trainer.state_dict()["generators"]["sampler"]
    assert torch.equal(state, tower.sampler.get_state())
    path = trainer.save_checkpoint()

    class Renamed(Bandit):
        def generators(self):
            return {"sampling": self.sampler}

    other = Renamed()
    with pytest.raises(ValueError, match=rf"checkpoint {path} holds the states of generators \['sampler'\], but "
                                         r"Renamed.generators\(\) has \['sampling'\]"):
        Trainer(other, None, torch.optim.SGD(other.parameters(), lr=0.1),
                checkpoint=CheckpointManager(tmp_path)).resume()


def test_evaluate_feeds_a_confusion_metric_from_predicted_and_refuses_a_model_without_it():
    data = make_batches(3)
    tower = Bandit()
    trainer = Trainer(tower, None, None, metrics={"confusion": ConfusionMatrix([1, 2, 3, 4])},
                      config=TrainerConfig(progress=False))
    result = trainer.evaluate(data)
    pred = torch.cat([tower.policy(b.x).argmax(1) + 1 for b in data]).detach()
    true = torch.cat([b.labels for b in data])
    assert result["accuracy"] == pytest.approx(float((pred == true).double().mean()), abs=1e-12)
    assert {"macro_f1", "f1_1", "f1_2", "f1_3", "f1_4", "loss"} <= set(result)
    mute = Bandit(predicted=False)
    with pytest.raises(ValueError, match=r"metric 'confusion' \(ConfusionMatrix\) compares predicted classes .* "
                                         r"Bandit returns no TowerOutput.predicted"):
        Trainer(mute, None, None, metrics={"confusion": ConfusionMatrix([1, 2, 3, 4])}).evaluate(data)


def test_a_rollout_must_return_a_rollout_phase_and_statistics_must_be_numbers():
    class Broken(Bandit):
        def rollout(self, batch, refill):
            return [batch]

    class BadStats(Bandit):
        def rollout(self, batch, refill):
            phase = super().rollout(batch, refill)
            phase.stats["loss"] = 1.0
            return phase

    for cls, err, match in ((Broken, TypeError, r"Broken.rollout must return a recis.towers.RolloutPhase"),
                            (BadStats, ValueError, r"BadStats.rollout stats: 'loss' is a name the Trainer logs")):
        t = cls()
        with pytest.raises(err, match=match):
            Trainer(t, None, torch.optim.SGD(t.parameters(), lr=0.1), config=TrainerConfig(progress=False)).fit(
                make_batches(1))
