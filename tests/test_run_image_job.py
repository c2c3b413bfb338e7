"""A YAML job whose tower reads pixels: FeatureInfo.tensors reaches the tower, batches carry
batch.tensors, a corrupt image is skipped per data.on_error, and evaluation is not augmented."""
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from PIL import Image

from recis.run import Job, RunConfig
from recis.towers import Tower, TowerOutput, register_tower, unregister_tower


def _png(pixels) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _write(path, n, seed, bad=()):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    images = []
    for i in range(n):  # the label is the brightness of the left half
        px = rng.integers(0, 60, (6, 6), dtype=np.uint8)
        px[:, :3] += np.uint8(150 * label[i])
        images.append(b"broken" if i in bad else _png(px))
    pq.write_table(pa.table({"id": np.arange(n), "image": pa.array(images, pa.binary()),
                             "label": label.astype(np.float32)}), path)


class PixelTower(Tower):
    seen = []

    def __init__(self, image: str, pixels: int):
        super().__init__()
        self.image = image
        self.head = torch.nn.Linear(pixels, 1)

    @classmethod
    def from_features(cls, features, **args):
        cls.seen.append(("features", tuple(features.tensors)))
        return cls(features.tensors[0], **args)

    def forward(self, batch):
        x = batch.tensors[self.image]
        if not self.training:
            self.seen.append(("eval", batch.extras["id"].to_pylist(), x.clone()))
        return TowerOutput(logits=self.head(x.flatten(1)).squeeze(1))


def test_a_yaml_job_trains_a_tower_on_pixels(tmp_path):
    _write(tmp_path / "train.parquet", 96, 0, bad={5, 50})
    _write(tmp_path / "test.parquet", 32, 1)
    job = {
        "data": {"train": "train.parquet", "eval": "test.parquet", "batch_size": 16, "shuffle_buffer": 32,
                 "on_error": "skip"},
        "features": {"features": [
            {"name": "image", "kind": "image", "column": "image",
             "image": {"channels": 1, "size": [6, 6], "augment": {"hflip": 0.5, "crop_padding": 1, "seed": 1}}},
            {"name": "id", "kind": "passthrough", "column": "id"},
            {"name": "label", "kind": "label", "column": "label"}]},
        "model": {"name": "pixel_test_tower", "pixels": 36},
        "optim": {"dense": {"name": "adam", "lr": 0.05}},
        "trainer": {"epochs": 3, "progress": False, "seed": 0},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    register_tower("pixel_test_tower", PixelTower)
    PixelTower.seen.clear()
    try:
        built = Job(RunConfig.from_yaml(str(tmp_path / "job.yaml")))
        result = built.train()
    finally:
        unregister_tower("pixel_test_tower")
    assert PixelTower.seen[0] == ("features", ("image",))
    stats = built.train_data.stats  # 3 epochs, 2 bad rows each
    assert stats.rows_skipped == 6 and stats.rows == 3 * 94 and len(stats.skipped_rows) == 2
    assert result["auc"] > 0.9
    table = pq.read_table(tmp_path / "test.parquet").to_pydict()
    evals = [s for s in PixelTower.seen if s[0] == "eval"]
    assert sum(len(ids) for _, ids, _ in evals) >= 32
    for _, ids, x in evals:  # evaluation reads plain pixels: no flips, no crops
        for k, i in enumerate(ids):
            ref = np.asarray(Image.open(io.BytesIO(table["image"][i])), dtype=np.float32) / 255
            assert torch.equal(x[k, 0], torch.from_numpy(ref))
