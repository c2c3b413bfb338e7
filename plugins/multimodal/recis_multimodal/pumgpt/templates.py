"""PUMGPT's instruction templates: (prompt, answer) pairs for five product-understanding tasks,
rendered from a product's metadata (the Fashion-MNIST catalogue columns of
`recis.datasets.fashion_mnist.SCHEMA`), several natural-language patterns per task sampled by a
seeded generator, and an open-domain mix.

Tasks (`TASKS`):

- ``caption``: describe the product (shade, texture, category, width, height, coverage);
- ``category``: which of the ten categories the product is;
- ``attributes``: attribute extraction; the answer is ``key: value`` lines (`ATTRIBUTE_KEYS` in
  order) that `parse_attributes` reads back;
- ``attribute_qa``: one attribute asked by name (``what is the shade of ...?`` -> ``dark``);
- ``free_qa``: yes/no and counting questions about the product (``is this a coat?``, ``how many
  pixels tall is the item?``).

Slots are ``{name}`` fields of the patterns; `slot_value` maps each to metadata columns
(``category`` -> column category, lower-cased; ``shade``; ``coverage`` -> coverage_band; ``width`` ->
width_band; ``height`` -> height_band; ``texture``; ``width_px`` / ``height_px`` -> width / height;
``symmetry`` -> symmetry, read as symmetric at >= `SYMMETRIC` [I]). A slot whose column is absent
or null raises `MissingSlotError` naming the slot, the template and the product id.

Open-domain data [I] (ours; the paper mixes public caption/VQA data): generic questions about
the image that are not about the catalogue's labels (`OPEN_DOMAIN`: which half is brighter, is
the object centred, how much of the image is bright), answered from statistics measured on the
pixels the tower receives (`image_facts`). Every statistic is invariant to a positive affine
map of the pixel values, so it reads the same from raw [0, 1] pixels or from normalised ones.
`sample_instruction` renders an open-domain instruction instead of a catalogue one with
probability `rho` (the mix ratio), drawn from the row's generator.

>>> row = {"item_id": 7, "category": "Ankle boot", "shade": "dark", "coverage": 0.4, "coverage_band": "medium",
...        "width": 24, "height": 27, "width_band": "medium", "height_band": "medium", "symmetry": 0.7,
...        "texture": "plain"}
>>> target = attribute_target(row)
>>> print(target)
category: ankle boot
shade: dark
coverage: medium
width: medium
height: medium
texture: plain
>>> parse_attributes(target)["category"]
'ankle boot'
>>> ins = render(TEMPLATES["category"][0], row)
>>> ins.prompt, ins.answer
('question : what category is this product ? answer :', 'ankle boot')
>>> render(TEMPLATES["category"][0], {"item_id": 3})
Traceback (most recent call last):
...
recis_multimodal.pumgpt.templates.MissingSlotError: template category/0: slot 'category' has no metadata for product 3 (column 'category' is missing or null)
"""
import random
import string
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = ["TASKS", "CATEGORIES", "ATTRIBUTE_KEYS", "SLOT_COLUMNS", "SYMMETRIC", "Template", "Instruction",
           "MissingSlotError", "TEMPLATES", "OPEN_DOMAIN", "slot_value", "render", "attribute_target",
           "parse_attributes", "category_prompt", "category_answers", "attributes_prompt", "image_facts",
           "row_rng", "sample_instruction", "vocabulary"]

TASKS = ("caption", "category", "attributes", "attribute_qa", "free_qa")
#: Fashion-MNIST's ten categories (recis.datasets.fashion_mnist.CATEGORIES), in label order.
CATEGORIES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
              "Ankle boot")
#: attribute extraction's keys, in the order of the answer lines
ATTRIBUTE_KEYS = ("category", "shade", "coverage", "width", "height", "texture")
#: slot -> the metadata column it reads
SLOT_COLUMNS = {"category": "category", "shade": "shade", "coverage": "coverage_band", "width": "width_band",
                "height": "height_band", "texture": "texture", "width_px": "width", "height_px": "height",
                "symmetry": "symmetry"}
#: the values each categorical slot can take (the catalogue's bands), for yes/no distractors and the vocabulary
DOMAINS = {"category": tuple(c.lower() for c in CATEGORIES), "shade": ("dark", "medium", "light"),
           "coverage": ("low", "medium", "high"), "width": ("narrow", "medium", "wide"),
           "height": ("short", "medium", "tall"), "texture": ("plain", "patterned"),
           "symmetry": ("symmetric", "asymmetric")}
#: symmetry (left-right mirror agreement, 0..1) at or above which a product reads as symmetric [I]
SYMMETRIC = 0.8
_ATTR_NAMES = {"shade": "shade", "coverage": "coverage", "width": "width", "height": "height",
               "texture": "texture"}


class MissingSlotError(KeyError):
    """A template slot whose metadata column is absent or null for the product."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Template:
    """One pattern of a task: `prompt` and `answer` format strings over the slots."""

    task: str
    name: str
    prompt: str
    answer: str

    @property
    def slots(self) -> Tuple[str, ...]:
        fields = [f for text in (self.prompt, self.answer) for _, f, _, _ in string.Formatter().parse(text) if f]
        return tuple(dict.fromkeys(fields))


@dataclass(frozen=True)
class Instruction:
    """A rendered instruction: its task (``open`` for open-domain), the template's name, the text."""

    task: str
    template: str
    prompt: str
    answer: str

    @property
    def open_domain(self) -> bool:
        return self.task == "open"


def _q(text: str) -> str:
    return f"question : {text} answer :"


def _make(task: str, pairs: Sequence[Tuple[str, str]]) -> Tuple[Template, ...]:
    return tuple(Template(task, str(i), _q(p), a) for i, (p, a) in enumerate(pairs))


_ATTRIBUTE_LINES = "\n".join(f"{k}: {{{k}}}" for k in ATTRIBUTE_KEYS)

#: task -> its patterns. Yes/no patterns use the slots ``ask_<slot>`` (a value of the slot's domain,
#: the product's own half of the time) and ``yes_<slot>`` (yes / no).
TEMPLATES: Dict[str, Tuple[Template, ...]] = {
    "caption": _make("caption", [
        ("describe the product .", "a {shade} {texture} {category} , {width} and {height} , {coverage} coverage ."),
        ("write a short caption for this item .", "{shade} {category} with a {texture} surface ."),
        ("what does the image show ?", "a {category} , {shade} and {texture} , {width} in width ."),
        ("give a one line product description .", "{texture} {category} , {shade} shade , {height} ."),
    ]),
    "category": _make("category", [
        ("what category is this product ?", "{category}"),
        ("which kind of garment or accessory is shown ?", "{category}"),
        ("name the product category .", "{category}"),
        ("what is this item ?", "{category}"),
    ]),
    "attributes": _make("attributes", [
        ("list the product attributes as key : value lines .", _ATTRIBUTE_LINES),
        ("extract the attributes of this product .", _ATTRIBUTE_LINES),
        ("fill in the product sheet : category , shade , coverage , width , height , texture .", _ATTRIBUTE_LINES),
    ]),
    "attribute_qa": _make("attribute_qa", [
        ("what is the {attr_name} of this product ?", "{attr_value}"),
        ("tell me the {attr_name} of the item .", "{attr_value}"),
        ("which {attr_name} does the product have ?", "{attr_value}"),
    ]),
    "free_qa": _make("free_qa", [
        ("is this a {ask_category} ?", "{yes_category}"),
        ("is the item {ask_shade} ?", "{yes_shade}"),
        ("does the product look {ask_texture} ?", "{yes_texture}"),
        ("is the product {ask_symmetry} ?", "{yes_symmetry}"),
        ("how many pixels wide is the item ?", "{width_px} pixels"),
        ("how many pixels tall is the item ?", "{height_px} pixels"),
    ]),
}

#: open-domain patterns [I]: slots of `image_facts`
OPEN_DOMAIN: Tuple[Template, ...] = (
    Template("open", "0", _q("which half of the image is brighter , the top or the bottom ?"), "{brighter_half}"),
    Template("open", "1", _q("which side of the image is brighter , left or right ?"), "{brighter_side}"),
    Template("open", "2", _q("is the object centered in the picture ?"), "{centered}"),
    Template("open", "3", _q("how much of the image is bright ?"), "{bright_share}"),
)
OPEN_VALUES = {"brighter_half": ("top", "bottom"), "brighter_side": ("left", "right"), "centered": ("yes", "no"),
               "bright_share": ("little", "some", "much")}


def _column(row: Mapping, column: str, slot: str, template: str):
    value = row.get(column)
    if value is None:
        raise MissingSlotError(f"template {template}: slot {slot!r} has no metadata for product "
                               f"{row.get('item_id', '?')} (column {column!r} is missing or null)")
    return value


def slot_value(row: Mapping, slot: str, template: str = "?", rng: Optional[random.Random] = None,
               chosen: Optional[dict] = None) -> str:
    """The text of `slot` for product `row` (see the module docstring). `rng` draws what a
    pattern chooses (the asked attribute, a yes/no distractor); `chosen` keeps those draws so
    the prompt and the answer of one instruction agree."""
    chosen = {} if chosen is None else chosen
    rng = rng or random.Random(0)
    if slot in ("attr_name", "attr_value"):
        if "attr" not in chosen:
            chosen["attr"] = rng.choice(sorted(_ATTR_NAMES))
        key = chosen["attr"]
        return _ATTR_NAMES[key] if slot == "attr_name" else slot_value(row, key, template, rng, chosen)
    if slot.startswith("ask_") or slot.startswith("yes_"):
        base = slot[4:]
        if base not in chosen:
            own = slot_value(row, base, template, rng, chosen)
            chosen[base] = own if rng.random() < 0.5 else rng.choice([v for v in DOMAINS[base] if v != own])
        return chosen[base] if slot.startswith("ask_") else \
            ("yes" if chosen[base] == slot_value(row, base, template, rng, chosen) else "no")
    if slot in OPEN_VALUES:
        facts = row.get("image_facts") or {}
        if slot not in facts:
            raise MissingSlotError(f"template {template}: slot {slot!r} has no image statistics for product "
                                   f"{row.get('item_id', '?')} (pass image_facts(pixels) as row['image_facts'])")
        return facts[slot]
    if slot not in SLOT_COLUMNS:
        raise MissingSlotError(f"template {template}: slot {slot!r} is not a known slot (known: "
                               f"{sorted(SLOT_COLUMNS)}, attr_name, attr_value, ask_*/yes_*, {sorted(OPEN_VALUES)})")
    value = _column(row, SLOT_COLUMNS[slot], slot, template)
    if slot == "category":
        return str(value).lower()
    if slot == "symmetry":
        return "symmetric" if float(value) >= SYMMETRIC else "asymmetric"
    if slot in ("width_px", "height_px"):
        return str(int(value))
    return str(value)


def render(template: Template, row: Mapping, rng: Optional[random.Random] = None) -> Instruction:
    """The instruction of `template` for product `row` (a mapping of metadata columns)."""
    where = f"{template.task}/{template.name}"
    chosen: dict = {}
    values = {s: slot_value(row, s, where, rng, chosen) for s in template.slots}
    return Instruction(template.task, template.name, template.prompt.format(**values),
                       template.answer.format(**values))


def attribute_target(row: Mapping) -> str:
    """Attribute extraction's answer for `row`: ``key: value`` lines in `ATTRIBUTE_KEYS` order."""
    return render(TEMPLATES["attributes"][0], row).answer


def parse_attributes(text: str) -> Dict[str, str]:
    """``key: value`` lines (or the same pairs with the newlines lost, as a word tokenizer decodes
    them) -> {key: value}; keys are `ATTRIBUTE_KEYS`, a line that names none is ignored.

    >>> parse_attributes("category : ankle boot shade : dark")
    {'category': 'ankle boot', 'shade': 'dark'}
    """
    words = text.replace(":", " : ").split()
    out, key, value = {}, None, []
    i = 0
    while i < len(words):
        if words[i] in ATTRIBUTE_KEYS and i + 1 < len(words) and words[i + 1] == ":":
            if key is not None:
                out[key] = " ".join(value)
            key, value, i = words[i], [], i + 2
            continue
        if key is not None:
            value.append(words[i])
        i += 1
    if key is not None:
        out[key] = " ".join(value)
    return {k: v.replace(" / ", "/").replace(" - ", "-") for k, v in out.items()}


def category_prompt() -> str:
    """The category-QA prompt under which evaluation ranks the ten category answers."""
    return TEMPLATES["category"][0].prompt


def category_answers() -> List[str]:
    """The ten category answers, in label order."""
    return [c.lower() for c in CATEGORIES]


def attributes_prompt() -> str:
    """The attribute-extraction prompt of evaluation's exact match."""
    return TEMPLATES["attributes"][0].prompt


def image_facts(pixels: torch.Tensor) -> List[Dict[str, str]]:
    """Open-domain answers measured on images [B, C, H, W] (any positive affine normalisation):
    `brighter_half` (top / bottom: the larger pixel sum of the two halves), `brighter_side`
    (left / right), `centered` (yes when the centroid of x - min(x) lies within an eighth of the
    image size of the centre on both axes), `bright_share` (the share of pixels above the midpoint
    of min and max: little < 0.25 <= some < 0.5 <= much)."""
    if pixels.dim() != 4:
        raise ValueError(f"image_facts expects images [B, C, H, W], got shape {list(pixels.shape)}")
    x = pixels.detach().float().mean(1)  # [B, H, W]
    b, h, w = x.shape
    top, bottom = x[:, : h // 2].sum((1, 2)), x[:, h - h // 2:].sum((1, 2))
    left, right = x[:, :, : w // 2].sum((1, 2)), x[:, :, w - w // 2:].sum((1, 2))
    lo = x.flatten(1).min(1).values[:, None, None]
    hi = x.flatten(1).max(1).values[:, None, None]
    mass = (x - lo)
    total = mass.sum((1, 2)).clamp_min(1e-12)
    ys = torch.arange(h, dtype=x.dtype)[None, :, None]
    xs = torch.arange(w, dtype=x.dtype)[None, None, :]
    cy, cx = (mass * ys).sum((1, 2)) / total, (mass * xs).sum((1, 2)) / total
    centered = ((cy - (h - 1) / 2).abs() <= h / 8) & ((cx - (w - 1) / 2).abs() <= w / 8)
    share = (x > (lo + hi) / 2).float().mean((1, 2))
    out = []
    for i in range(b):
        s = float(share[i])
        out.append({"brighter_half": "top" if top[i] > bottom[i] else "bottom",
                    "brighter_side": "left" if left[i] > right[i] else "right",
                    "centered": "yes" if bool(centered[i]) else "no",
                    "bright_share": "little" if s < 0.25 else ("some" if s < 0.5 else "much")})
    return out


def row_rng(seed: int, salt: int, item_id: int) -> random.Random:
    """The generator of one row's instruction: seeded from (seed, salt, item id) (string seeds are
    hashed with SHA-512 by `random`, independent of PYTHONHASHSEED)."""
    return random.Random(f"pumgpt:{int(seed)}:{int(salt)}:{int(item_id)}")


def sample_instruction(row: Mapping, tasks: Sequence[str], rng: random.Random, rho: float = 0.0) -> Instruction:
    """One instruction for `row`: open-domain with probability `rho` (needs row['image_facts']),
    else a task drawn uniformly from `tasks` and one of its patterns uniformly."""
    bad = [t for t in tasks if t not in TEMPLATES]
    if bad or not tasks:
        raise ValueError(f"tasks must be a non-empty list of {list(TASKS)}, got {list(tasks)}")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho (the open-domain mix ratio) must lie in [0, 1], got {rho}")
    if rng.random() < rho:
        return render(rng.choice(OPEN_DOMAIN), row, rng)
    task = tasks[rng.randrange(len(tasks))]
    return render(rng.choice(TEMPLATES[task]), row, rng)


def _pieces(text: str) -> List[str]:
    """The word tokenizer's pieces of `text` (lower-cased; split on whitespace and at punctuation)."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return [p for p, _ in pre.pre_tokenize_str(text.lower())]


def vocabulary() -> List[str]:
    """Every word any template (open-domain included) can write for any product of the catalogue
    (its fixed texts and every value of every slot's domain, pixel counts 0..28), sorted: the
    words of the catalogue's word tokenizer. It depends on the templates only."""
    texts = [t.prompt + " " + t.answer for ts in TEMPLATES.values() for t in ts]
    texts += [t.prompt for t in OPEN_DOMAIN]
    texts += [v for vs in DOMAINS.values() for v in vs] + [v for vs in OPEN_VALUES.values() for v in vs]
    texts += list(_ATTR_NAMES.values()) + ["yes no"] + [str(i) for i in range(29)]
    words = set()
    for text in texts:
        plain = string.Formatter().parse(text)
        words.update(w for lit, _, _, _ in plain for w in _pieces(lit))
    return sorted(words)
