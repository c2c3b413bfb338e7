"""benchmarks/relevance_llm.py: the method registry (shared stages in dependency order, skipped
methods with a reason), the encoders' with-context input, the per-slice summary and the targets,
and (slow, with the MovieLens cache) a --tiny run end to end."""
import json
import os
import sys

import pyarrow as pa
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "plugins", "relevance", "tests"))

import relevance_testing  # noqa: E402,F401 (makes the plugin importable)
import relevance_llm as bench  # noqa: E402
import relevance_methods as rm  # noqa: E402


def test_stages_are_shared_and_ordered():
    order = [s.name for s in rm.stages_of([rm.METHODS["dyknow_dpo"], rm.METHODS["taosr1"], rm.METHODS["grpo"]])]
    assert sorted(order) == sorted(set(order))  # each stage once
    for name in order:  # every stage after what it starts from and what it trains on
        st = rm.STAGES[name]
        for dep in (st.init_from, None if st.train == "train" else st.train):
            assert dep is None or order.index(dep) < order.index(name)
    assert set(order) == {"sft", "dpo", "pool", "dyknow_dpo", "taosr1", "grpo"}
    # every judge starts from the one SFT stage of the seed
    for m in rm.METHODS.values():
        if m.kind == "judge":
            assert m.stages[0] == "sft" and rm.STAGES[m.stages[-1]].name == m.stages[-1]


def test_a_method_without_its_code_is_skipped_with_the_reason(monkeypatch):
    assert rm.method_missing(rm.METHODS["sft"]) is None
    monkeypatch.setitem(rm.STAGES, "x", rm.Stage("x", "nowhere/x.yaml", "sft", objective="grpo"))
    why = rm.method_missing(rm.Method("x", "X", ("sft", "x")))
    assert why == "stage x: examples/nowhere/x.yaml is not in this checkout"
    monkeypatch.setitem(rm.STAGES, "y", rm.Stage("y", "taosr1_movielens/grpo.yaml", "sft", objective="nope"))
    assert "model.objective 'nope' is not in this checkout" in rm.method_missing(rm.Method("y", "Y", ("sft", "y")))


def test_every_stage_gets_the_same_model_and_the_same_post_sft_budget():
    s = bench.Settings()
    over = {n: rm.stage_overrides(st, s, seed=1) for n, st in rm.STAGES.items() if st.kind == "job"}
    for o in over.values():
        m = o["model"]
        assert (m["prompt"], m["format"], m["policy"]["seed"]) == ("with_context", "post_cot_context", 1)
        assert m["policy"]["config"] == over["sft"]["model"]["policy"]["config"]
    for name, o in over.items():
        if name != "sft":
            assert o["model"]["sampling"]["group_size"] == s.group_size
    for m in rm.METHODS.values():  # every method's post-SFT stages add up to one stage budget per RL/DPO stage
        steps = [over[n]["trainer"]["max_steps"] for n in m.stages if n in over and n != "sft"]
        if m.key in ("grpo", "agrl", "she", "dyknow_sft"):
            assert sum(steps) == s.stage_steps, m.key
    assert over["sft"]["trainer"]["epochs"] == s.sft_epochs and "max_steps" not in over["sft"]["trainer"]
    assert over["taosr1"]["model"]["dynamic_sampling"] is not None and over["grpo"]["model"]["dynamic_sampling"] is None


def test_encoders_read_the_title_and_the_chunk():
    from relevance_testing import synthetic_items

    from recis_relevance.retrieval import ContextConfig
    from recis_relevance.task import build_task

    items = synthetic_items()
    items = items.append_column("ratings", pa.array([1] * items.num_rows, pa.int64()))
    t = build_task(items, queries=10, per_query=8, seed=0, context=ContextConfig(noise=0.5)).train
    out = rm.encoder_table(t, items, "context")
    genres = dict(zip(items["item_id"].to_pylist(), items["genres"].to_pylist()))
    for r, o in zip(t.to_pylist(), out.to_pylist()):
        assert o["item_text"] == f"{r['title']} | {r['chunk']}"
        assert sorted(e[len("genre: "):] for e in o["entities"] if e.startswith("genre: ")) == \
            sorted(genres[r["chunk_item"]])  # a noisy chunk's genres, not the item's
        assert f"year: {r['year']}" in o["entities"]
    assert rm.encoder_table(t, items, "full").equals(t)


def _row(f1):
    sl = {k: f1 for k in bench.KEYS + ("items",)}
    return {**{s: dict(sl) for s in bench.SLICE_ORDER}, "train_seconds": 10 * f1}


def test_summary_is_mean_min_max_over_seeds_and_targets_read_the_slices():
    per_seed = [{"_stages": {}, "grpo": _row(0.2), "dyknow_sft": _row(0.5), "dyknow_sft@no_context": _row(0.4)},
                {"_stages": {}, "grpo": _row(0.4), "dyknow_sft": _row(0.3), "dyknow_sft@no_context": _row(0.4)}]
    table = bench.summarize(per_seed)
    assert table["grpo"]["noisy"]["macro_f1"] == {"mean": pytest.approx(0.3), "min": 0.2, "max": 0.4}
    assert table["dyknow_sft"]["train_seconds"]["mean"] == pytest.approx(4.0)
    t = bench.targets(table)
    assert t["DyKnow > GRPO (with context) on the noisy slice"] is True  # 0.4 > 0.3
    assert t["DyKnow with context >= without"] is True and t["AGRL >= GRPO (macro-F1)"] is None
    text = bench.markdown(table, [0, 1])
    assert "| DyKnow (SFT base), no chunk at inference | 0.400 (0.400..0.400)" in text
    assert "| GRPO (with context, SFT base) | 0.300 (0.200..0.400)" in text


@pytest.mark.slow  # every method's stages, tiny, on a small task of the real catalogue (~1-2 min)
def test_tiny_run_end_to_end(tmp_path, capsys):
    # the real catalogue: recis.datasets.movielens fetches it on first use, as every MovieLens job does
    path = tmp_path / "r.json"
    assert bench.main(["--tiny", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    runs = {k for k in rm.METHODS if k not in report["skipped"]}
    assert {"sft", "dpo", "grpo", "taosr1"} <= runs  # the TaoSR1 example is always here
    assert set(report["table"]) == runs | {f"{k}@no_context" for k in runs if k.startswith("dyknow")}
    assert report["seeds"] == [0]
    for row in report["per_seed"][0].values():
        if isinstance(row, dict) and "all" in row:
            assert set(bench.SLICE_ORDER) <= set(row) and row["train_seconds"] > 0
            assert row["helpful"]["items"] + row["noisy"]["items"] == row["all"]["items"]
            assert row["head"]["items"] + row["tail"]["items"] == row["all"]["items"]
    assert "| SFT+DPO |" in capsys.readouterr().out


def test_merge_of_per_seed_reports_is_the_table_of_all_seeds(tmp_path, capsys):
    paths = []
    for seed, f1 in ((0, 0.2), (1, 0.4)):
        report = {"settings": {"a": 1}, "task": {"test_rows": 3}, "seeds": [seed], "seconds": 5.0,
                  "per_seed": [{"_stages": {}, "grpo": _row(f1)}]}
        paths.append(str(tmp_path / f"s{seed}.json"))
        with open(paths[-1], "w") as fh:
            json.dump(report, fh)
    assert bench.main(["--merge", *paths, "--json", str(tmp_path / "all.json")]) == 0
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["seeds"] == [0, 1] and merged["seconds"] == 10.0
    assert merged["table"]["grpo"]["all"]["macro_f1"] == {"mean": pytest.approx(0.3), "min": 0.2, "max": 0.4}
    with open(paths[1], "w") as fh:
        json.dump({"settings": {"a": 2}, "task": {"test_rows": 3}, "seeds": [1], "seconds": 1.0, "per_seed": []}, fh)
    with pytest.raises(ValueError, match="differ in settings"):
        bench.main(["--merge", *paths])


def test_merge_joins_the_encoders_report_to_the_judges_seed_by_seed(tmp_path):
    """The encoders run beside the judges' sweep: their report may carry other learning rates
    (the judges' only), and its rows join the judges' rows of the same seed."""
    def write(name, settings, seeds, rows):
        path = str(tmp_path / name)
        with open(path, "w") as fh:
            json.dump({"settings": settings, "task": {"test_rows": 3}, "seeds": seeds, "seconds": 1.0,
                       "per_seed": rows}, fh)
        return path

    judges = write("j.json", {"grpo_lr": 3e-4, "noise": 0.3}, [0, 1],
                   [{"grpo": _row(0.2)}, {"grpo": _row(0.4)}])
    encoders = write("e.json", {"grpo_lr": 1e-3, "noise": 0.3}, [1, 0],
                     [{"ebrm": _row(0.6)}, {"ebrm": _row(0.5)}])
    assert bench.main(["--merge", judges, encoders, "--json", str(tmp_path / "all.json")]) == 0
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["seeds"] == [0, 1] and merged["settings"]["grpo_lr"] == 3e-4
    assert merged["table"]["ebrm"]["all"]["macro_f1"]["min"] == 0.5
    assert merged["table"]["grpo"]["all"]["macro_f1"]["max"] == 0.4
    other_noise = write("n.json", {"grpo_lr": 1e-3, "noise": 0.5}, [0], [{"ebrm": _row(0.6)}])
    with pytest.raises(ValueError, match=r"differ in settings \['noise'\]"):
        bench.main(["--merge", judges, other_noise])
    with pytest.raises(ValueError, match=r"seed 0 rows \['grpo'\] are in another report"):
        bench.main(["--merge", judges, judges])
    with pytest.raises(ValueError, match="do not have the same rows"):
        bench.main(["--merge", judges, write("one.json", {"grpo_lr": 1e-3, "noise": 0.3}, [0], [{"ebrm": _row(0.6)}])])


def test_a_sweep_trains_a_stage_once_per_learning_rate_chain():
    s = bench.Settings()
    assert rm.stage_signature("dyknow_dpo", s) == rm.stage_signature("dyknow_dpo", bench.replace(s, grpo_lr=1.0))
    assert rm.stage_signature("dyknow_dpo", s) != rm.stage_signature("dyknow_dpo", bench.replace(s, dpo_lr=1.0))
    assert rm.stage_signature("dyknow_dpo", s) != rm.stage_signature("dyknow_dpo", bench.replace(s, sft_lr=1.0))
    assert rm.stage_signature("she2", s) != rm.stage_signature("she2", bench.replace(s, she_lr=1.0))
    assert rm.stage_signature("pool", s) == rm.stage_signature("pool", bench.replace(s, dyknow_lr=1.0))


def test_the_pool_threshold_is_swept_through_the_dyknow_stages_only():
    s = bench.Settings()
    other = bench.replace(s, pool_threshold=s.pool_threshold / 2)
    assert rm.stage_signature("pool", s) != rm.stage_signature("pool", other)
    assert rm.stage_signature("dyknow_dpo", s) != rm.stage_signature("dyknow_dpo", other)
    assert rm.stage_signature("taosr1", s) == rm.stage_signature("taosr1", other)
    scored = {k for k, m in rm.METHODS.items()
              if m.kind == "judge" and "pool_threshold" in rm.STAGES[m.stages[-1]].tuned}
    assert scored == {"dyknow_sft", "dyknow_dpo"}


def test_a_sweep_goes_on_past_an_end_that_is_strictly_best_and_reuses_measured_values():
    curve = {1e-5: 0.50, 3e-5: 0.62, 1e-4: 0.60, 3e-4: 0.55, 1e-3: 0.40}
    measured = []

    def measure(v):
        measured.append(v)
        return {"val_macro_f1": curve[v]}

    rows = bench.sweep("lr", (1e-4, 3e-4, 1e-3), measure, extend=True)
    assert [r["lr"] for r in rows] == [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]  # 1e-4 best at the end: 3e-5, then 1e-5
    assert max(rows, key=lambda r: r["val_macro_f1"])["lr"] == 3e-5
    measured.clear()
    again = bench.sweep("lr", (1e-4, 3e-4, 1e-3), measure, previous=rows, extend=True)
    assert again == rows and measured == []  # everything was measured before
    other = bench.sweep("lr", (1e-4,), measure, previous=rows, under={"sft_lr": 3e-3})
    assert measured == [1e-4] and other[0]["under"] == {"sft_lr": 3e-3}  # measured under other settings: again
    flat = bench.sweep("x", (0.7, 0.9), lambda v: {"val_macro_f1": 0.5}, extend=True)
    assert [r["x"] for r in flat] == [0.7, 0.9]  # a tie is no reason to go on


def test_merge_joins_judges_run_apart_when_a_swept_setting_is_read_by_one_side_only(tmp_path):
    def write(name, settings, rows):
        path = str(tmp_path / name)
        with open(path, "w") as fh:
            json.dump({"settings": settings, "task": {"test_rows": 3}, "seeds": [0], "seconds": 1.0,
                       "per_seed": [rows]}, fh)
        return path

    base = {"sft_lr": 1e-3, "grpo_lr": 1e-4, "dyknow_lr": 1e-4, "pool_threshold": 0.7}
    grpo = write("g.json", base, {"grpo": _row(0.4)})
    dyknow = write("d.json", {**base, "dyknow_lr": 3e-5, "pool_threshold": 0.9}, {"dyknow_sft": _row(0.5)})
    assert bench.main(["--merge", grpo, dyknow, "--json", str(tmp_path / "all.json")]) == 0
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["settings"]["dyknow_lr"] == 3e-5 and merged["settings"]["pool_threshold"] == 0.9
    assert set(merged["table"]) == {"grpo", "dyknow_sft"}
    other_sft = write("s.json", {**base, "sft_lr": 3e-3, "dyknow_lr": 3e-5}, {"dyknow_dpo": _row(0.5)})
    with pytest.raises(ValueError, match=r"differ in settings \['sft_lr'\]"):  # both sides read the SFT stage
        bench.main(["--merge", grpo, other_sft])
