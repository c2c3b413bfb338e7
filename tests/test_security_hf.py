"""recis.towers.hf never unpickles weights and never runs code shipped with a model or tokenizer.

Everything is a local directory built here: no download (a path that exists is never looked up
on the Hugging Face hub).
"""
import builtins
import json
import pathlib
import pickle
from pathlib import Path

import pytest

pytest.importorskip("transformers")
import transformers.dynamic_module_utils as dynamic_modules  # noqa: E402

from recis.towers.hf import load_encoder, load_tokenizer  # noqa: E402

TINY = {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 16, "vocab_size": 20}


class Marker:
    """Unpickling this calls Path.touch(marker): code execution, made visible."""

    def __init__(self, path):
        self.path = Path(path)

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def tiny_bert(path: Path, safe: bool) -> Path:
    model, _ = load_encoder({"config": dict(TINY), "seed": 0})
    model.save_pretrained(path, safe_serialization=safe)
    return path


def test_safetensors_weights_load(tmp_path):
    path = tiny_bert(tmp_path / "safe", safe=True)
    model, source = load_encoder(str(path))
    reference, _ = load_encoder({"config": dict(TINY), "seed": 0})
    assert source == str(path)
    for (name, p), (_, q) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert p.equal(q), name


def test_pickle_weights_are_refused(tmp_path):
    path = tiny_bert(tmp_path / "pickled", safe=False)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "pytorch_model.bin"]
    with pytest.raises(FileNotFoundError, match="never loads pickle weights"):
        load_encoder(str(path))


def test_planted_pickle_weights_never_run(tmp_path):
    path = tiny_bert(tmp_path / "planted", safe=False)
    marker = tmp_path / "PWNED"
    (path / "pytorch_model.bin").write_bytes(pickle.dumps(Marker(marker)))
    with pytest.raises(FileNotFoundError):
        load_encoder(str(path))
    assert not marker.exists()


@pytest.fixture
def says_yes(monkeypatch, tmp_path):
    """A user who answers 'y' to transformers' "run the custom code?" prompt; module copies go
    under tmp_path."""
    asked = []

    def answer(prompt=""):
        asked.append(prompt)
        return "y"
    monkeypatch.setattr(builtins, "input", answer)
    monkeypatch.setattr(dynamic_modules, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    return asked


CUSTOM_CODE = """
import pathlib
pathlib.Path({marker!r}).touch()
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast


class XConfig(BertConfig):
    model_type = "x-custom"


class XModel(BertModel):
    config_class = XConfig


class XTokenizer(PreTrainedTokenizerFast):
    pass
"""


def test_code_shipped_with_a_model_never_runs(tmp_path, says_yes):
    path = tmp_path / "custom"
    path.mkdir()
    marker = tmp_path / "PWNED"
    (path / "custom.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    (path / "config.json").write_text(json.dumps({**TINY, "model_type": "x-custom", "auto_map": {
        "AutoConfig": "custom.XConfig", "AutoModel": "custom.XModel"}}))
    with pytest.raises(ValueError, match="custom code"):
        load_encoder(str(path))
    assert not marker.exists() and says_yes == []  # not run, and nobody was asked


def test_code_shipped_with_a_tokenizer_never_runs(tmp_path, says_yes):
    path = tmp_path / "custom_tok"
    load_tokenizer({"vocab": ["red", "shoes"]}).save_pretrained(path)
    marker = tmp_path / "PWNED"
    (path / "custom.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="XTokenizer", auto_map={"AutoTokenizer": [None, "custom.XTokenizer"]})
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="custom code"):
        load_tokenizer(str(path))
    assert not marker.exists() and says_yes == []  # not run, and nobody was asked
