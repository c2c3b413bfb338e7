"""The frozen models of the PUMGPT example: the catalogue LM (pre-trained on the templates' text,
saved with its word tokenizer, reloaded by the core's causal-LM loader) and the SimMIM ViT
(pre-trained without labels, reloaded identically by build_vision); the example YAML's options."""
import os

import numpy as np
import pytest
import torch

from recis.towers.causal_lm import load_causal_lm, load_lm_tokenizer

from recis_multimodal.pumgpt.catalogue import build_catalogue_lm, catalogue_corpus, catalogue_tokenizer
from recis_multimodal.pumgpt.model import build_vision
from recis_multimodal.pumgpt.templates import CATEGORIES
from recis_multimodal.pumgpt.tower_config import PUMGPTTowerConfig
from recis_multimodal.pumgpt.vision_pretrain import build_vision_dir, patch_mask

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TINY_LM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1}
TINY_VIT = {"patch_size": 7, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32, "encoder_stride": 7}


def rows(n=40):
    return [{"item_id": i, "category": CATEGORIES[i % 10], "shade": "dark", "coverage_band": "low", "width": 9,
             "height": 20, "width_band": "narrow", "height_band": "tall", "symmetry": 0.5, "texture": "plain"}
            for i in range(n)]


@pytest.mark.slow
def test_the_catalogue_lm_learns_the_corpus_and_reloads_with_its_tokenizer(tmp_path):
    logs = []
    out = build_catalogue_lm(str(tmp_path / "lm"), rows(), config=TINY_LM, steps=30, batch_size=16, lr=0.01,
                             log=logs.append, log_every=10)
    model, source = load_causal_lm(out)
    tok = load_lm_tokenizer(out)
    assert source == out and type(model).__name__ == "LlamaForCausalLM"
    settings = __import__("json").loads((tmp_path / "lm" / "settings.json").read_text())
    assert settings["loss_history"][-1] < settings["loss_history"][0]
    prompt, answer = catalogue_corpus(rows(1))[0]
    assert tok(prompt + " " + answer)["input_ids"] == catalogue_tokenizer()(prompt + " " + answer)["input_ids"]
    assert tok.padding_side == "left" and tok.eos_token == "<eos>"
    assert not [n for n in os.listdir(out) if n.endswith((".bin", ".pt", ".pkl"))]  # safetensors only
    stamp = os.path.getmtime(os.path.join(out, "model.safetensors"))
    assert build_catalogue_lm(str(tmp_path / "lm"), rows(), config=TINY_LM, steps=30, batch_size=16, lr=0.01,
                              log=logs.append, log_every=10) == out
    assert os.path.getmtime(os.path.join(out, "model.safetensors")) == stamp and "reusing" in logs[-1]


@pytest.mark.slow
def test_simmim_pretraining_lowers_the_masked_pixel_error_and_reloads_identically(tmp_path):
    rng = np.random.default_rng(0)
    images = np.zeros((64, 28, 28), np.uint8)
    for i, img in enumerate(images):  # bars: the masked pixels are predictable from the visible ones
        r = rng.integers(0, 20)
        img[r:r + 6, 3:25] = 200
    out = build_vision_dir(str(tmp_path / "vit"), images, config=TINY_VIT, steps=60, batch_size=16, lr=0.01,
                           log=lambda *_: None, log_every=20)
    settings = __import__("json").loads((tmp_path / "vit" / "settings.json").read_text())
    assert settings["loss_history"][-1] < settings["loss_history"][0]
    a, b = build_vision(out), build_vision(out)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # no random init on load
    x = torch.randn(2, 1, 28, 28)
    assert a(x).shape == (2, 17, 16)  # 16 patches and the CLS token
    mask = patch_mask(3, 16, 0.5, torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [8, 8, 8]


def test_the_example_yaml_and_its_job_config():
    from recis.run import RunConfig

    from recis_multimodal.pumgpt.fashion import job_config

    path = os.path.join(ROOT, "examples", "pumgpt_fashion.yaml")
    cfg = RunConfig.from_yaml(path)
    assert cfg.model.name == "pumgpt" and cfg.data.dataset == "fashion_mnist"
    model = PUMGPTTowerConfig.from_options(cfg.model.args)
    assert model.variant == "pumgpt" and model.pumgpt.num_visual_tokens == 8 and len(model.tasks) == 5
    job = job_config(path, "/data/train.parquet", None, "/runs/x", model={"variant": "prefix", "pumgpt": {
        "adapter_every": 2}}, trainer={"max_steps": 7}, optim={"dense": {"lr": 0.5}})
    assert job.data.dataset is None and job.data.train == "/data/train.parquet"
    assert job.model.args["variant"] == "prefix" and job.model.args["pumgpt"]["adapter_every"] == 2
    assert job.model.args["pumgpt"]["num_visual_tokens"] == 8 and job.trainer.max_steps == 7
    assert job.optim.dense["lr"] == 0.5 and job.checkpoint.dir == "/runs/x/checkpoints"
    from recis.run.job import feature_config

    names = [f["name"] for f in feature_config(job)["features"]]  # the dataset's features, read from the files
    assert names[:3] == ["image", "label", "item_id"] and "texture" in names
    with pytest.raises(ValueError, match=r"model.variant must be one of"):
        PUMGPTTowerConfig.from_options({**cfg.model.args, "variant": "llava"})
