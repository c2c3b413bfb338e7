"""Teacher rationales: the verdict their steps imply equals task.grade() on every (query, item) of
built tasks (a synthetic catalogue always, MovieLens when cached), and hand-checked boundaries."""
from relevance_testing import GENRES, synthetic_items  # (first: puts the plugin on the path)
import itertools

import pyarrow.parquet as pq
import pytest

from recis_relevance.rationale import RULES, VERDICTS, Step, grade_of_steps, rationale, step_references, steps
from recis_relevance.task import DECADES, build_task, grade, movie_items


def movielens_items():
    from recis.datasets import cache_dir, movielens

    if not (cache_dir() / "movielens-1m").is_dir():  # the cache root recis.datasets.movielens documents
        pytest.skip("MovieLens-1M is not in the recis cache (tests download nothing)")
    files = movielens.load("random")
    return movie_items(pq.read_table(files.train, columns=["item_id", "title", "year", "genres"]))


def check_rows(rows):
    patterns = set()
    for r in rows:
        got = rationale(r)
        want = grade(r["genres"], r["year"], r["want_genre"], r["avoid_genre"], r["decade"])
        assert grade_of_steps(got) == want == r["label"], r
        assert [s.rule for s in got] == [x for x in RULES if x == "genre" or
                                         (x == "negation" and r["avoid_genre"] is not None) or
                                         (x == "decade" and r["decade"] is not None)]
        patterns.add(tuple((s.rule, s.verdict) for s in got))
    return patterns


def test_steps_agree_with_grade_on_a_synthetic_task():
    task = build_task(synthetic_items(), queries=100, per_query=12, seed=3)
    patterns = check_rows(task.train.to_pylist() + task.test.to_pylist())
    verdicts = {v for p in patterns for v in p}
    # every rule outcome is exercised, incl. the hard negatives of a negation (genre yes, negation no)
    assert verdicts == {(r, v) for r in RULES for v in VERDICTS[r]}
    assert any(("genre", "yes") in p and ("negation", "no") in p for p in patterns)


def test_steps_agree_with_grade_on_every_query_item_combination():
    items = synthetic_items().to_pylist()
    n = 0
    for want, avoid, decade in itertools.product(GENRES, [None] + GENRES, (None,) + DECADES):
        if avoid == want:
            continue
        for it in items:
            g = grade(it["genres"], it["year"], want, avoid, decade)
            assert grade_of_steps(steps(it["genres"], it["year"], want, avoid, decade)) == g
            n += 1
    assert n == 4 * 4 * 8 * len(items)


def test_steps_agree_with_grade_on_the_movielens_task():
    task = build_task(movielens_items(), seed=0)
    patterns = check_rows(task.train.to_pylist() + task.test.to_pylist())
    assert {v for p in patterns for v in p} == {(r, v) for r in RULES for v in VERDICTS[r]}


@pytest.mark.parametrize("year, verdict, g", [
    (1987, "no", 2), (1988, "near", 3), (1989, "near", 3), (1990, "yes", 4), (1999, "yes", 4),
    (2000, "near", 3), (2001, "near", 3), (2002, "no", 2), (1955, "no", 2)])
def test_decade_boundaries_by_hand(year, verdict, g):
    got = steps(["Comedy"], year, "Comedy", None, 1990)
    assert got == (Step("genre", ("comedy", "present"), "yes"), Step("decade", ("1990s", "year", str(year)), verdict))
    assert grade_of_steps(got) == g


def test_genre_and_negation_steps_by_hand():
    assert steps(["Horror"], 1995, "Comedy", None, None) == (Step("genre", ("comedy", "missing"), "no"),)
    hard = steps(["Sci-Fi", "Horror"], 1995, "Sci-Fi", "Horror", 1990)
    assert hard == (Step("genre", ("sci", "-", "fi", "present"), "yes"), Step("negation", ("horror", "present"), "no"),
                    Step("decade", ("1990s", "year", "1995"), "yes"))
    assert grade_of_steps(hard) == 1
    # a failed genre check wins over a far-off year
    assert grade_of_steps(steps(["Drama"], 1931, "Comedy", None, 1990)) == 1


def test_step_references_and_determinism():
    row = {"genres": ["Children's", "Comedy"], "year": 2001, "want_genre": "Comedy", "avoid_genre": "Horror",
           "decade": 1990, "label": 3}
    assert step_references(row) == {"genre": "yes", "negation": "yes", "decade": "near"}
    assert list(step_references(row)) == ["genre", "negation", "decade"]
    assert rationale(row) == rationale(dict(row))
    with pytest.raises(KeyError, match="'want_genre'"):
        rationale({k: v for k, v in row.items() if k != "want_genre"})


def test_step_schema_errors():
    with pytest.raises(ValueError, match="unknown rule 'brand'"):
        Step("brand", (), "yes")
    with pytest.raises(ValueError, match="rule 'genre' has no verdict 'near'"):
        Step("genre", (), "near")
    with pytest.raises(ValueError, match="word 'Comedy'"):
        Step("genre", ("Comedy",), "yes")
    with pytest.raises(ValueError, match="lack the genre check"):
        grade_of_steps((Step("decade", (), "yes"),))
