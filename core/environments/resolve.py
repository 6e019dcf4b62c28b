"""Resolving a job's requirements for one node's interpreter and platform, on the workstation, with uv.

Why uv: ``uv pip compile --python-version --python-platform`` resolves for
another machine without that machine's interpreter, in a few hundred ms,
and its pylock output lists exactly the wheels that fit the platform (URL,
size, sha256): the fetch manifest and the input of ``env_hash`` at once.
``--only-binary :all:`` because the node builds offline and cannot build an
sdist; ``--no-header`` because the header holds the command line;
``UV_PYTHON_DOWNLOADS=never`` because uv otherwise spends seconds trying to
download an interpreter it only needs for sdists; ``UV_NO_CONFIG`` so that a
stray uv.toml in some folder never changes a resolution (the index comes
from config.yaml's ``environments:``). Measured facts: /work/notes/env-design.md.

A resolution is cached by (requirements text, target, index settings) in a
file under the data dir, so a repeat submit does not resolve again. A
requirement that cannot be met is a :class:`ResolutionError` whose message is
one sentence: uv's first ``cause:`` line, or its ``error:`` line.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import unquote, urlparse

import msgspec

from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.models import PinnedWheel
from mlfleet.core.base.private import open_private, private_dir

RESOLVE_TIMEOUT_S = 300.0
# uv's --python-platform values for Linux with glibc (uv 0.13); another minor maps to the next lower one.
_UV_GLIBC_MINORS = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)


class EnvironmentFailure(MlfleetError):
    """An environment cannot be prepared for a host: the job fails with this one sentence."""


class ResolutionError(EnvironmentFailure):
    """The requirements cannot be resolved for a node (a misspelt name, no fitting wheel, a stale uv.lock)."""


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """What a resolution is for: the node's interpreter and its platform, as uv names it."""

    python_version: str  # full, e.g. "3.11.2"
    platform: str  # e.g. "x86_64-manylinux_2_36"
    implementation: str = "cpython"


class IndexSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where wheels come from (config.yaml ``environments:``)."""

    index_url: str | None = None  # None: uv's default (PyPI)
    find_links: tuple[str, ...] = ()
    no_index: bool = False  # only find_links: for offline teams and tests

    def uv_args(self) -> list[str]:
        args: list[str] = []
        if self.no_index:
            args.append("--no-index")
        elif self.index_url:
            args += ["--default-index", self.index_url]
        for folder in self.find_links:
            args += ["--find-links", folder]
        return args


class ResolvedWheel(msgspec.Struct, frozen=True, kw_only=True):
    """A pinned wheel and where to fetch it (an https URL, or a file:// one from find_links)."""

    wheel: PinnedWheel
    url: str


def uv_platform(reported: str) -> str:
    """The ``--python-platform`` value for a node's platform (``x86_64-manylinux_2_29`` -> ``..._2_28``).

    uv lists only some glibc minors; a wheel for a lower one always runs on a
    higher glibc, so the next lower listed value is right. Anything that is
    not ``<arch>-manylinux_2_<minor>`` is passed on as it is.
    """
    match = re.fullmatch(r"(x86_64|aarch64)-manylinux_2_(\d+)", reported)
    if not match:
        return reported
    minor = int(match.group(2))
    fitting = [m for m in _UV_GLIBC_MINORS if m <= minor]
    if not fitting:
        return f"{match.group(1)}-manylinux2014" if minor >= 17 else reported
    return f"{match.group(1)}-manylinux_2_{fitting[-1]}"


def _uv() -> str:
    import uv  # the uv wheel: a static binary and a finder for it

    return uv.find_uv_bin()


def _uv_environment(cache_dir: Path) -> dict[str, str]:
    # Without COLUMNS: an exported one (pytest-xdist's workers set COLUMNS=80) makes uv wrap its sentences,
    # and first_sentence would give the user half of one.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_", "VIRTUAL_ENV")) and k != "COLUMNS"}
    env.update(UV_PYTHON_DOWNLOADS="never", UV_NO_CONFIG="1", UV_CACHE_DIR=str(cache_dir), NO_COLOR="1")
    return env


def first_sentence(stderr: str) -> str:
    """uv's reason in one sentence: the first ``cause:`` line, else the ``error:`` line, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for prefix in ("cause:", "error:"):
        for line in lines:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
    return lines[-1] if lines else "uv failed without saying why"


def _run(argv: list[str], cwd: Path, cache_dir: Path) -> None:
    try:
        result = subprocess.run(argv, cwd=cwd, env=_uv_environment(cache_dir), capture_output=True, text=True,
                                timeout=RESOLVE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ResolutionError(f"resolving the environment took longer than {RESOLVE_TIMEOUT_S:.0f} s") from None
    if result.returncode != 0:
        raise ResolutionError(first_sentence(result.stderr))


class Resolver:
    """Resolutions for targets, cached in ``cache_root`` (one JSON file per key, 0600)."""

    def __init__(self, cache_root: Path, index: IndexSettings, uv_cache: Path) -> None:
        self.cache_root = cache_root
        self.index = index
        self.uv_cache = uv_cache

    def key(self, requirements: str, target: Target) -> str:
        text = msgspec.json.encode({"requirements": requirements, "target": target, "index": self.index},
                                   order="sorted")
        return hashlib.sha256(text).hexdigest()

    def resolve(self, requirements: str, target: Target) -> list[ResolvedWheel]:
        """The wheels for ``requirements`` (requirements.txt text) on ``target``; from the cache when known."""
        cached = self.cache_root / f"{self.key(requirements, target)}.json"
        try:
            return msgspec.json.decode(cached.read_bytes(), type=list[ResolvedWheel])
        except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
            pass
        if not requirements.strip():
            return []
        with tempfile.TemporaryDirectory(prefix="mlfleet-resolve-") as tmp:
            folder = Path(tmp)
            (folder / "requirements.in").write_text(requirements if requirements.endswith("\n") else requirements + "\n")
            _run([_uv(), "pip", "compile", "--python-version", target.python_version, "--python-platform",
                  uv_platform(target.platform), "--only-binary", ":all:", "-q", "--no-header", *self.index.uv_args(),
                  "requirements.in", "-o", "pylock.mlfleet.toml"], folder, self.uv_cache)
            wheels = parse_pylock((folder / "pylock.mlfleet.toml").read_text(), target.platform)
        private_dir(self.cache_root)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.part")
        fd = open_private(partial)
        try:
            os.write(fd, msgspec.json.encode(wheels))
        finally:
            os.close(fd)
        os.replace(partial, cached)
        return wheels

    def export_project(self, pyproject: str, lock: str) -> str:
        """A uv project's locked requirements (``uv export --locked``, without the project itself).

        ``--locked``, not ``--frozen``: a lock older than pyproject.toml is an
        error ("needs to be updated"), never an environment without the new
        dependency. The project's own code stays out of the environment (it
        runs from the workdir), so editing it never makes a new env_hash.
        """
        with tempfile.TemporaryDirectory(prefix="mlfleet-export-") as tmp:
            folder = Path(tmp)
            (folder / "pyproject.toml").write_text(pyproject)
            (folder / "uv.lock").write_text(lock)
            _run([_uv(), "export", "--format", "requirements-txt", "--locked", "--no-emit-project", "--no-hashes",
                  "--no-header", "-q", *self.index.uv_args(), "-o", "exported.txt"], folder, self.uv_cache)
            return (folder / "exported.txt").read_text()


def parse_pylock(text: str, platform: str) -> list[ResolvedWheel]:
    """The wheels of a pylock.toml (uv's), one per package: the best fit for ``platform`` when several fit."""
    data = tomllib.loads(text)
    out: list[ResolvedWheel] = []
    for package in data.get("packages", []):
        name, version = _normalise(str(package["name"])), str(package["version"])
        candidates = package.get("wheels") or []
        if not candidates:
            raise ResolutionError(f"{name}=={version} has no wheel for {platform} (only a source distribution)")
        best = max(candidates, key=lambda w: _tag_rank(_filename(w)))
        url = best.get("url") or Path(best["path"]).absolute().as_uri()
        size = best.get("size")
        if size is None and url.startswith("file:"):
            size = os.path.getsize(unquote(urlparse(url).path))
        out.append(ResolvedWheel(url=url, wheel=PinnedWheel(
            name=name, version=version, filename=_filename(best), sha256=str(best["hashes"]["sha256"]).lower(),
            size=int(size or 0))))
    return sorted(out, key=lambda w: w.wheel.name)


def _filename(wheel: dict) -> str:
    if wheel.get("name"):
        return str(wheel["name"])
    return unquote(urlparse(wheel.get("url") or wheel.get("path", "")).path.rsplit("/", 1)[-1])


def _tag_rank(filename: str) -> tuple[int, int, int]:
    """Higher is better: a glibc wheel over musl over pure Python, then the highest manylinux version.

    uv has already kept only the wheels the platform accepts, so the highest
    manylinux tag among them is the highest one at or below the node's glibc.
    """
    platform_tags = filename[:-4].split("-")[-1].split(".") if filename.endswith(".whl") else []
    best = (0, 0, 0)
    for tag in platform_tags:
        if m := re.match(r"manylinux_(\d+)_(\d+)_", tag):
            rank = (2, int(m.group(1)), int(m.group(2)))
        elif m := re.match(r"manylinux(1|2010|2014)_", tag):
            rank = (2, 2, {"1": 5, "2010": 12, "2014": 17}[m.group(1)])
        elif tag.startswith("musllinux_"):
            rank = (1, 0, 0)
        else:
            rank = (0, 0, 0)
        best = max(best, rank)
    return best


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
