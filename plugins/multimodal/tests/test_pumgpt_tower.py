"""The PUMGPT tower in YAML jobs (recis.run) on a tiny synthetic catalogue of PNG images: it
trains and evaluates (category accuracy through the confusion metric), a job killed mid-run
resumes bit-identically on the CPU, checkpoints hold the frozen LM's reference and checksum but
none of its weights, a second task trained on a first task's checkpoint leaves the first task's
adapters and the projector bit-identical, and a missing image feature or column is named."""
import io
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from recis.run import Job, RunConfig
from recis.testing import KillAt, Killed

from recis_multimodal.pumgpt.templates import CATEGORIES
from recis_multimodal.pumgpt.tower import MissingImageError, PUMGPTTower

LM = {"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                 "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128}, "seed": 0}
VIT = {"model_type": "vit", "image_size": 28, "patch_size": 7, "num_channels": 1, "hidden_size": 16,
       "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "seed": 0}
META = ("item_id", "category", "shade", "coverage_band", "width", "height", "width_band", "height_band",
        "symmetry", "texture")


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def catalogue(n: int, first: int, seed: int) -> pa.Table:
    """n products: a bright bar whose row is the class, metadata drawn per product."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(rng.integers(10))
        img = (rng.random((28, 28)) * 40).astype(np.uint8)
        img[2 + 2 * label:4 + 2 * label, 4:24] = 220
        rows.append({"item_id": first + i, "image": png(img), "label": label, "category": CATEGORIES[label],
                     "shade": ["dark", "medium", "light"][i % 3], "coverage_band": ["low", "high"][i % 2],
                     "width": int(rng.integers(10, 28)), "height": 2, "width_band": "wide",
                     "height_band": "short", "symmetry": float(rng.random()), "texture": ["plain", "patterned"][i % 2]})
    return pa.Table.from_pylist(rows)


FEATURES = [{"name": "image", "kind": "image", "column": "image",
             "image": {"channels": 1, "size": [28, 28], "mean": [0.2860], "std": [0.3530]}},
            {"name": "label", "kind": "label", "column": "label"}] + \
    [{"name": c, "kind": "passthrough", "column": c} for c in META]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pumgpt_jobs")
    pq.write_table(catalogue(48, 0, 0), d / "train.parquet")
    pq.write_table(catalogue(20, 1000, 1), d / "valid.parquet")
    return d


def config(workdir, name, steps=6, init_from=None, features=FEATURES, **model):
    options = {"lm": LM, "vision": VIT, "tokenizer": "catalogue", "tasks": ["category", "attributes"],
               "open_domain": 0.25, "seed": 5, "pumgpt": {"num_visual_tokens": 4, "adapter_heads": 2,
                                                         "projector_heads": 2}, **model}
    return {
        "data": {"train": "train.parquet", "eval": "valid.parquet", "batch_size": 8, "eval_batch_size": 20,
                 "shuffle_buffer": 48, "seed": 0},
        "features": {"features": features},
        "model": {"name": "pumgpt", **options},
        "metrics": {"confusion": {"labels": list(range(10))}, "tower": {}},
        "optim": {"dense": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0}},
        "trainer": {"epochs": 100, "max_steps": steps, "progress": False, "seed": 0, "log_every": 1,
                    "eval_every": None},
        "checkpoint": {"dir": str(workdir / name), "every": 2, "keep_last": 20, "init_from": init_from},
    }


def job(workdir, name, **kw) -> Job:
    return Job(RunConfig.from_dict(config(workdir, name, **kw), str(workdir)))


def state(j: Job):
    return {k: v.clone() for k, v in j.model.state_dict().items() if isinstance(v, torch.Tensor)}


@pytest.mark.slow
def test_a_yaml_job_trains_evaluates_and_resumes_bit_identically_without_saving_the_lm(workdir):
    path = workdir / "job.yaml"
    path.write_text(yaml.safe_dump(config(workdir, "full")))
    full = Job(RunConfig.from_yaml(str(path)))
    start = state(full)
    result = full.train()
    assert full.trainer.step == 6 and 0.0 <= result["accuracy"] <= 1.0 and result["examples"] == 20
    # the confusion matrix's accuracy (from `predicted`) is the tower metric's mean category_correct
    assert result["category_correct"] == pytest.approx(result["accuracy"], abs=1e-6)
    assert 0.0 <= result["attributes_exact"] <= 1.0
    tower = full.model
    assert isinstance(tower, PUMGPTTower)
    moved = [k for k, v in state(full).items() if not torch.equal(v, start[k])]
    assert moved and all(".adapters." in k or ".projector." in k for k in moved)

    # the checkpoint: trainable tensors only, the frozen LM and ViT by reference and checksum
    last = full.trainer.checkpoint.latest().path
    saved = load_file(str(last / "dense.safetensors"))
    assert saved and not [k for k in saved if ".lm." in k or ".vision.model." in k]
    lm_params = {n for n, _ in tower.named_parameters() if n.startswith("net.lm.")}
    assert lm_params and not lm_params & set(saved)
    ref = tower.base_reference()
    assert set(ref) == {"lm", "vision"} and ref["lm"]["source"] == "random:llama:2:32:seed0"
    text = (last / "state.json").read_text()
    assert ref["lm"]["sha256"] in text and ref["vision"]["sha256"] in text

    # killed after step 3 (checkpoint at 2), resumed by a new job: the same parameters
    cut = job(workdir, "cut")
    cut.trainer.hooks.append(KillAt(3))
    with pytest.raises(Killed):
        cut.train()
    resumed = job(workdir, "cut")
    resumed.train()
    assert resumed.trainer.step == 6
    a, b = state(full), state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(full.model.generator.get_state(), resumed.model.generator.get_state())
    oa, ob = full.dense_optimizer.state_dict()["state"], resumed.dense_optimizer.state_dict()["state"]
    assert all(torch.equal(torch.as_tensor(oa[k][s]), torch.as_tensor(ob[k][s])) for k in oa for s in oa[k])


@pytest.mark.slow
def test_a_second_task_trains_new_adapters_and_leaves_the_first_bit_identical(workdir):
    first = job(workdir, "task1", steps=4, tasks=["category"])
    first.train()
    before = state(first)
    second = job(workdir, "task2", steps=4, tasks=["attributes"], task="attributes", earlier_tasks=["category"],
                 init_from=str(workdir / "task1"))
    loaded = state(second)
    for k, v in before.items():
        assert torch.equal(loaded[k], v), k  # started from task 1's weights
    new = [k for k in loaded if k not in before]
    assert new and all(".adapters." in k for k in new)
    second.train()
    after = state(second)
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed while training task 2"
    assert any(not torch.equal(after[k], loaded[k]) for k in new)
    trainable = {id(p) for g in second.model.optimizer_groups() for p in g["params"]}
    names = [n for n, p in second.model.named_parameters() if id(p) in trainable]
    assert names and all(n in new for n in names)


def test_baselines_build_with_equal_trainable_parameters():
    opts = {"lm": LM, "vision": VIT, "pumgpt": {"num_visual_tokens": 4, "adapter_heads": 2, "projector_heads": 2}}
    pumgpt = PUMGPTTower(**opts)
    prefix = PUMGPTTower(variant="prefix", **opts)
    text = PUMGPTTower(variant="text_only", **opts)
    n = pumgpt.trainable_share()[0]
    assert abs(prefix.trainable_share()[0] - n) <= 0.02 * n
    assert [g.kind for g in prefix.param_groups()] == ["frozen", "frozen", "dense"]
    assert [(g.name, g.kind) for g in text.param_groups()] == [("lm", "dense")]
    # the same LM weights under every variant (the frozen LM is the one the text-only LM starts from)
    for (n1, p1), (n2, p2) in zip(pumgpt.net.lm.named_parameters(), text.net.lm.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_a_missing_image_feature_or_column_is_named(workdir):
    no_image = [f for f in FEATURES if f["name"] != "image"]
    with pytest.raises(MissingImageError, match=r"image feature 'image' \(model.image_feature\).*\[\]"):
        job(workdir, "noimg", features=no_image)
    with pytest.raises(MissingImageError, match=r"image feature 'photo'"):
        job(workdir, "photo", image_feature="photo")
    table = pq.read_table(workdir / "train.parquet").drop(["image"])
    pq.write_table(table, workdir / "noimage.parquet")
    cfg = config(workdir, "nocol")
    cfg["data"]["train"] = "noimage.parquet"
    with pytest.raises(Exception, match=r"column 'image' \(read by feature 'image'\) is not in the record batch"):
        Job(RunConfig.from_dict(cfg, str(workdir))).train()
    with pytest.raises(ValueError, match=r"product id column 'item_id'"):
        job(workdir, "noid", features=[f for f in FEATURES if f["name"] != "item_id"])
    with pytest.raises(ValueError, match=r"unknown model option\(s\) \['vison'\]"):
        job(workdir, "typo", vison=VIT)
