"""The HALO experiment pipeline (examples/halo_artifacts.py, benchmarks/halo.py) at tiny sizes."""
import pytest
import torch

from recis_multimodal.halo.experiment import MODELS, ExperimentConfig, run, table


@pytest.mark.slow
def test_the_pipeline_runs_jobs_and_reports_every_model(tmp_path):
    cfg = ExperimentConfig(rm_clips=60, rm_heldout=30, rm_steps=3, patch_rm_steps=3, sft_clips=40, sft_steps=3,
                           pairs_per_class=2, dpo_steps=2, gran_steps=2, eval_per_class=1, delta=0.0, rm_width=4, width=4)
    threads = torch.get_num_threads()
    out = run(cfg, tmp_path, log=lambda s: None)  # Fashion-MNIST comes from the Debian mirror, as in CI
    for m in MODELS:
        r = out["models"][m]
        assert 0 <= r["patch_defect_rate"] <= 1 and r["teacher_video_reward"] <= 0
    assert out["models"]["pretrained"]["content"] == 1.0
    assert out["models"]["gran_dpo"]["patch_mask_share"] == 1.0      # delta = 0: every patch counts
    assert out["models"]["gran_dpo"] != out["models"]["diffusion_dpo"]
    assert {"w1_rel", "patch_spearman"} <= set(out["patch_rm_mu3"]) and "patch_rm_mu0" in out
    assert (tmp_path / "pairs.parquet").exists() and (tmp_path / "sft").is_dir()
    assert table(out["models"]).count("\n") == 4
    with pytest.raises(ValueError, match=r"does not divide the clip"):
        ExperimentConfig(patch=(3, 4, 4))
    assert torch.get_num_threads() == threads  # run() restores the thread count it set
