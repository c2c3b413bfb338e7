"""Gran-DPO against the formula recomputed here with loops over pairs and patch slices (numpy), and
the acceptance properties: every term is log 2 at theta = reference, lam = 0 is exactly
Diffusion-DPO, one whole-clip patch with the video's preference gives the video term, a masked
patch gives zero gradient to its region, swapping a patch's winner flips only that patch's
gradient, a grid that does not divide the clip is named, and the mechanism vanilla Diffusion-DPO
lacks: a video winner's worse patch is pushed toward the loser's side."""
import math

import numpy as np
import pytest
import torch

from recis.rl import diffusion_dpo_loss
from recis_multimodal.halo.gran_dpo import (GranDPOConfig, PatchGrid, clip_errors, gran_dpo_loss, gran_dpo_terms,
                                            patch_errors)

SHAPE = (3, 1, 4, 8, 8)  # P, C, F, H, W
GRID = PatchGrid(frames=2, height=4, width=4)  # K = 2 * 2 * 2 = 8


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _slices(grid, shape):
    """The patch regions as (frame, row, column) slices, in the documented k order."""
    f, h, w = grid.frames, grid.height, grid.width
    return [(slice(i, i + f), slice(j, j + h), slice(m, m + w))
            for i in range(0, shape[0], f) for j in range(0, shape[1], h) for m in range(0, shape[2], w)]


def _reference(ma, mb, ra, rb, ta, tb, rew_a, rew_b, pra, prb, beta, lam, delta, grid, patch_beta=None,
               norm="mask"):
    """Gran-DPO with loops (numpy float64)."""
    pb = beta if patch_beta is None else patch_beta
    regions = _slices(grid, ma.shape[2:])
    video, patch_rows, mask_rows = [], [], []
    for i in range(ma.shape[0]):
        e = {name: float(np.mean((x[i] - t[i]) ** 2)) for name, x, t in
             (("ma", ma, ta), ("mb", mb, tb), ("ra", ra, ta), ("rb", rb, tb))}
        w, l = ("a", "b") if rew_a[i] >= rew_b[i] else ("b", "a")
        inside = -0.5 * beta * ((e["m" + w] - e["m" + l]) - (e["r" + w] - e["r" + l]))
        video.append(-_log_sigmoid(inside))
        terms, masks = [], []
        for k, (sf, sh, sw) in enumerate(regions):
            pe = {name: float(np.mean((x[i][:, sf, sh, sw] - t[i][:, sf, sh, sw]) ** 2)) for name, x, t in
                  (("ma", ma, ta), ("mb", mb, tb), ("ra", ra, ta), ("rb", rb, tb))}
            wk, lk = ("a", "b") if pra[i][k] >= prb[i][k] else ("b", "a")
            d = (pe["m" + wk] - pe["r" + wk]) - (pe["m" + lk] - pe["r" + lk])
            terms.append(-_log_sigmoid(-0.5 * pb * d))
            masks.append(1.0 if abs(pra[i][k] - prb[i][k]) >= delta else 0.0)
        patch_rows.append(terms)
        mask_rows.append(masks)
    video, patch, mask = np.array(video), np.array(patch_rows), np.array(mask_rows)
    if norm == "mask":
        per = [(patch[i] * mask[i]).sum() / mask[i].sum() if mask[i].sum() else 0.0 for i in range(len(video))]
        patch_loss = float(np.mean(per))
    elif norm == "count":
        patch_loss = float(np.mean((patch * mask).sum(axis=1) / patch.shape[1]))
    else:
        patch_loss = float((patch * mask).sum() / mask.sum()) if mask.sum() else 0.0
    return float(video.mean()) + lam * patch_loss, video, patch, mask


def _inputs(seed=0, shape=SHAPE, k=8, spread=0.3):
    rng = np.random.default_rng(seed)
    target = rng.normal(size=shape)
    preds = [target + rng.normal(scale=spread, size=shape) for _ in range(4)]
    rewards = rng.uniform(size=shape[0]), rng.uniform(size=shape[0])
    patch_rewards = rng.uniform(size=(shape[0], k)), rng.uniform(size=(shape[0], k))
    return preds, target, rewards, patch_rewards


def _t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def _call(preds, target, rewards, patch_rewards, cfg, grad=False):
    ma, mb = _t(preds[0], grad), _t(preds[1], grad)
    t = _t(target)
    loss, stats = gran_dpo_loss(ma, mb, _t(preds[2]), _t(preds[3]), t, t, _t(rewards[0]), _t(rewards[1]),
                                _t(patch_rewards[0]), _t(patch_rewards[1]), cfg)
    return loss, stats, ma, mb


# ---- the patch grid ------------------------------------------------------------------------------------
def test_grid_counts_masks_and_errors_agree():
    clip = SHAPE[2:]
    assert GRID.count(clip) == 8
    masks = GRID.masks(clip)
    assert masks.shape == (8, *clip) and torch.equal(masks.sum(dim=0), torch.ones(clip, dtype=torch.long))
    for k, (sf, sh, sw) in enumerate(_slices(GRID, clip)):
        region = torch.zeros(clip, dtype=torch.bool)
        region[sf, sh, sw] = True
        assert torch.equal(masks[k], region)
    pred, target = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    got = patch_errors(pred, target, GRID)
    sq = (pred - target) ** 2
    expect = torch.stack([sq[:, :, masks[k]].mean(dim=(1, 2)) for k in range(8)], dim=1)
    assert got.shape == (3, 8) and torch.allclose(got, expect, rtol=1e-12, atol=0)
    assert torch.allclose(got.mean(dim=1), clip_errors(pred, target), rtol=1e-12, atol=0)  # equal-size patches


def test_a_grid_that_does_not_divide_the_clip_is_named():
    with pytest.raises(ValueError, match=r"patch grid \(frames=2, height=3, width=4\) does not divide the clip "
                                         r"\[F, H, W\] = \(4, 8, 8\): height 8 % 3 != 0"):
        patch_errors(torch.zeros(SHAPE), torch.zeros(SHAPE), PatchGrid(2, 3, 4))
    preds, target, rewards, patch_rewards = _inputs()
    with pytest.raises(ValueError, match=r"patch grid \(frames=3, height=4, width=4\) does not divide the clip"):
        _call(preds, target, rewards, patch_rewards, GranDPOConfig(grid=[3, 4, 4]))
    with pytest.raises(ValueError, match="PatchGrid.width must be an integer >= 1, got 0"):
        PatchGrid(1, 4, 0)


@pytest.mark.parametrize("options,match", [
    (dict(beta=0.0), "GranDPOConfig.beta"), (dict(lam=-1.0), "GranDPOConfig.lam"),
    (dict(delta=-0.1), "GranDPOConfig.delta"), (dict(patch_beta=0.0), "GranDPOConfig.patch_beta"),
    (dict(patch_norm="sum"), "GranDPOConfig.patch_norm must be one of"),
    (dict(grid="4x4"), "GranDPOConfig.grid must be \\[frames, height, width\\]"),
    (dict(grid={"rows": 4}), "GranDPOConfig.grid: unknown key"),
])
def test_config_errors_name_the_field(options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        GranDPOConfig(**options)


def test_rewards_of_the_wrong_shape_are_named():
    preds, target, rewards, patch_rewards = _inputs()
    with pytest.raises(ValueError, match=r"patch_reward_b must be a tensor of shape \(3, 8\)"):
        _call(preds, target, rewards, (patch_rewards[0], patch_rewards[1][:, :4]), GranDPOConfig(grid=GRID))


# ---- the formula ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("lam,delta,patch_beta,norm", [
    (1.0, 0.2, None, "mask"), (0.5, 0.0, 7.0, "mask"), (2.0, 0.3, None, "count"), (1.0, 0.4, 3.0, "batch"),
    (1.0, 2.0, None, "mask"),  # no patch over delta anywhere: the patch term is 0
])
def test_loss_matches_the_loop_reference(lam, delta, patch_beta, norm):
    preds, target, rewards, patch_rewards = _inputs(seed=1)
    cfg = GranDPOConfig(beta=20.0, lam=lam, delta=delta, grid=GRID, patch_beta=patch_beta, patch_norm=norm)
    loss, stats, _, _ = _call(preds, target, rewards, patch_rewards, cfg)
    expect, video, patch, mask = _reference(*preds, target, target, *rewards, *patch_rewards, 20.0, lam, delta, GRID,
                                            patch_beta, norm)
    assert float(loss) == pytest.approx(expect, rel=1e-10)
    assert stats["patch_mask_share"] == pytest.approx(mask.mean())
    assert stats["pairs_without_patches"] == pytest.approx(float(np.mean(mask.sum(axis=1) == 0)))
    if delta == 2.0:
        assert stats["patch_loss"] == 0.0 and stats["pairs_without_patches"] == 1.0


@pytest.mark.parametrize("beta", [1.0, 2500.0])
def test_every_term_is_log_2_at_the_reference(beta):
    preds, target, rewards, patch_rewards = _inputs(seed=2)
    model = [_t(preds[0]), _t(preds[1])]
    t = _t(target)
    cfg = GranDPOConfig(beta=beta, lam=0.7, delta=0.1, grid=GRID)
    errs = [clip_errors(x, t) for x in model]
    perrs = [patch_errors(x, t, GRID) for x in model]
    terms, _ = gran_dpo_terms(errs + [e.clone() for e in errs], perrs + [e.clone() for e in perrs],
                              _t(rewards[0]), _t(rewards[1]), _t(patch_rewards[0]), _t(patch_rewards[1]), cfg)
    log2 = torch.full_like(terms.video, math.log(2))
    assert torch.allclose(terms.video, log2, rtol=1e-15, atol=0)
    assert torch.allclose(terms.patch, torch.full_like(terms.patch, math.log(2)), rtol=1e-15, atol=0)
    loss, stats = gran_dpo_loss(model[0], model[1], model[0].clone(), model[1].clone(), t, t, _t(rewards[0]),
                                _t(rewards[1]), _t(patch_rewards[0]), _t(patch_rewards[1]), cfg)
    assert stats["pairs_without_patches"] == 0.0
    assert float(loss) == pytest.approx((1 + 0.7) * math.log(2), rel=1e-14)


def test_lam_zero_is_exactly_diffusion_dpo():
    preds, target, rewards, patch_rewards = _inputs(seed=3)
    loss, stats, _, _ = _call(preds, target, rewards, patch_rewards, GranDPOConfig(beta=30.0, lam=0.0, grid=GRID))
    t = _t(target)
    e = [((_t(p) - t) ** 2).mean(dim=(1, 2, 3, 4)) for p in preds]
    a_wins = _t(rewards[0]) >= _t(rewards[1])
    w = [torch.where(a_wins, e[0], e[1]), torch.where(a_wins, e[1], e[0]),
         torch.where(a_wins, e[2], e[3]), torch.where(a_wins, e[3], e[2])]
    expect, vstats = diffusion_dpo_loss(*w, beta=30.0)
    assert torch.equal(loss, expect)
    assert stats["implicit_accuracy"] == vstats["implicit_accuracy"]


def test_one_whole_clip_patch_with_the_video_preference_gives_the_video_term():
    preds, target, rewards, _ = _inputs(seed=4)
    whole = PatchGrid(*SHAPE[2:])
    # patch rewards that prefer the video winner, by more than delta
    pa = np.where(rewards[0] >= rewards[1], 1.0, 0.0)[:, None]
    cfg = GranDPOConfig(beta=40.0, lam=1.0, delta=0.5, grid=whole)
    _, stats, _, _ = _call(preds, target, rewards, (pa, 1.0 - pa), cfg)
    assert stats["patch_mask_share"] == 1.0 and stats["patch_winner_agreement"] == 1.0
    assert stats["patch_loss"] == pytest.approx(stats["video_loss"], rel=1e-12)


# ---- gradients -----------------------------------------------------------------------------------------
def _patch_term_grads(preds, target, rewards, patch_rewards, cfg):
    """d(patch term)/d(model predictions a, b): the patch term alone, on leaf inputs."""
    ma, mb = _t(preds[0], True), _t(preds[1], True)
    t = _t(target)
    errs = [clip_errors(x, t) for x in (ma, mb, _t(preds[2]), _t(preds[3]))]
    perrs = [patch_errors(x, t, cfg.grid) for x in (ma, mb, _t(preds[2]), _t(preds[3]))]
    terms, _ = gran_dpo_terms(errs, perrs, _t(rewards[0]), _t(rewards[1]), _t(patch_rewards[0]),
                              _t(patch_rewards[1]), cfg)
    terms.patch_loss.backward()
    return ma.grad, mb.grad, terms.mask


def test_a_masked_patch_contributes_zero_gradient_to_its_region():
    preds, target, rewards, (pra, prb) = _inputs(seed=5)
    prb = prb.copy()
    prb[:, 2] = pra[:, 2] + 0.01       # patch 2 under delta in every pair: masked out
    prb[:, 5] = pra[:, 5] - 0.9        # patch 5 decisive everywhere
    cfg = GranDPOConfig(beta=25.0, lam=1.0, delta=0.1, grid=GRID)
    ga, gb, mask = _patch_term_grads(preds, target, rewards, (pra, prb), cfg)
    assert not mask[:, 2].any() and mask[:, 5].all()
    masks = GRID.masks(SHAPE[2:])
    for g in (ga, gb):
        assert torch.count_nonzero(g[:, :, masks[2]]) == 0
        assert (g[:, :, masks[5]].abs() > 0).all()
    # in the whole loss, the masked region gets exactly the video term's gradient
    full_a = _call(preds, target, rewards, (pra, prb), cfg, grad=True)
    full_a[0].backward()
    video_a = _call(preds, target, rewards, (pra, prb), GranDPOConfig(beta=25.0, lam=0.0, grid=GRID), grad=True)
    video_a[0].backward()
    assert torch.equal(full_a[2].grad[:, :, masks[2]], video_a[2].grad[:, :, masks[2]])
    assert not torch.equal(full_a[2].grad[:, :, masks[5]], video_a[2].grad[:, :, masks[5]])


@pytest.mark.parametrize("at_reference", [True, False])
def test_swapping_winner_and_loser_in_one_patch_flips_only_its_gradient(at_reference):
    preds, target, rewards, (pra, prb) = _inputs(seed=6, spread=0.2)
    if at_reference:
        preds = [preds[0], preds[1], preds[0], preds[1]]
    cfg = GranDPOConfig(beta=25.0, lam=1.0, delta=0.0, grid=GRID)
    ga, gb, _ = _patch_term_grads(preds, target, rewards, (pra, prb), cfg)
    k = 3
    sa, sb = pra.copy(), prb.copy()
    sa[:, k], sb[:, k] = prb[:, k], pra[:, k]    # the same gap, the other winner
    ha, hb, _ = _patch_term_grads(preds, target, rewards, (sa, sb), cfg)
    masks = GRID.masks(SHAPE[2:])
    for g, h in ((ga, ha), (gb, hb)):
        for j in range(8):
            if j != k:
                assert torch.equal(g[:, :, masks[j]], h[:, :, masks[j]])
        region_g, region_h = g[:, :, masks[k]], h[:, :, masks[k]]
        assert (region_g != 0).all()
        assert torch.equal(torch.sign(region_g), -torch.sign(region_h))
        if at_reference:  # sigma(0) on both sides: an exact negation
            assert torch.equal(region_g, -region_h)


def test_a_winners_worse_patch_is_pushed_toward_the_losers_side():
    """The pair's video winner a has a defective patch k (its patch reward below b's by more than
    delta; the other patches undecided). Descent on Diffusion-DPO lowers a's error everywhere,
    patch k included (it learns the defect with the rest of the winner); Gran-DPO raises a's error
    on patch k (and lowers b's there), while still lowering a's error on the other patches."""
    preds, target, _, _ = _inputs(seed=7, shape=(1, 1, 4, 8, 8), spread=0.3)
    rewards = (np.array([1.0]), np.array([0.0]))            # a wins the video
    pra, prb = np.zeros((1, 8)), np.zeros((1, 8))
    k = 6
    pra[0, k], prb[0, k] = -1.0, 0.0                          # but a's patch k is worse
    masks = GRID.masks((4, 8, 8))

    def descent_on_error(lam):
        """-d loss / d e, read per region from the gradient on the predictions: sign of
        -<grad, pred - target> (positive: a step lowers that region's error)."""
        loss, _, ma, mb = _call(preds, target, rewards, (pra, prb), GranDPOConfig(beta=25.0, lam=lam, delta=0.5,
                                                                                   grid=GRID), grad=True)
        loss.backward()
        out = {}
        for name, x, g in (("a", preds[0], ma.grad), ("b", preds[1], mb.grad)):
            r = torch.tensor(x - target)
            out[name] = [float((g[:, :, masks[j]] * r[:, :, masks[j]]).sum()) for j in range(8)]
        return out

    vanilla, gran = descent_on_error(0.0), descent_on_error(1.0)
    assert all(v > 0 for v in vanilla["a"]) and all(v < 0 for v in vanilla["b"])  # Diffusion-DPO: all of a
    assert gran["a"][k] < 0 and gran["b"][k] > 0                                 # Gran-DPO: patch k flips
    assert all(gran["a"][j] > 0 for j in range(8) if j != k)
