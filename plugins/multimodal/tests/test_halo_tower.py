"""HALOTower as YAML-style jobs (`recis.run.Job`) on tiny Parquet files written here: denoiser
pre-training (sft) on clips, then Gran-DPO and Diffusion-DPO stages from its checkpoint
(checkpoint.init_from) on pairs. The reference is the sft weights, checked by SHA-256 and never
saved; the first preference step's loss is (1 + lam) log 2 (theta = reference); a Gran-DPO stage
killed mid-run and resumed by a new Job ends bit-identical to an uninterrupted one; evaluation
reports per-example values through the `tower` metric, and an `evaluator` scores sampled clips;
bad inputs are named."""
import math
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis.checkpoint import IncompatibleCheckpointError
from recis.run import Job, RunConfig
from recis.testing import KillAt, Killed, StepLogs
from recis.train import Hook

from recis_multimodal.halo.tower import HALOTower

CLIP = [2, 8, 8]
N = CLIP[0] * CLIP[1] * CLIP[2]
GRID = [1, 4, 4]
K = 2 * 2 * 2


def _list_column(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1).astype(np.float32)), x.shape[1])


def clip_table(rows: int, seed: int) -> pa.Table:
    """Clips of 4 classes: class c is a bright square at a class-specific place, with noise."""
    rng = np.random.default_rng(seed)
    cond = rng.integers(0, 4, size=rows)
    video = rng.uniform(0.0, 0.1, size=(rows, *CLIP))
    for i, c in enumerate(cond):
        r, col = 1 + 3 * (c // 2), 1 + 3 * (c % 2)
        video[i, :, r:r + 3, col:col + 3] += 0.8
    return pa.table({"video": _list_column(video.reshape(rows, N)), "cond": pa.array(cond.astype(np.int64))})


def pair_table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    clips = clip_table(2 * rows, seed)
    va = np.asarray(clips["video"].combine_chunks().flatten()).reshape(2 * rows, N)[:rows]
    vb = va + rng.normal(0, 0.05, size=va.shape)
    pa_, pb = -rng.uniform(0, 1, size=(rows, K)), -rng.uniform(0, 1, size=(rows, K))
    return pa.table({"cond": clips["cond"].slice(0, rows), "video_a": _list_column(va), "video_b": _list_column(vb),
                     "reward_a": pa.array(pa_.mean(axis=1).astype(np.float32)),
                     "reward_b": pa.array(pb.mean(axis=1).astype(np.float32)),
                     "patch_reward_a": _list_column(pa_), "patch_reward_b": _list_column(pb)})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny Conv3d steps run fastest on one thread (and the machine's cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("halo_jobs")
    pq.write_table(clip_table(48, 0), d / "clips.parquet")
    pq.write_table(clip_table(16, 1), d / "clips_eval.parquet")
    pq.write_table(pair_table(32, 2), d / "pairs.parquet")
    pq.write_table(pair_table(16, 3), d / "pairs_eval.parquet")
    return d


def clip_features():
    return [{"name": "video", "kind": "tensor", "column": "video", "shape": [N]},
            {"name": "cond", "kind": "dense", "column": "cond"}]


def pair_features():
    return ([{"name": c, "kind": "tensor", "column": c, "shape": [N]} for c in ("video_a", "video_b")]
            + [{"name": c, "kind": "tensor", "column": c, "shape": [K]} for c in ("patch_reward_a", "patch_reward_b")]
            + [{"name": c, "kind": "dense", "column": c} for c in ("reward_a", "reward_b", "cond")])


def job(workdir, name, objective="sft", steps=6, init_from=None, metrics=None, features=None, lr=1e-3, **model):
    pairs = objective != "sft"
    features = features if features is not None else (pair_features() if pairs else clip_features())
    return RunConfig.from_dict({
        "data": {"train": "pairs.parquet" if pairs else "clips.parquet",
                 "eval": "pairs_eval.parquet" if pairs else "clips_eval.parquet",
                 "batch_size": 8, "eval_batch_size": 8, "shuffle_buffer": 16, "seed": 0, "prefetch": 0},
        "features": {"features": features},
        "model": {"name": "halo", "objective": objective, "clip": CLIP, "num_classes": 4, "width": 8,
                  "noise_seed": 5, **model},
        "metrics": metrics if metrics is not None else {"tower": {}},
        "optim": {"dense": {"name": "adam", "lr": lr}},
        "trainer": {"epochs": 100, "max_steps": steps, "progress": False, "seed": 0, "log_every": 1},
        "checkpoint": {"dir": str(workdir / name), "every": 2, "keep_last": 20, "init_from": init_from},
    }, str(workdir))


GRAN = {"dpo": {"beta": 200.0, "lam": 1.0, "delta": 0.05, "grid": GRID}}


@pytest.fixture(scope="module")
def sft(workdir):
    j = Job(job(workdir, "sft", steps=12, lr=1e-2))
    before = j.trainer.evaluate(j.eval_data)
    result = j.train()
    assert isinstance(j.model, HALOTower) and j.model.reference is None and j.trainer.step == 12
    return workdir / "sft", {k: v.clone() for k, v in j.model.denoiser.state_dict().items()}, (before, result)


def test_sft_pretraining_lowers_the_denoising_loss(sft):
    _, _, (before, after) = sft
    # the same evaluation noise both times: the held-out denoising error fell
    assert 0 < after["denoise_mse"] < before["denoise_mse"] and after["loss"] == pytest.approx(after["denoise_mse"])


def test_gran_dpo_stage_reference_is_the_sft_weights_and_is_not_saved(workdir, sft):
    sft_dir, sft_state, _ = sft
    j = Job(job(workdir, "gran_ref", "gran_dpo", steps=2, init_from=str(sft_dir), **GRAN))
    tower = j.model
    for k, v in sft_state.items():
        assert torch.equal(tower.denoiser.state_dict()[k], v) and torch.equal(tower.reference.state_dict()[k], v), k
    assert not any(p.requires_grad for p in tower.reference.parameters())
    rec = StepLogs()
    j.trainer.hooks.append(rec)
    j.train()
    # theta = reference at the first step: each term is log 2 (every pair has a patch over delta)
    assert rec.logs[0]["loss"] == pytest.approx(2 * math.log(2), rel=1e-5)
    assert rec.logs[0]["video_loss"] == pytest.approx(math.log(2), rel=1e-5)
    saved = j.trainer.checkpoint.latest()
    state = tower.state_dict()
    assert not [k for k in state if k.startswith("reference.")] and any(k.startswith("denoiser.") for k in state)
    ref = state["_extra_state"]["base"]["reference"]
    assert ref["tensors"] == len(list(tower.reference.parameters())) and len(ref["sha256"]) == 64
    assert saved is not None
    for k, v in sft_state.items():  # the reference stayed; the model moved
        assert torch.equal(tower.reference.state_dict()[k], v)
    assert not all(torch.equal(tower.denoiser.state_dict()[k], v) for k, v in sft_state.items())


def assert_same(a: Job, b: Job):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k], k
    assert torch.equal(a.model.generator.get_state(), b.model.generator.get_state())
    for p, q in zip(a.model.reference.parameters(), b.model.reference.parameters()):
        assert torch.equal(p, q)
    oa, ob = a.dense_optimizer.state_dict()["state"], b.dense_optimizer.state_dict()["state"]
    for k in oa:
        for name, t in oa[k].items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(ob[k][name])), (k, name)


def test_a_killed_gran_dpo_stage_resumes_bit_identical(workdir, sft):
    sft_dir, _, _ = sft

    def stage(name):
        return Job(job(workdir, name, "gran_dpo", steps=7, init_from=str(sft_dir), **GRAN))

    full = stage("gran_full")
    full.train()
    killed = stage("gran_cut")
    killed.trainer.hooks.append(KillAt(5))
    with pytest.raises(Killed):
        killed.train()
    assert [c.step for c in killed.trainer.checkpoint.checkpoints()] == [2, 4]
    shutil.copytree(workdir / "gran_cut", workdir / "gran_cut_reseeded")
    resumed = stage("gran_cut")
    resumed.train()
    assert resumed.trainer.step == 7
    assert_same(full, resumed)

    # the check catches a resume that restores everything but the noise generator
    reseeded = stage("gran_cut_reseeded")
    reseeded.trainer.hooks.append(Reseed())
    reseeded.train()
    assert not torch.equal(reseeded.model.denoiser.conv_in.weight, full.model.denoiser.conv_in.weight)


class Reseed(Hook):
    def on_fit_start(self, trainer):
        assert trainer.step == 4  # resumed
        trainer.model.generator.manual_seed(123)


def test_a_resume_on_another_reference_is_refused(workdir, sft):
    sft_dir, _, _ = sft
    Job(job(workdir, "gran_other", "gran_dpo", steps=2, init_from=str(sft_dir), **GRAN)).train()
    with pytest.raises(IncompatibleCheckpointError, match=r"group 'reference': the checkpoint was trained on base "
                       r"weights 'the weights of checkpoint.init_from' .*, the tower has 'the seeded initial weights"):
        Job(job(workdir, "gran_other", "gran_dpo", steps=4, init_from=None, **GRAN)).train()  # seeded init, not sft's


def scorer_factory(threshold=0.5):
    """A test evaluator: per clip, the share of pixels above `threshold` and the mean intensity."""
    def score(clips, cond):
        assert clips.min() >= 0 and clips.max() <= 1 and clips.shape[1:] == (1, *CLIP)
        flat = clips.reshape(clips.shape[0], -1)
        return {"bright_share": (flat > threshold).float().mean(dim=1), "mean_pixel": flat.mean(dim=1)}
    return score


def test_diffusion_dpo_evaluation_values_and_the_evaluator(workdir, sft):
    sft_dir, _, _ = sft
    cfg = job(workdir, "ddpo", "diffusion_dpo", steps=2, init_from=str(sft_dir), dpo={"beta": 200.0},
              evaluator="test_halo_tower:scorer_factory", evaluator_options={"threshold": 0.4})
    j = Job(cfg)
    before = j.trainer.evaluate(j.eval_data)
    # at theta = reference: every pair's implicit accuracy is 0 and its loss log 2
    assert before["implicit_accuracy"] == 0.0 and before["dpo_loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert 0 <= before["bright_share"] <= 1 and 0 <= before["mean_pixel"] <= 1
    again = j.trainer.evaluate(j.eval_data)
    assert again == before  # the same noise and samples each evaluation
    j.train()
    after = j.trainer.evaluate(j.eval_data)
    assert after["dpo_loss"] != before["dpo_loss"]


def test_bad_inputs_are_named(workdir, sft):
    with pytest.raises(ValueError, match=r"halo \(objective gran_dpo\) reads the features .* lack \['patch_reward_b'\]"):
        Job(job(workdir, "bad1", "gran_dpo", features=[f for f in pair_features() if f["name"] != "patch_reward_b"],
                **GRAN))
    with pytest.raises(ValueError, match=r"does not divide the clip \[F, H, W\] = \(2, 8, 8\)"):
        Job(job(workdir, "bad2", "gran_dpo", dpo={"grid": [1, 3, 4]}))
    with pytest.raises(ValueError, match=r"model.dpo.lam applies to objective gran_dpo only"):
        Job(job(workdir, "bad3", "diffusion_dpo", dpo={"lam": 1.0}))
    with pytest.raises(ValueError, match=r"cond\) must hold one class index in \[0, 2\]"):
        Job(job(workdir, "bad4", num_classes=3)).train()
    with pytest.raises(ValueError, match=r"model.evaluator 'no_such_module:score': cannot load it"):
        Job(job(workdir, "bad5", evaluator="no_such_module:score"))
    with pytest.raises(ValueError, match=r"feature 'video' \(video\) has 128 numbers per row \(shape \(128,\)\); "
                                         r"model.channels x model.clip \[1, 4, 8, 8\] needs 256"):
        Job(job(workdir, "bad6", clip=[4, 8, 8])).train()


def test_an_sft_stage_starts_from_a_preference_checkpoint(workdir, sft):
    """The reference is a copy of the starting weights, not weights of its own: an sft stage can
    start from a Gran-DPO checkpoint (which records a reference the sft tower does not have)."""
    sft_dir, _, _ = sft
    src = Job(job(workdir, "gran_src", "gran_dpo", steps=1, init_from=str(sft_dir), **GRAN))
    src.train()
    j = Job(job(workdir, "sft_again", steps=1, init_from=str(workdir / "gran_src")))
    assert j.model.reference is None
    for k, v in src.model.denoiser.state_dict().items():
        assert torch.equal(j.model.denoiser.state_dict()[k], v), k
    j.train()
    assert j.trainer.step == 1


def test_a_gran_dpo_step_equals_the_formula_on_its_own_noise():
    """One training forward on a hand-built batch against the loop reference of
    test_halo_gran_dpo: both samples of a pair get the same timestep and noise (drawn from the
    tower's generator), the model is the denoiser, the reference its frozen starting copy."""
    from types import SimpleNamespace

    from test_halo_gran_dpo import _reference

    tower = HALOTower(objective="gran_dpo", clip=CLIP, num_classes=4, width=4, layers=2, noise_seed=9, **GRAN)
    with torch.no_grad():  # move the model away from the reference
        for p in tower.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    table = pair_table(6, 11)
    col = lambda c: torch.tensor(np.asarray(table[c].combine_chunks().flatten() if "video" in c or "patch" in c
                                            else table[c]), dtype=torch.float32)
    tensors = {c: col(c).reshape(6, -1) for c in ("video_a", "video_b", "patch_reward_a", "patch_reward_b")}
    dense_names = ["reward_a", "reward_b", "cond"]
    batch = SimpleNamespace(tensors=tensors, dense=torch.stack([col(c) for c in dense_names], dim=1),
                            dense_names=dense_names)
    state = tower.generator.get_state()
    out = tower(batch)

    g = torch.Generator()
    g.set_state(state)
    t = torch.randint(0, 10, (6,), generator=g)
    noise = torch.randn((6, 1, *CLIP), generator=g)
    betas = np.linspace(0.01, 0.7, 10)
    ab = torch.tensor([np.prod(1 - betas[:i + 1]) for i in t.tolist()], dtype=torch.float32).reshape(6, 1, 1, 1, 1)
    cond = col("cond").long()
    preds = []
    for net in (tower.denoiser, tower.reference):
        for c in ("video_a", "video_b"):
            x0 = tensors[c].reshape(6, 1, *CLIP) * 2 - 1
            x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
            with torch.no_grad():
                preds.append(torch.cat([net(x_t[i:i + 1], t[i:i + 1], cond[i:i + 1]) for i in range(6)]).double().numpy())
    n = noise.double().numpy()
    from recis_multimodal.halo.gran_dpo import PatchGrid

    expect, video, _, _ = _reference(*preds, n, n, col("reward_a").numpy(), col("reward_b").numpy(),
                                     tensors["patch_reward_a"].numpy(), tensors["patch_reward_b"].numpy(), 200.0, 1.0,
                                     0.05, PatchGrid(*GRID))
    assert float(out.loss) == pytest.approx(expect, rel=1e-4)
    assert out.logits is None and set(out.values) == {"implicit_accuracy", "dpo_loss", "denoise_mse"}
    assert torch.allclose(out.values["dpo_loss"].double(), torch.tensor(video), rtol=1e-4)
    assert "implicit_accuracy" not in out.stats and {"patch_loss", "patch_mask_share", "margin"} <= set(out.stats)
