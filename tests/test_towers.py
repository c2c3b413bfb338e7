"""The tower mount point: entry-point discovery, declared parameter groups, TowerOutput in the
Trainer, what checkpoints hold, and errors that name the problem."""
import sys
from types import SimpleNamespace

import pyarrow as pa
import pytest
import torch

from recis.checkpoint import CheckpointManager
from recis.towers import (BaseModelMismatchError, MissingTextColumnError, Tower, TowerNotFoundError, TowerOutput,
                          available_towers, load_tower, text_column)
from recis.train import Trainer, TrainerConfig


class Toy(Tower):
    """Frozen base + trained head over the length of a text column."""

    def __init__(self, base_seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(base_seed)
        self.base = torch.nn.Linear(1, 4)
        with torch.no_grad():
            self.base.weight.copy_(torch.randn(4, 1, generator=g))
            self.base.bias.copy_(torch.randn(4, generator=g))
        self.head = torch.nn.Linear(4, 1)
        self.declare("base", self.base, "frozen", source=f"toy-seed{base_seed}")
        self.declare("head", self.head, "dense", lr=0.05)

    def forward(self, batch):
        x = torch.tensor([[len(s) / 10.0] for s in text_column(batch, "text")])
        logits = self.head(torch.tanh(self.base(x))).squeeze(1)
        return TowerOutput(logits, outputs={"x": x})


def batches(n=8):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        lens = torch.randint(1, 20, (16,), generator=g)
        out.append(SimpleNamespace(extras={"text": pa.array(["a" * int(k) for k in lens])},
                                   labels=(lens > 10).float(), size=16))
    return out


def test_entry_point_discovery_from_installed_metadata(tmp_path, monkeypatch):
    info = tmp_path / "toyplugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[recis.towers]\ntoy = test_towers:Toy\nbroken = no_such_module:X\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert available_towers()["toy"] == "test_towers:Toy"
    assert load_tower("toy").__name__ == "Toy"
    with pytest.raises(ImportError, match="tower 'broken'"):
        load_tower("broken")
    with pytest.raises(TowerNotFoundError, match=r"'toyy' is not installed; installed towers .*'broken', .*'toy'"):
        load_tower("toyy")


def test_a_tower_trains_in_the_trainer_and_checkpoints_only_what_trains(tmp_path):
    torch.manual_seed(0)
    tower = Toy()
    base = tower.base.weight.detach().clone()
    opt = torch.optim.SGD(tower.optimizer_groups(lr=1.0), lr=1.0)
    assert [g["lr"] for g in opt.param_groups] == [0.05]
    trainer = Trainer(tower, None, opt, config=TrainerConfig(epochs=3, progress=False),
                      checkpoint=CheckpointManager(tmp_path))
    data = batches()
    first = trainer.evaluate(data)["loss"]
    trainer.fit(data)
    assert trainer.evaluate(data)["loss"] < first and torch.equal(tower.base.weight, base)
    assert trainer.predict(data).shape == (128,)
    trainer.save_checkpoint()
    assert sorted(tower.state_dict()) == ["_extra_state", "head.bias", "head.weight"]
    fresh = Toy()
    Trainer(fresh, None, None, checkpoint=CheckpointManager(tmp_path)).resume()
    assert torch.equal(fresh.head.weight, tower.head.weight)
    with pytest.raises(Exception, match="toy-seed0"):
        CheckpointManager(tmp_path).load("latest", model=Toy(base_seed=1))


def test_declaration_errors_name_the_group():
    t = Toy()
    with pytest.raises(ValueError, match="group 'head' is declared twice"):
        t.declare("head", torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="shares parameters with group 'base'"):
        t.declare("again", t.base)
    with pytest.raises(ValueError, match="kind must be one of"):
        t.declare("x", torch.nn.Linear(1, 1), "lora")
    with pytest.raises(ValueError, match="no adapter parameters"):
        t.declare("y", torch.nn.Linear(1, 1), "adapter")
    with pytest.raises(ValueError, match=r"optim.groups names \['hed'\]"):
        t.optimizer_groups(overrides={"hed": {"lr": 1.0}})
    with pytest.raises(MissingTextColumnError, match="text column 'text' is not in the batch"):
        t(SimpleNamespace(extras={"title": pa.array(["x"])}))
    with pytest.raises(TypeError, match="text column 'text', row 1"):
        t(SimpleNamespace(extras={"text": pa.array(["x", None])}))
