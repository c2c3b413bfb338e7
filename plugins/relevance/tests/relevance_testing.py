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


def policy_seed() -> int:
    """The tiny policies' initialisation seed: RECIS_TEST_POLICY_SEED (default 0), so that a test
    can be checked under another initialisation."""
    return int(os.environ.get("RECIS_TEST_POLICY_SEED", "0"))


def tiny_llama(hidden: int = 32, positions: int = 128) -> dict:
    """The policy spec of the examples' tiny Llama (`example_cli.SMALL_LLAMA`, one layer; no
    downloads), `hidden` wide, with `positions` positions, seeded by `policy_seed()`."""
    from recis_relevance.example_cli import SMALL_LLAMA

    return {"config": {**SMALL_LLAMA, "hidden_size": hidden, "intermediate_size": 2 * hidden,
                       "max_position_embeddings": positions}, "seed": policy_seed()}


@pytest.fixture(autouse=False, scope="module")
def one_thread():
    """Tiny matmuls: a second thread only adds contention on a busy 2-core machine (a test module
    turns it on for all its tests with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def weights(job) -> dict:
    """The tensors of a job's model state."""
    import torch

    return {k: v for k, v in job.model.state_dict().items() if isinstance(v, torch.Tensor)}


def assert_same_job_state(a, b) -> None:
    """Two jobs hold the same model state, generator states, reference policy and dense optimizer
    state, bit for bit (what a resumed stage must reproduce)."""
    import torch

    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k], k
    for name, g in a.model.generators().items():
        assert torch.equal(g.get_state(), b.model.generators()[name].get_state()), name
    ref_a, ref_b = getattr(a.model, "reference", None), getattr(b.model, "reference", None)
    if ref_a is not None:
        for (n, p), (_, q) in zip(ref_a.module.named_parameters(), ref_b.module.named_parameters()):
            assert torch.equal(p, q), f"reference {n}"
    oa, ob = a.dense_optimizer.state_dict()["state"], b.dense_optimizer.state_dict()["state"]
    assert oa.keys() == ob.keys()
    for k in oa:
        for name, t in oa[k].items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(ob[k][name])), (k, name)
