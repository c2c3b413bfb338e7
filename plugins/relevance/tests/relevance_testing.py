"""Test helpers of the relevance plugin: makes the plugin importable and its entry points
discoverable when it is not pip-installed (`make install` installs it), and gives tiny random
encoders (no downloads). Test modules import this module before recis_relevance."""
import os
import sys
import tempfile
from importlib import metadata

import itertools

import pyarrow as pa
import pytest

PLUGIN = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ensure_installed():
    if PLUGIN not in sys.path:
        try:
            import recis_relevance  # noqa: F401
        except ImportError:
            sys.path.insert(0, PLUGIN)
    if any(ep.name == "ebrm" for ep in metadata.entry_points(group="recis.towers")):
        return
    import tomllib

    with open(os.path.join(PLUGIN, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    site = tempfile.mkdtemp(prefix="recis-relevance-meta-")
    info = os.path.join(site, f"recis_relevance-{project['version']}.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write("[recis.towers]\n" + "".join(f"{k} = {v}\n" for k, v in project["entry-points"]["recis.towers"].items()))
    sys.path.append(site)


_ensure_installed()

WORDS = (": , comedy horror drama romance action movies films from the not without but no year genre theme sequel "
         "1930s 1940s 1950s 1960s 1970s 1980s 1990s 1985 1988 1990 1995 1999 2000 toy story love war star").split()


def tiny_encoder(seed: int = 0, hidden: int = 32, layers: int = 2) -> dict:
    return {"config": {"model_type": "bert", "hidden_size": hidden, "num_hidden_layers": layers,
                       "num_attention_heads": 2, "intermediate_size": 2 * hidden, "vocab_size": 96,
                       "max_position_embeddings": 64}, "seed": seed}


@pytest.fixture
def tiny():
    """Options of a tiny random BERT and a word-list tokenizer (no downloads)."""
    return {"encoder": tiny_encoder(), "tokenizer": {"vocab": list(WORDS)}}


#: the genres and genre combinations of `synthetic_items`
GENRES = ["Comedy", "Horror", "Sci-Fi", "Children's"]
COMBOS = [["Comedy"], ["Horror"], ["Comedy", "Horror"], ["Sci-Fi", "Children's"], ["Comedy", "Sci-Fi"],
          ["Children's", "Comedy", "Horror"]]


def synthetic_items() -> pa.Table:
    """Every year 1925..2002 (all decade boundaries and their neighbours) with each genre combo."""
    rows = [{"item_id": i, "title": f"Film {i} ({year})", "year": year, "genres": list(g)}
            for i, (year, g) in enumerate(itertools.product(range(1925, 2003), COMBOS), start=1)]
    return pa.Table.from_pylist(rows, schema=pa.schema([("item_id", pa.int64()), ("title", pa.string()),
                                                        ("year", pa.int32()), ("genres", pa.list_(pa.string()))]))
