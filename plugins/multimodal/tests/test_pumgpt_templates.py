"""PUMGPT's instruction templates: every pattern renders for every product of a sample with no
unfilled slot and only catalogue words; attribute-extraction answers parse back to the metadata;
the open-domain ratio is what the seeded generator draws; a slot with no metadata is named; the
open-domain answers equal statistics recomputed here from the pixels."""
import itertools
import math
import random

import pytest
import torch

from recis_multimodal.pumgpt.catalogue import catalogue_corpus, catalogue_tokenizer
from recis_multimodal.pumgpt.templates import (ATTRIBUTE_KEYS, CATEGORIES, OPEN_DOMAIN, TASKS, TEMPLATES,
                                               MissingSlotError, attribute_target, image_facts, parse_attributes,
                                               render, row_rng, sample_instruction, vocabulary)

BANDS = {"shade": ("dark", "medium", "light"), "coverage_band": ("low", "medium", "high"),
         "width_band": ("narrow", "medium", "wide"), "height_band": ("short", "medium", "tall"),
         "texture": ("plain", "patterned")}


def products(n=60, seed=0):
    """A sample of catalogue rows: every category, every band value, pixel sizes 0..28."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        row = {"item_id": 1000 + i, "label": i % 10, "category": CATEGORIES[i % 10],
               "coverage": rng.random(), "width": rng.randint(0, 28), "height": rng.randint(0, 28),
               "symmetry": rng.random()}
        for col, values in BANDS.items():
            row[col] = values[(i // 10 + i) % len(values)]
        out.append(row)
    return out


def expected_attributes(row):
    """The metadata the attribute-extraction answer must state, read from the row directly."""
    return {"category": row["category"].lower(), "shade": row["shade"], "coverage": row["coverage_band"],
            "width": row["width_band"], "height": row["height_band"], "texture": row["texture"]}


def test_every_template_of_every_task_renders_every_product_with_catalogue_words():
    tok = catalogue_tokenizer()
    facts = image_facts(torch.rand(1, 1, 28, 28))[0]
    assert set(TEMPLATES) == set(TASKS) and all(len(TEMPLATES[t]) >= 3 for t in TASKS)
    for row in products():
        row = {**row, "image_facts": facts}
        for template in [t for ts in TEMPLATES.values() for t in ts] + list(OPEN_DOMAIN):
            for seed in range(3):  # the drawn attribute / distractor differs per seed
                ins = render(template, row, random.Random(seed))
                for text in (ins.prompt, ins.answer):
                    assert text and "{" not in text and "}" not in text, (template, text)
                    ids = tok(text, add_special_tokens=False)["input_ids"]
                    assert tok.unk_token_id not in ids, (template.task, template.name, text)


def test_attribute_extraction_targets_parse_back_to_the_metadata():
    tok = catalogue_tokenizer()
    for row in products():
        want = expected_attributes(row)
        for template in TEMPLATES["attributes"]:
            answer = render(template, row).answer
            assert answer.splitlines() == [f"{k}: {want[k]}" for k in ATTRIBUTE_KEYS]
            assert parse_attributes(answer) == want
            # the word tokenizer's decoding loses the newlines and spaces the punctuation
            decoded = tok.decode(tok(answer, add_special_tokens=False)["input_ids"])
            assert parse_attributes(decoded) == want, decoded
        assert parse_attributes(attribute_target(row)) == want


def test_qa_answers_agree_with_the_metadata():
    for row, seed in itertools.product(products(30), range(4)):
        rng = random.Random(seed)
        ins = render(TEMPLATES["free_qa"][0], row, rng)          # is this a {ask_category} ?
        asked = ins.prompt.split("is this a ")[1].rsplit(" ?", 1)[0]
        assert ins.answer == ("yes" if asked == row["category"].lower() else "no")
        ins = render(TEMPLATES["attribute_qa"][0], row, random.Random(seed))
        name = ins.prompt.split("what is the ")[1].split(" of this")[0]
        column = {"shade": "shade", "coverage": "coverage_band", "width": "width_band", "height": "height_band",
                  "texture": "texture"}[name]
        assert ins.answer == row[column]
        assert render(TEMPLATES["free_qa"][4], row).answer == f"{row['width']} pixels"
        assert render(TEMPLATES["category"][1], row).answer == row["category"].lower()


def test_a_slot_with_no_metadata_names_the_slot_the_template_and_the_product():
    row = products(1)[0]
    del row["shade"]
    with pytest.raises(MissingSlotError, match=r"template caption/0: slot 'shade' has no metadata for product 1000 "
                                               r"\(column 'shade' is missing or null\)"):
        render(TEMPLATES["caption"][0], row)
    row = {**products(1)[0], "texture": None}
    with pytest.raises(MissingSlotError, match=r"slot 'texture'.*product 1000"):
        render(TEMPLATES["attributes"][2], row)
    with pytest.raises(MissingSlotError, match=r"template open/2: slot 'centered' has no image statistics for "
                                               r"product 1000"):
        render(OPEN_DOMAIN[2], products(1)[0])
    render(TEMPLATES["category"][0], row)  # a template that does not use the missing column renders


def test_open_domain_ratio_is_the_seeded_draw():
    rows = products(2000)
    facts = image_facts(torch.rand(1, 1, 28, 28))[0]
    for rho in (0.0, 0.25, 1.0):
        got = [sample_instruction({**r, "image_facts": facts}, ["category", "caption"], row_rng(7, 3, r["item_id"]),
                                  rho).open_domain for r in rows]
        # independent recount: the first draw of each row's generator decides
        want = [random.Random(f"pumgpt:7:3:{r['item_id']}").random() < rho for r in rows]
        assert got == want
        n, k = len(rows), sum(got)
        assert abs(k - rho * n) <= 4 * math.sqrt(n * rho * (1 - rho)) + 1e-9, (rho, k)
        assert k == {0.0: 0, 1.0: n}.get(rho, k) and (0 < k < n or rho in (0.0, 1.0))


def test_sampling_is_seeded_per_row_and_uniform_over_tasks_and_patterns():
    rows = products(600)
    a = [sample_instruction(r, TASKS, row_rng(0, 1, r["item_id"])) for r in rows]
    b = [sample_instruction(r, TASKS, row_rng(0, 1, r["item_id"])) for r in rows]
    c = [sample_instruction(r, TASKS, row_rng(0, 2, r["item_id"])) for r in rows]
    assert a == b and a != c
    counts = {t: sum(i.task == t for i in a) for t in TASKS}
    assert all(abs(v - 120) < 4 * math.sqrt(600 * 0.2 * 0.8) for v in counts.values()), counts
    used = {(i.task, i.template) for i in a}
    assert used == {(t.task, t.name) for ts in TEMPLATES.values() for t in ts}
    with pytest.raises(ValueError, match="tasks must be a non-empty list"):
        sample_instruction(rows[0], ["colour"], row_rng(0, 0, 0))


def test_image_facts_equal_statistics_recomputed_from_the_pixels():
    x = torch.zeros(3, 1, 28, 28)
    x[0, 0, 2:10, 3:9] = 1.0            # top-left blob: top, left, off centre, little bright
    x[1, 0, 10:18, 10:18] = 1.0         # centred
    x[2, 0, :, 14:] = 1.0               # right half bright: right, half the pixels -> much
    x[2, 0, 20:, 14:] = 0.5
    facts = image_facts(x)
    assert facts[0] == {"brighter_half": "top", "brighter_side": "left", "centered": "no", "bright_share": "little"}
    assert facts[1]["centered"] == "yes" and facts[1]["bright_share"] == "little"
    assert facts[2]["brighter_side"] == "right" and facts[2]["brighter_half"] == "top"
    assert facts[2]["bright_share"] == ("much" if (x[2] > 0.5).float().mean() >= 0.5 else "some")
    # normalised pixels ((x - mean) / std) and a 3-channel copy read the same
    assert image_facts((x - 0.286) / 0.353) == facts
    assert image_facts(x.expand(-1, 3, -1, -1)) == facts


def test_vocabulary_and_the_catalogue_corpus():
    words = vocabulary()
    assert words == sorted(set(words)) and "ankle" in words and "{" not in "".join(words)
    pairs = catalogue_corpus(products(20), seed=0)
    assert len(pairs) == 20 * len(TASKS)
    assert pairs == catalogue_corpus(products(20), seed=0) and pairs != catalogue_corpus(products(20), seed=1)
    assert [a for p, a in pairs[1::len(TASKS)]] == [r["category"].lower() for r in products(20)]
