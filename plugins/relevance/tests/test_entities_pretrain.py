"""Entity extraction (attribute columns and gazetteer), log-derived QE labels and the task's rules."""
from relevance_testing import WORDS, tiny, tiny_encoder  # noqa: F401 (first: puts the plugin on the path)
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recis_relevance.entities import Entity, EntityExtractor, words
from recis_relevance.pretrain import ClickLog, qe_labels_from_logs, simulate_click_logs
from recis_relevance.task import build_task, grade


def test_attribute_and_gazetteer_entities():
    ex = EntityExtractor({"brand": "brand", "colours": "colour"}, {"running shoe": "category", "shoe": "category",
                                                                  "red": "colour"}, title_column="title")
    row = {"brand": "Acme", "colours": ["red", None, "blue"], "title": "Acme red Running Shoe, red"}
    assert [e.text for e in ex.extract(row)] == ["brand: Acme", "colour: red", "colour: blue",
                                                  "category: running shoe"]
    table = pa.table({"brand": ["x", None], "colours": [[], ["green"]], "title": ["shoe", ""]})
    assert ex.extract_table(table).to_pylist() == [["brand: x", "category: shoe"], ["colour: green"]]
    with pytest.raises(KeyError, match="'colours'"):
        ex.extract({"brand": "x", "title": "t"})
    with pytest.raises(KeyError, match=r"\['title'\]"):
        ex.extract_table(pa.table({"brand": ["x"], "colours": [["red"]]}))
    with pytest.raises(ValueError, match="two types"):
        EntityExtractor({}, {"red": "colour", "Red": "brand"}, title_column="t")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["big", "red", "shoe", "big red", "red shoe", "box"]), max_size=10))
def test_gazetteer_matches_are_whole_words_in_order_and_never_overlap(tokens):
    gaz = {"big red": "a", "red shoe": "b", "shoe": "c", "red": "d"}
    title = " ".join(tokens)
    got = EntityExtractor({}, gaz, title_column="t").match(title)
    toks, i, want = words(title), 0, []
    while i < len(toks):  # reference: longest match first at each position
        two, one = " ".join(toks[i:i + 2]), toks[i]
        if len(toks) - i >= 2 and two in gaz:
            want.append(Entity(gaz[two], two))
            i += 2
        elif one in gaz:
            want.append(Entity(gaz[one], one))
            i += 1
        else:
            i += 1
    assert got == want


def test_qe_labels_from_known_logs():
    items = {1: ["genre: Comedy", "year: 1995"], 2: ["genre: Horror", "year: 1995"], 3: ["genre: Drama"],
             4: ["theme: war"]}
    logs = [ClickLog("funny", [1, 2, 4], [1]), ClickLog("funny", [3, 2], [3]), ClickLog("scary", [1, 2], [2])]
    got = qe_labels_from_logs(logs, items)
    assert got == [("funny", "genre: Comedy", 1.0), ("funny", "year: 1995", 1.0), ("funny", "genre: Drama", 1.0),
                   ("funny", "genre: Horror", 0.0),
                   ("scary", "genre: Horror", 1.0), ("scary", "year: 1995", 1.0), ("scary", "genre: Comedy", 0.0)]
    with pytest.raises(ValueError, match="were not shown"):
        ClickLog("q", [1], [2])
    with pytest.raises(KeyError, match="item 9"):
        qe_labels_from_logs([ClickLog("q", [9], [])], items)


def _items():
    return pa.table({"item_id": [1, 2, 3, 4, 5, 6], "title": ["A (1995)", "B (1988)", "C (1970)", "D (1993)",
                                                           "E Love (1999)", "F (1991)"],
                     "year": pa.array([1995, 1988, 1970, 1993, 1999, 1991], pa.int32()),
                     "genres": [["Comedy"], ["Comedy"], ["Comedy"], ["Comedy", "Horror"], ["Horror"],
                                ["Drama", "Comedy"]]})


def test_task_labels_follow_the_rules_and_the_split_holds_out_queries():
    task = build_task(_items(), queries=12, per_query=8, seed=3)
    for table in (task.train, task.test):
        for r in table.to_pylist():
            assert r["label"] == grade(r["genres"], r["year"], r["want_genre"], r["avoid_genre"], r["decade"])
            assert r["want_genre"].lower() in r["query"] and (r["decade"] is None or str(r["decade"]) in r["query"])
            assert r["entities"][:len(r["genres"])] == [f"genre: {g}" for g in r["genres"]]
            assert f"year: {r['year']}" in r["entities"]
    combos = [{(r["want_genre"], r["avoid_genre"], r["decade"]) for r in t.to_pylist()} for t in (task.train, task.test)]
    assert not combos[0] & combos[1]
    assert not set(task.train["query"].to_pylist()) & set(task.test["query"].to_pylist())
    again = build_task(_items(), queries=12, per_query=8, seed=3)
    assert again.train.equals(task.train) and again.test.equals(task.test)
    assert grade(["Comedy"], 2001, "Comedy", None, 1990) == 3 and grade(["Comedy"], 2002, "Comedy", None, 1990) == 2
    logs = simulate_click_logs(task.train, seed=0)
    assert logs and all(set(l.clicked) <= set(l.shown) for l in logs)
