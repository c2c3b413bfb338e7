"""Makes the plugin importable and its entry points discoverable when it is not pip-installed
(`make install` installs it): a dist-info with the same entry points goes on sys.path."""
import os
import sys
import tempfile
from importlib import metadata

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("RECIS_HYPOTHESIS_PROFILE", "default"))

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

from relevance_testing import WORDS, tiny_encoder  # noqa: E402


@pytest.fixture
def tiny():
    """Options of a tiny random BERT and a word-list tokenizer (no downloads)."""
    return {"encoder": tiny_encoder(), "tokenizer": {"vocab": list(WORDS)}}
