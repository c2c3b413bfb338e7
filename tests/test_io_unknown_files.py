"""Files whose name says no format (a README, notes.txt, meta.json in a data directory): with
on_error="skip" the static and streaming datasets read the data files and skip those, each
counted with its reason; with on_error="raise" the error names the file; a job takes
data.on_error."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from recis.cli import main
from recis.io import ArrowDataset, StreamingArrowDataset, UnknownFormatError

EXTRAS = ("README", "notes.txt", "meta.json")


def _data_dir(root, extras=EXTRAS):
    root.mkdir(exist_ok=True)
    pq.write_table(pa.table({"id": list(range(0, 7))}), root / "part-0.parquet")
    pq.write_table(pa.table({"id": list(range(7, 12))}), root / "part-1.parquet")
    for name in extras:
        (root / name).write_text("not data\n")
    return root


def _ids(batches):
    return sorted(i for b in batches for i in b["id"].to_pylist())


def test_static_dataset_skips_files_of_unknown_format(tmp_path):
    root = _data_dir(tmp_path / "data")
    data = ArrowDataset(str(root), batch_size=5, on_error="skip")
    assert _ids(data) == list(range(12))
    assert data.files == [str(root / "part-0.parquet"), str(root / "part-1.parquet")]
    assert data.stats.files_skipped == 3
    assert sorted(data.stats.skipped) == sorted(str(root / n) for n in EXTRAS)
    for name in EXTRAS:
        assert f"cannot infer the format of '{root / name}' from its name" in data.stats.skipped[str(root / name)]


def test_static_dataset_raises_naming_the_file(tmp_path):
    root = _data_dir(tmp_path / "data")
    with pytest.raises(UnknownFormatError, match=r"cannot infer the format of '.*/README' from its name") as err:
        ArrowDataset(str(root), batch_size=5)
    assert err.value.path == str(root / "README")
    assert isinstance(err.value, ValueError)


def test_a_directory_without_any_data_file_is_an_error_even_when_skipping(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "README").write_text("x")
    with pytest.raises(ValueError, match="no file in .* has a name that says its format"):
        ArrowDataset(str(root), on_error="skip")


def test_a_given_format_reads_every_file_and_skips_the_unreadable(tmp_path):
    root = _data_dir(tmp_path / "data", extras=("README",))
    data = ArrowDataset(str(root), format="parquet", batch_size=5, on_error="skip")
    assert _ids(data) == list(range(12))
    assert list(data.stats.skipped) == [str(root / "README")]


def test_streaming_dataset_skips_files_of_unknown_format(tmp_path):
    root = _data_dir(tmp_path / "data")
    data = StreamingArrowDataset(str(root), batch_size=5, on_error="skip", stop_after_idle=0.5, poll_interval=0.02,
                                 settle_s=0.05)
    assert _ids(data) == list(range(12))
    assert sorted(data.stats.skipped) == sorted(str(root / n) for n in EXTRAS)
    assert data.stats.files_skipped == 3 and data.stats.files_read == 2


def test_streaming_dataset_raises_naming_the_file(tmp_path):
    root = _data_dir(tmp_path / "data", extras=("README",))
    data = StreamingArrowDataset(str(root), batch_size=5, stop_after_idle=0.5, poll_interval=0.02, settle_s=0.05)
    with pytest.raises(UnknownFormatError, match=r"cannot infer the format of '.*/README'"):
        list(data)


def test_job_on_error_skip(tmp_path):
    root = _data_dir(tmp_path / "data", extras=("README.md",))
    table = pa.table({"id": list(range(64)), "label": [float(i % 2) for i in range(64)]})
    pq.write_table(table, root / "part-0.parquet")
    pq.write_table(table, root / "part-1.parquet")
    job = {"data": {"train": "data", "batch_size": 16, "on_error": "skip"},
           "features": {"features": [{"name": "id", "kind": "sparse", "column": "id", "ops": ["hash"]},
                                     {"name": "label", "kind": "label", "column": "label"}]},
           "model": {"name": "deepfm", "embedding_dim": 4, "hidden": [8]},
           "trainer": {"progress": False}}
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job))
    assert main(["train", str(config), "--json", str(tmp_path / "result.json")]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["train_examples"] == 128 and result["files_skipped"] == 1
    job["data"]["on_error"] = "ignore"
    config.write_text(yaml.safe_dump(job))
    with pytest.raises(ValueError, match=r"data.on_error must be one of \('raise', 'skip'\), got 'ignore'"):
        main(["train", str(config)])
