"""HALO's artifact world and its teacher (recis_multimodal.halo.world)."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from recis_multimodal.halo.world import (KINDS, ArtifactWorld, Teacher, TeacherConfig, WorldConfig, artifact_energy,
                                         check_patch, patch_mean, temporal_energy)


def _items(n=12, seed=0):
    """Small synthetic items (rectangles with a textured inside) for the fast tests."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        h, w = rng.integers(10, 22, 2)
        y, x = (28 - h) // 2, (28 - w) // 2
        images[i, y:y + h, x:x + w] = rng.integers(120, 255)
        images[i, y + 2:y + h - 2:3, x + 2:x + w - 2] //= 2
    return images, np.arange(n) % 10


def _world(**kw):
    return ArtifactWorld(*_items(), WorldConfig(**kw))


def _reference_energy(clip, patch, spatial_weight):
    """The teacher's energy of one clip [F, H, W] recomputed with numpy loops (an independent reference)."""
    x = clip.astype(np.float64)
    f, h, w = x.shape
    d2 = np.zeros_like(x)
    for t in range(1, f - 1):
        d2[t] = (x[t - 1] - 2 * x[t] + x[t + 1]) ** 2
    d2[0], d2[-1] = d2[1], d2[-2]
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    lap = (pad[:, :-2, 1:-1] + pad[:, 2:, 1:-1] + pad[:, 1:-1, :-2] + pad[:, 1:-1, 2:] - 4 * x) ** 2
    pf, ph, pw = patch
    out = []
    for bt in range(f // pf):
        for r in range(h // ph):
            for c in range(w // pw):
                rows, cols = slice(r * ph, (r + 1) * ph), slice(c * pw, (c + 1) * pw)
                temporal = d2[bt * pf:(bt + 1) * pf, rows, cols].mean()
                hf = np.array([lap[t, rows, cols].mean() for t in range(f)])
                excess = np.maximum(hf - np.median(hf), 0)[bt * pf:(bt + 1) * pf].mean()
                out.append(temporal + spatial_weight * excess)
    return np.array(out)


def test_clip_shapes_range_and_labels():
    world = _world(frames=6, size=24, patch=(3, 6, 6))
    clips = world.sample(7)
    assert clips.video.shape == (7, 1, 6, 24, 24) and clips.clean.shape == clips.video.shape
    assert clips.video.dtype == torch.float32 and float(clips.video.min()) >= 0 and float(clips.video.max()) <= 1
    assert clips.artifacts.shape == (7, 2 * 4 * 4) and clips.kinds.shape == (7, 32)
    assert torch.equal(clips.cond, world.labels[clips.item])
    assert torch.equal(clips.artifacts, clips.kinds > 0)
    # a patch without a planted artifact is pixel-identical to the clean clip there
    pf, ph, pw = 3, 6, 6
    for n in range(7):
        for k in range(32):
            t, r, c = k // 16, (k // 4) % 4, k % 4
            same = torch.equal(clips.video[n, 0, t * pf:(t + 1) * pf, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw],
                               clips.clean[n, 0, t * pf:(t + 1) * pf, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw])
            assert same or bool(clips.artifacts[n, k])
    assert len(world.sample(0)) == 0


def test_world_is_deterministic_by_seed():
    a, b, c = _world(seed=3), _world(seed=3), _world(seed=4)
    ca, cb, cc = a.sample(6), b.sample(6), c.sample(6)
    for name in ("video", "clean", "cond", "artifacts", "kinds"):
        assert torch.equal(getattr(ca, name), getattr(cb, name))
    assert not torch.equal(ca.video, cc.video)
    tail = a.sample(3, start=3)  # clip i depends on (seed, stream, i) only
    assert torch.equal(tail.video, ca.video[3:]) and torch.equal(tail.artifacts, ca.artifacts[3:])
    assert not torch.equal(a.sample(6, stream=1).video, ca.video)
    assert bool((a.sample(5, cond=4).cond == 4).all())
    assert not a.sample(4, artifacts=False).artifacts.any() and a.sample(4, artifacts=True).artifacts.any(dim=1).all()


def test_config_errors_name_the_culprit():
    with pytest.raises(ValueError, match=r"world.patch \(3, 4, 4\).*\(4, 16, 16\).*frames 4 % 3"):
        WorldConfig(patch=(3, 4, 4))
    with pytest.raises(ValueError, match=r"width 16 % 5"):
        check_patch((4, 16, 16), (2, 4, 5))
    with pytest.raises(ValueError, match="world.motion"):
        WorldConfig(motion="spin")
    with pytest.raises(ValueError, match="world.kinds"):
        WorldConfig(kinds=("smudge",))
    with pytest.raises(ValueError, match="world.frames"):
        WorldConfig(frames=2)
    with pytest.raises(ValueError, match=r"teacher patch \(2, 4, 4\).*\(4, 16, 18\)"):
        artifact_energy(torch.zeros(1, 1, 4, 16, 18), (2, 4, 4))
    with pytest.raises(RuntimeError, match="not calibrated"):
        Teacher((2, 4, 4)).patch_rewards(torch.zeros(1, 1, 4, 16, 16))


def test_energy_matches_an_independent_reference():
    clips = _world(frames=5, size=20, patch=(1, 5, 5), kinds=("blotch", "tear")).sample(3)
    got = artifact_energy(clips.video, (1, 5, 5), 0.7)
    for n in range(3):
        np.testing.assert_allclose(got[n].numpy(), _reference_energy(clips.video[n, 0].numpy(), (1, 5, 5), 0.7),
                                   rtol=1e-4, atol=1e-7)


def test_teacher_reads_pixels_not_labels():
    world = _world()
    clips = world.sample(8, artifacts=False)
    teacher = Teacher(world.config.patch)
    teacher.calibrate(world.sample(64, stream=1, artifacts=False).video)
    before = teacher.energy(clips.video)
    # plant by hand (no world labels involved): a bright 2x2 blob in one frame of patch (block 1, row 2, col 1)
    video = clips.video.clone()
    video[:, 0, 2, 9:11, 5:7] = 1.0 - video[:, 0, 2, 9:11, 5:7]
    delta = teacher.energy(video) - before
    k = 1 * 16 + 2 * 4 + 1
    assert (delta.argmax(dim=1) == k).all()
    rewards = teacher.patch_rewards(video)
    torch.testing.assert_close(rewards, -torch.log1p(teacher.energy(video) / teacher.threshold))
    torch.testing.assert_close(teacher.video_rewards(video), rewards.mean(dim=1))
    assert torch.equal(teacher.defects(video), teacher.energy(video) > teacher.threshold)
    plain = Teacher(world.config.patch, TeacherConfig(squash="none"), threshold=teacher.threshold)
    torch.testing.assert_close(plain.patch_rewards(video), -teacher.energy(video) / teacher.threshold)


@pytest.fixture(scope="module")
def fashion_world():
    return ArtifactWorld.fashion_mnist("test", WorldConfig(seed=0))


def test_teacher_finds_planted_artifacts_on_fashion_mnist(fashion_world):
    world = fashion_world
    teacher = Teacher(world.config.patch)
    teacher.calibrate(world.sample(300, stream=1, artifacts=False).video)  # clean clips of another stream
    clips = world.sample(300)
    energy = teacher.energy(clips.video).flatten().numpy()
    planted = clips.artifacts.flatten().numpy()
    assert 0.05 < planted.mean() < 0.2
    assert roc_auc_score(planted, energy) > 0.93
    kinds = clips.kinds.flatten().numpy()
    for code, kind in enumerate(KINDS, start=1):
        mask = (kinds == code) | ~planted
        assert roc_auc_score(planted[mask], energy[mask]) > 0.88, kind
    defects = teacher.defects(clips.video).flatten().numpy()
    assert defects[~planted].mean() < 0.05 and defects[planted].mean() > 0.5


def test_patches_follow_the_gran_dpo_grid():
    """The world's and teacher's patch k is Gran-DPO's PatchGrid patch k (same order), and a grid
    that does not divide the clip is refused by both, naming the grid and the clip."""
    from recis_multimodal.halo.gran_dpo import PatchGrid, patch_errors

    grid = PatchGrid(2, 4, 4)
    world = _world(frames=4, size=16, patch=grid.size)
    clips = world.sample(3, artifacts=True)
    masks = grid.masks((4, 16, 16))
    changed = (clips.video != clips.clean)[:, 0]                      # [N, F, H, W]
    for n in range(3):
        for k in range(masks.shape[0]):
            inside = bool((changed[n] & masks[k]).any())
            assert inside <= bool(clips.artifacts[n, k])              # pixels change only in planted patches
    # the teacher's per-patch mean of a map = Gran-DPO's patch error of its square root against 0
    energy_map = temporal_energy(clips.video[:, 0])[:, None]            # [N, 1, F, H, W]
    torch.testing.assert_close(patch_mean(energy_map[:, 0], grid.size),
                               patch_errors(energy_map.sqrt(), torch.zeros_like(energy_map), grid))
    with pytest.raises(ValueError, match=r"does not divide the clip \[F, H, W\] = \(4, 16, 16\)"):
        PatchGrid(3, 4, 4).count((4, 16, 16))
    with pytest.raises(ValueError, match=r"does not divide the clip \[F, H, W\] = \(4, 16, 16\)"):
        WorldConfig(patch=(1, 5, 4))


def test_variants_redraw_only_the_artifacts():
    world = _world()
    a, b = world.sample(6, stream=3, artifacts=True), world.sample(6, stream=3, artifacts=True, variant=1)
    assert torch.equal(a.clean, b.clean) and torch.equal(a.cond, b.cond)
    assert not torch.equal(a.artifacts, b.artifacts)
