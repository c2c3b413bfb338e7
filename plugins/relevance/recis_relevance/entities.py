"""Typed item entities: from attribute columns, from a gazetteer (phrase -> type) matched
against the title on word boundaries (longest phrase first, left to right, no overlaps), and from
a `tagger`: any object with `tag(text) -> [(type, value), ...]`, e.g. learned rules
(`recis_online.stream.RuleTagger`), matched against the same title column.

>>> ex = EntityExtractor({"genres": "genre", "year": "year"}, gazetteer={"star wars": "franchise",
...                      "star": "theme", "christmas": "theme"}, title_column="title")
>>> [e.text for e in ex.extract({"title": "Star Wars: A Christmas Special", "genres": ["Sci-Fi"], "year": 1978})]
['genre: Sci-Fi', 'year: 1978', 'franchise: star wars', 'theme: christmas']
>>> class Upper:  # a tagger: capitalised words are names
...     def tag(self, text):
...         return [("name", w) for w in text.split() if w[:1].isupper()]
>>> [e.text for e in EntityExtractor({}, tagger=Upper(), title_column="title").extract({"title": "Meet Joe Black"})]
['name: Meet', 'name: Joe', 'name: Black']
>>> Entity.parse("colour: dark red")
Entity(type='colour', value='dark red')
"""
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import pyarrow as pa

__all__ = ["Entity", "EntityExtractor", "words"]

_WORD = re.compile(r"[\w']+", re.UNICODE)
SEP = ": "


def words(text: str) -> List[str]:
    """Lower-cased word tokens (letters, digits, underscore, apostrophe)."""
    return [w.lower() for w in _WORD.findall(text)]


@dataclass(frozen=True)
class Entity:
    """An item entity of a `type` (category, brand, colour, genre, ...) with a `value`; `text` is
    what the query-entity model reads."""

    type: str
    value: str

    def __post_init__(self):
        if not self.type or SEP in self.type or not isinstance(self.value, str) or not self.value:
            raise ValueError(f"an entity needs a type without {SEP!r} and a non-empty value, got "
                             f"{self.type!r}, {self.value!r}")

    @property
    def text(self) -> str:
        return f"{self.type}{SEP}{self.value}"

    @classmethod
    def parse(cls, text: str) -> "Entity":
        if SEP not in text:
            raise ValueError(f"entity {text!r} is not 'type: value'")
        t, v = text.split(SEP, 1)
        return cls(t, v)


class EntityExtractor:
    """`attributes`: column -> entity type (a list column gives one entity per element);
    `gazetteer`: phrase -> entity type, matched in `title_column` case-insensitively; `tagger`:
    an object whose `tag(text)` gives (type, value) pairs for the `title_column` text (after the
    gazetteer's entities)."""

    def __init__(self, attributes: Mapping[str, str], gazetteer: Optional[Mapping[str, str]] = None,
                 title_column: Optional[str] = None, tagger=None):
        self.attributes = dict(attributes)
        self.gazetteer: Dict[tuple, tuple] = {}
        for phrase, typ in (gazetteer or {}).items():
            key = tuple(words(phrase))
            if not key:
                raise ValueError(f"gazetteer phrase {phrase!r} has no words")
            if key in self.gazetteer and self.gazetteer[key][1] != typ:
                raise ValueError(f"gazetteer phrase {phrase!r} has two types: {self.gazetteer[key][1]!r} and {typ!r}")
            self.gazetteer[key] = (" ".join(key), typ)
        if tagger is not None and not callable(getattr(tagger, "tag", None)):
            raise TypeError(f"tagger must have a tag(text) method, got {type(tagger).__name__}")
        self.tagger = tagger
        if (self.gazetteer or tagger is not None) and title_column is None:
            raise ValueError("a gazetteer or a tagger needs the title_column it is matched against")
        self.title_column = title_column
        self._longest = max((len(k) for k in self.gazetteer), default=0)

    @property
    def columns(self) -> List[str]:
        return list(self.attributes) + ([self.title_column] if self.title_column else [])

    def match(self, title: str) -> List[Entity]:
        """Gazetteer entities of `title`: longest phrase first at each position, no overlaps."""
        toks, out, i = words(title), [], 0
        while i < len(toks):
            for n in range(min(self._longest, len(toks) - i), 0, -1):
                hit = self.gazetteer.get(tuple(toks[i:i + n]))
                if hit is not None:
                    out.append(Entity(hit[1], hit[0]))
                    i += n
                    break
            else:
                i += 1
        return out

    def extract(self, row: Mapping[str, object]) -> List[Entity]:
        """The entities of one item (a column -> value mapping), without duplicates, in order."""
        out: List[Entity] = []
        for column, typ in self.attributes.items():
            if column not in row:
                raise KeyError(f"attribute column {column!r} is missing from the item (it has {sorted(row)})")
            value = row[column]
            for v in (value if isinstance(value, (list, tuple)) else [value]):
                if v is not None and str(v).strip():
                    out.append(Entity(typ, str(v).strip()))
        if self.title_column is not None:
            if self.title_column not in row:
                raise KeyError(f"title column {self.title_column!r} is missing from the item (it has {sorted(row)})")
            title = row[self.title_column]
            out.extend(self.match(title) if title else [])
            if self.tagger is not None and title:
                out.extend(Entity(str(t), str(v)) for t, v in self.tagger.tag(title))
        return list(dict.fromkeys(out))

    def extract_table(self, table: pa.Table) -> pa.Array:
        """A list<string> column of entity texts, one row per row of `table`."""
        missing = [c for c in self.columns if c not in table.column_names]
        if missing:
            raise KeyError(f"columns {missing} are missing from the table (it has {table.column_names})")
        rows = table.select(self.columns).to_pylist()
        return pa.array([[e.text for e in self.extract(r)] for r in rows], pa.list_(pa.string()))


def entity_types(texts: Sequence[str]) -> List[str]:
    return [Entity.parse(t).type for t in texts]
