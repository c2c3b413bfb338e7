"""Process rewards (recis.rl.steps, TaoSR-SHE's SRPO) and the diversified filter, checked against
formulas written out here in numpy and against vanilla GRPO / the plain difficulty filter."""
import numpy as np
import pytest
import torch

from recis.rl import (DiversityFilter, GRPOConfig, critical_steps, difficulty_mask, distinct_paths, diversity_mask,
                      grpo_loss, path_ids, srpo_advantages, step_advantages, step_counts, step_index, step_slots,
                      token_advantages)

SEP, EOS, LABEL, PAD = 9, 2, 7, 0


def test_step_index_by_hand():
    ids = torch.tensor([[LABEL, SEP, 5, 5, SEP, 6, EOS, PAD],     # post-CoT: label, two steps, eos
                        [SEP, 5, SEP, 6, 6, LABEL, EOS, PAD],     # pre-CoT: the label stops the last step
                        [LABEL, EOS, PAD, PAD, PAD, PAD, PAD, PAD],  # no step
                        [SEP, 5, EOS, SEP, 5, PAD, PAD, PAD]])   # a separator after a stop opens a step
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0, 0, 0],
                         [1, 1, 1, 1, 1, 0, 0, 0]])
    index = step_index(ids, mask, SEP, stop_ids=(EOS, LABEL))
    assert index.tolist() == [[-1, 0, 0, 0, 1, 1, -1, -1], [0, 0, 1, 1, 1, -1, -1, -1],
                              [-1, -1, -1, -1, -1, -1, -1, -1], [0, 0, -1, 1, 1, -1, -1, -1]]
    assert step_counts(index).tolist() == [2, 2, 0, 2]
    assert step_slots(step_counts(index)).tolist() == [[True, True], [True, True], [False, False], [True, True]]
    # a separator under a zero mask is not a step
    assert step_index(torch.tensor([[SEP, 5]]), torch.tensor([[0, 1]]), SEP).tolist() == [[-1, -1]]
    with pytest.raises(ValueError, match="separator_id 9 is also a stop id"):
        step_index(ids, mask, SEP, stop_ids=(SEP,))


def np_spread(values, unbiased, eps, inside):
    m = values.mean()
    if inside:
        return np.sqrt(((values - m) ** 2).mean() + eps)
    return np.sqrt(((values - m) ** 2).sum() / (len(values) - 1)) + eps


@pytest.mark.parametrize("std,eps,inside", [("trl", 1e-4, False), ("population", 1e-6, True)])
@pytest.mark.parametrize("baseline", ["group", "outcome"])
def test_step_advantages_are_a_z_score_over_the_groups_steps(std, eps, inside, baseline):
    rng = np.random.default_rng(0)
    B, G, K = 3, 4, 3
    r = rng.uniform(0, 1, size=(B, G, K)).round(2)
    counts = rng.integers(1, K + 1, size=(B, G))
    m = np.arange(K)[None, None, :] < counts[:, :, None]
    o = rng.integers(0, 2, size=(B, G)).astype(float)
    got = step_advantages(torch.tensor(r), torch.tensor(m), torch.tensor(o), baseline=baseline, std=std).numpy()
    for b in range(B):
        steps = r[b][m[b]]
        s = np_spread(steps, True, eps, inside)
        for g in range(G):
            for k in range(K):
                base = steps.mean() if baseline == "group" else o[b, g]
                want = (r[b, g, k] - base) / s if m[b, g, k] else 0.0
                assert got[b, g, k] == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_a_group_of_equal_step_rewards_has_no_step_advantage():
    r = torch.ones(1, 3, 2)
    o = torch.tensor([[1.0, 0.0, 1.0]])
    for baseline in ("group", "outcome"):
        assert torch.equal(step_advantages(r, torch.ones(1, 3, 2, dtype=torch.bool), o, baseline), torch.zeros(1, 3, 2))


def test_critical_steps_by_hand():
    correct = torch.tensor([[True, False, False], [True, True, False], [False, True, True], [True, False, True]])
    here = torch.tensor([[True, True, True], [True, True, False], [True, True, True], [True, True, True]])
    outcome = torch.tensor([False, False, True, True])
    decisive = torch.tensor([[True, True, True], [True, True, True], [False, True, False], [False, True, True]])
    c = critical_steps(correct, here, outcome, decisive)
    assert c.tolist() == [[False, True, False],   # wrong: the first incorrect step only
                          [False, False, False],  # wrong, its incorrect step is not one it has: none
                          [False, True, False],   # correct: the decisive steps
                          [False, True, True]]
    assert not critical_steps(correct, here, outcome).any(1)[2:].any()  # no decisive mask: none in correct rollouts


def np_grpo_advantages(o):
    """TRL's group advantage: (o - mean) / (unbiased std + 1e-4), 0 for a constant group."""
    out = np.zeros_like(o)
    for i, row in enumerate(o):
        if row.max() > row.min():
            out[i] = (row - row.mean()) / (row.std(ddof=1) + 1e-4)
    return out


def np_grpo_loss(logp, old, adv, mask, eps=0.2):
    """GRPO's loss (per-sequence token mean, then mean) with per-token advantages, in numpy."""
    adv = adv[:, None] if adv.ndim == 1 else adv
    rho = np.exp(logp - old)
    per = -np.minimum(rho * adv, np.clip(rho, 1 - eps, 1 + eps) * adv)
    return ((per * mask).sum(-1) / mask.sum(-1)).mean()


def _rollouts(seed=0):
    """Two groups of three completions: 8 tokens each, label token, steps on separators, eos."""
    rng = np.random.default_rng(seed)
    ids = torch.tensor([[LABEL, SEP, 5, 5, SEP, 6, 6, EOS], [LABEL, SEP, 5, SEP, 6, EOS, PAD, PAD],
                        [LABEL, SEP, 5, 5, 5, EOS, PAD, PAD]] * 2)
    mask = (ids != PAD).long()
    index = step_index(ids, mask, SEP, stop_ids=(EOS, LABEL))
    counts = step_counts(index).view(2, 3)
    step_mask = step_slots(counts.view(-1), 2).view(2, 3, 2)
    logp = -rng.uniform(0.1, 2.0, size=(6, 8))
    old = logp + rng.normal(0, 0.3, size=(6, 8))
    return ids, mask, index, step_mask, logp, old


def test_lambda_zero_or_step_rewards_equal_to_outcomes_give_grpo_exactly():
    """GRPO computed here in numpy from the outcomes alone; SRPO's token advantages through
    grpo_loss equal it exactly with lam = 0, and with step rewards equal to the outcomes under
    the outcome baseline. With informative step rewards and lam > 0 the loss differs (the
    mechanism is on), and so does the group baseline on step rewards equal to the outcomes."""
    ids, mask, index, step_mask, logp, old = _rollouts()
    o = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    r = torch.tensor([[[1, 0], [1, 1], [0, 0]], [[0, 1], [1, 1], [1, 0]]], dtype=torch.float64)
    correct = r.view(6, 2) > 0.5
    critical = critical_steps(correct, step_mask.view(6, 2), o.view(-1) > 0.5, torch.ones(6, 2, dtype=torch.bool))
    grpo = np_grpo_loss(logp, old, np_grpo_advantages(o.numpy()).reshape(-1), mask.numpy())
    cfg = GRPOConfig()

    def loss(adv):
        return float(grpo_loss(torch.tensor(logp), torch.tensor(old), adv, mask, cfg)[0])

    a0 = srpo_advantages(o, r, step_mask, critical, index, lam=0.0)
    assert loss(a0) == pytest.approx(grpo, rel=1e-12)
    assert torch.equal(a0, torch.tensor(np_grpo_advantages(o.numpy())).reshape(-1, 1).expand(6, 8))
    same = o.unsqueeze(2).expand(2, 3, 2)
    crit_same = critical_steps(same.reshape(6, 2) > 0.5, step_mask.view(6, 2), o.view(-1) > 0.5,
                               torch.ones(6, 2, dtype=torch.bool))
    a1 = srpo_advantages(o, same, step_mask, crit_same, index, lam=0.7, baseline="outcome")
    assert torch.equal(a1, a0) and loss(a1) == pytest.approx(grpo, rel=1e-12)
    # the mechanism on: informative step rewards move the loss off GRPO's
    assert abs(loss(srpo_advantages(o, r, step_mask, critical, index, lam=0.7)) - grpo) > 1e-3
    assert abs(loss(srpo_advantages(o, r, step_mask, critical, index, lam=0.7, baseline="outcome")) - grpo) > 1e-3
    # the group baseline z-scores the steps around their mean: outcomes copied onto the steps are not neutral
    assert abs(loss(srpo_advantages(o, same, step_mask, crit_same, index, lam=0.7)) - grpo) > 1e-3


@pytest.mark.parametrize("baseline", ["group", "outcome"])
def test_one_flagged_step_of_a_correct_rollout_alone_gets_a_lower_advantage_and_its_tokens_lose_mass(baseline):
    """Rollout 0 is correct, its step 1 flagged wrong; every other step of the group is right.
    Only the flagged step's tokens get an advantage below GRPO's (which is one value per rollout),
    and one SGD step on per-token logits lowers their probability where GRPO raises it."""
    ids, mask, index, step_mask, _, _ = _rollouts()
    o = torch.tensor([[1.0, 0.0, 1.0]])
    r = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]]])  # rollout 2 has one step: its slot 1 is missing
    here = step_mask[:1]
    correct = (r.view(3, 2) > 0.5) | ~here.view(3, 2)
    decisive = torch.ones(3, 2, dtype=torch.bool)
    crit = critical_steps(correct, here.view(3, 2), o.view(-1) > 0.5, decisive)
    adv = srpo_advantages(o, r, here, crit, index[:3], lam=0.5, baseline=baseline)
    grpo = torch.tensor(np_grpo_advantages(o.numpy())).float().reshape(-1, 1).expand(3, 8)
    tokens = mask[:3].bool()
    flagged = (index[:3] == 1) & (torch.arange(3) == 0).unsqueeze(1)
    assert bool((adv[flagged] < grpo[flagged]).all())
    assert bool((adv[tokens & ~flagged] >= grpo[tokens & ~flagged]).all())
    assert bool((adv[0][flagged[0]] < adv[0][tokens[0] & ~flagged[0]].min()).all())

    def after_one_step(a):
        torch.manual_seed(0)
        logits = torch.zeros(3, 8, 11, requires_grad=True)
        logp = torch.log_softmax(logits, -1).gather(2, ids[:3].unsqueeze(2)).squeeze(2)
        loss, _ = grpo_loss(logp, logp.detach(), a, mask[:3], GRPOConfig())
        loss.backward()
        with torch.no_grad():
            new = torch.log_softmax(logits - 5.0 * logits.grad, -1).gather(2, ids[:3].unsqueeze(2)).squeeze(2)
        return (new - logp.detach())[flagged]

    assert bool((after_one_step(adv) < 0).all())       # SRPO: the flagged step loses probability
    assert bool((after_one_step(grpo) > 0).all())      # vanilla GRPO reinforces it with the whole rollout


def test_token_advantages_by_hand():
    index = torch.tensor([[-1, 0, 0, 1, -1], [0, 1, 1, 2, 2]])
    a_out = torch.tensor([0.5, -1.0])
    a_step = torch.tensor([[2.0, -1.0, 0.0], [1.0, 3.0, -2.0]])
    crit = torch.tensor([[True, False, False], [False, True, True]])
    got = token_advantages(a_out, a_step, crit, index, lam=0.25)
    assert got.tolist() == [[0.5, 1.0, 1.0, 0.5, 0.5], [-1.0, -0.25, -0.25, -1.5, -1.5]]
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        token_advantages(a_out, a_step, crit, index, lam=-1.0)
    with pytest.raises(ValueError, match="index names step 2 but step_advantages has K = 2"):
        token_advantages(a_out, a_step[:, :2], crit[:, :2], index, lam=1.0)


def test_diversified_filter_removes_all_right_all_wrong_and_low_diversity_groups():
    """Four groups of four: all right, all wrong, mixed but every rollout on one path (low
    diversity), mixed on three paths. The diversified filter keeps only the last; the plain
    difficulty filter also keeps the low-diversity one."""
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]])
    # step-verdict patterns per rollout (codes per step; -1 pads a shorter pattern)
    patterns = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 0],
                             [0, 0], [0, 1], [1, 1], [0, 0],
                             [1, 1], [1, 1], [1, 1], [1, 1],
                             [1, 1], [1, 0], [1, -1], [1, 1]])
    ids = path_ids(patterns, patterns >= 0).view(4, 4)
    assert distinct_paths(ids).tolist() == [3, 3, 1, 3]
    assert diversity_mask(scores, ids, 0.0, 1.0, min_paths=2).tolist() == [False, False, False, True]
    assert difficulty_mask(scores, 0.0, 1.0).tolist() == [False, False, True, True]  # vanilla keeps group 2
    assert diversity_mask(scores, ids, 0.0, 1.0, min_paths=1).tolist() == [False, False, True, True]
    assert diversity_mask(scores, ids, 0.0, 1.0, min_paths=4).tolist() == [False, False, False, False]
    # a shorter pattern is another path, even when its prefix matches
    assert path_ids(torch.tensor([[1, 1], [1, 5]]), torch.tensor([[True, True], [True, False]])).tolist() == [0, 1]
    with pytest.raises(ValueError, match="min_paths must be an integer >= 1, got 0"):
        diversity_mask(scores, ids, 0.0, 1.0, min_paths=0)


def test_diversity_filter_options_are_named():
    f = DiversityFilter()
    assert (f.low, f.high, f.min_paths, f.paths) == (0.0, 1.0, 2, "verdicts")
    with pytest.raises(ValueError, match=r"DiversityFilter.paths must be one of \('verdicts', 'tokens'\), got 'ngrams'"):
        DiversityFilter(paths="ngrams")
    with pytest.raises(ValueError, match="DiversityFilter needs low < high"):
        DiversityFilter(low=0.5, high=0.5)
    with pytest.raises(ValueError, match=r"baseline must be one of \('group', 'outcome'\)"):
        step_advantages(torch.zeros(1, 2, 1), torch.ones(1, 2, 1, dtype=torch.bool), baseline="mean")
    with pytest.raises(ValueError, match=r"baseline 'outcome' needs outcomes"):
        step_advantages(torch.zeros(1, 2, 1), torch.ones(1, 2, 1, dtype=torch.bool), baseline="outcome")
