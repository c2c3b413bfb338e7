"""export_for_serving / load_for_serving: tables without optimizer state, float32 exact or
float16 / bfloat16, loadable into a fresh model for inference."""
import json

import pytest
import torch
from safetensors.torch import load_file

from recis.checkpoint import IncompatibleCheckpointError, NonFiniteStateError, export_for_serving, load_for_serving
from test_checkpoint_common import TinyCTR, make_batch, make_training, train_step


@pytest.fixture(scope="module")
def trained():
    model, opts = make_training()
    for s in range(6):
        train_step(model, opts, s)
    return model.eval()


def predict(model, seeds=(0, 3, 50, 51)):  # batches 50, 51 hold ids the tables never saw
    model.eval()
    with torch.no_grad():
        return torch.cat([model(make_batch(s)[0]) for s in seeds])


def test_float32_export_serves_the_same_predictions(trained, tmp_path):
    path = export_for_serving(trained, tmp_path / "serve")
    files = sorted(p.name for p in path.iterdir())
    assert files == ["dense.safetensors", "manifest.json", "tables.safetensors"]
    tables = load_file(str(path / "tables.safetensors"))
    assert set(tables) == {f"ec.{t}.{k}" for t in ("user", "item", "cate") for k in ("ids", "rows")}  # no slots
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "recis.serving" and manifest["dtype"] == "float32"
    assert manifest["tables"]["ec.user"]["slot_kind"] is None
    server = TinyCTR()  # no optimizer: inference only
    load_for_serving(path, server)
    assert torch.equal(predict(server), predict(trained))
    for name, table in trained.ec.tables().items():
        ids = table.export()["ids"]
        assert torch.equal(server.ec.tables()[name].lookup(ids), table.lookup(ids))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_export_rounds_rows_once(trained, tmp_path, dtype):
    path = export_for_serving(trained, tmp_path / "serve", dtype=dtype)
    tables = load_file(str(path / "tables.safetensors"))
    assert tables["ec.user.rows"].dtype == dtype
    server = TinyCTR()
    load_for_serving(path, server)
    for name, table in trained.ec.tables().items():
        ids = table.export()["ids"]
        expected = table.lookup(ids).to(dtype).to(torch.float32)
        assert torch.equal(server.ec.tables()[name].lookup(ids), expected)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    assert torch.allclose(predict(server), predict(trained), atol=tol)


def test_export_refuses_overflow_and_nan(tmp_path):
    model, _ = make_training()
    items = model.ec.tables()["item"]
    items.load({"ids": torch.tensor([9]), "rows": torch.tensor([[1e6, 0.0, 0.0, 0.0]])})
    with pytest.raises(ValueError, match=r"table 'ec.item' has 1 values beyond the range of torch.float16 \(largest "
                                         r"\|value\| 1000000.0\)"):
        export_for_serving(model, tmp_path / "a", dtype=torch.float16)
    export_for_serving(model, tmp_path / "b", dtype=torch.bfloat16)
    items.load({"ids": torch.tensor([9]), "rows": torch.tensor([[float("nan"), 0.0, 0.0, 0.0]])})
    with pytest.raises(NonFiniteStateError, match="ec.item.rows"):
        export_for_serving(model, tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    with pytest.raises(TypeError, match="dtype must be one of"):
        export_for_serving(model, tmp_path / "d", dtype=torch.int8)


def test_serving_load_refuses_another_table_config(trained, tmp_path):
    path = export_for_serving(trained, tmp_path / "serve")
    with pytest.raises(IncompatibleCheckpointError, match="embedding_dim is 8 in the checkpoint but 16 in the model"):
        load_for_serving(path, TinyCTR(user_dim=16))


def test_tables_only_export_leaves_dense_layers_alone(trained, tmp_path):
    path = export_for_serving(trained, tmp_path / "serve", include_dense=False)
    assert not (path / "dense.safetensors").exists()
    server = TinyCTR()
    before = server.mlp[0].weight.clone()
    load_for_serving(path, server)
    assert torch.equal(server.mlp[0].weight, before)
    ids = trained.ec.tables()["item"].export()["ids"]
    assert torch.equal(server.ec.tables()["item"].lookup(ids), trained.ec.tables()["item"].lookup(ids))
