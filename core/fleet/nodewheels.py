"""The wheels ``hosts bootstrap`` ships to a node: mlfleet itself and the agent's dependencies.

mlfleet's wheel is made from the distribution this controller runs: from a
source checkout (an editable install) pip builds it; from a wheel install it
is packed again from the installed files that the distribution's RECORD
lists, so a user who ran ``pip install mlfleet`` can bootstrap too.

The agent's dependency wheels are resolved here, on the controller's machine
(which reaches a package index, or has them cached), for the node's Python
and platform (``pip download --only-binary=:all: --python-version ...
--platform ...``), and installed on the node with ``--no-index``: a node
never needs an index. They are kept per (interpreter, platform) under the
mlfleet home, and a later bootstrap for the same kind of node resolves from
that cache first, without the network. Delete the folder to pick up newer
releases.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import secrets
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlfleet.core.base.errors import UnavailableError, UsageError
from mlfleet.core.base.private import private_dir

# What ``mlfleet agent serve|connect`` imports: the node needs nothing else.
# uv builds jobs' environments on the node (agents/envs/).
AGENT_REQUIREMENTS = ["msgspec>=0.18", "psutil>=5.9", "nvidia-ml-py>=12.535", "pyyaml>=6.0", "uv>=0.13",
                      "prometheus_client>=0.20"]  # the agent scrapes the servers it supervises

# Run on the node with its Python: what pip needs to pick wheels for it (standard library only).
PROBE = ("import json, platform, sys, sysconfig; lib, ver = platform.libc_ver(); "
         "print(json.dumps({'version': list(sys.version_info[:2]), 'implementation': sys.implementation.name, "
         "'abiflags': getattr(sys, 'abiflags', ''), 'machine': platform.machine(), "
         "'platform': sysconfig.get_platform(), 'libc': lib, 'libc_version': ver}))")

_OLDEST_MANYLINUX = 5  # manylinux_2_5 (manylinux1)
_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
_SKIPPED = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}  # written by the installer, not in a wheel


@dataclass(frozen=True)
class NodeTarget:
    """The interpreter and platform of a node, as pip's ``download`` options name them."""

    python_version: str  # "3.11"
    implementation: str  # "cp"
    abi: str  # "cp311"
    platforms: tuple[str, ...]  # most specific first

    @property
    def key(self) -> str:
        """The wheelhouse folder name: one per kind of node."""
        return f"{self.implementation}{self.python_version.replace('.', '')}-{self.abi}-{self.platforms[0]}"

    def describe(self) -> str:
        return f"Python {self.python_version} ({self.abi}) on {self.platforms[0]}"


def node_target(probe_output: str, host: str) -> NodeTarget:
    """The target from :data:`PROBE`'s output on ``host``."""
    try:
        # The last line: a node's shell start-up files may print a banner before it.
        facts = json.loads((probe_output.strip().splitlines() or [""])[-1])
        major, minor = (int(x) for x in facts["version"])
        name = str(facts["implementation"])
        machine = str(facts["machine"])
        platform_name = str(facts["platform"])
    except (ValueError, KeyError, TypeError):
        raise UnavailableError(f"{host}: could not read its Python's facts ({probe_output.strip()[:100]!r})") from None
    implementation = {"cpython": "cp", "pypy": "pp"}.get(name, name[:2])
    abi = f"cp{major}{minor}{facts.get('abiflags') or ''}" if implementation == "cp" else "none"
    if platform_name.startswith("linux") and facts.get("libc") == "glibc":
        try:
            glibc_major, glibc_minor = (int(x) for x in str(facts["libc_version"]).split(".")[:2])
        except ValueError:
            raise UnavailableError(f"{host}: could not read its glibc version ({facts['libc_version']!r})") from None
        if glibc_major != 2:
            raise UnavailableError(f"{host}: glibc {facts['libc_version']} is not one pip knows wheels for")
        platforms: list[str] = []
        for m in range(glibc_minor, _OLDEST_MANYLINUX - 1, -1):
            platforms.append(f"manylinux_2_{m}_{machine}")
            if m in _LEGACY_MANYLINUX:
                platforms.append(f"{_LEGACY_MANYLINUX[m]}_{machine}")
    else:
        platforms = [platform_name.replace("-", "_").replace(".", "_")]
    return NodeTarget(f"{major}.{minor}", implementation, abi, tuple(platforms))


def dependency_wheels(cache_root: Path, target: NodeTarget, out_dir: Path, host: str,
                      requirements: list[str] = AGENT_REQUIREMENTS) -> list[Path]:
    """Wheels of ``requirements`` for ``target`` in ``out_dir``: from the cache alone if it has them, else an index."""
    cache = private_dir(cache_root / target.key)
    argv = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
            "--python-version", target.python_version, "--implementation", target.implementation,
            "--abi", target.abi, *(arg for p in target.platforms for arg in ("--platform", p)),
            "-d", str(out_dir), "--find-links", str(cache)]
    offline = _pip(argv + ["--no-index", *requirements])
    if offline.returncode != 0:
        online = _pip(argv + requirements)
        if online.returncode != 0:
            raise UnavailableError(
                f"could not get the agent's dependency wheels for {host} ({target.describe()}): "
                f"{_pip_says(online)}; the "
                f"controller's machine needs a package index for this once, or the wheels in {cache}")
    wheels = sorted(out_dir.glob("*.whl"))
    for wheel in wheels:
        if not (cache / wheel.name).exists():  # by a name of its own: two bootstraps may fill the cache at once
            partial = cache / f".{wheel.name}.{secrets.token_hex(6)}.part"
            shutil.copy2(wheel, partial)
            partial.rename(cache / wheel.name)
    return wheels


def _pip(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL, cwd="/")
    except subprocess.TimeoutExpired:
        raise UnavailableError("pip did not finish fetching the agent's dependency wheels within 900 s") from None


def _pip_says(result: subprocess.CompletedProcess[str]) -> str:
    """pip's own one-line reason (its first ERROR line), not the pages around it."""
    text = (result.stderr or "") + "\n" + (result.stdout or "")
    generic = ("subprocess-exited-with-error", "metadata-generation-failed")
    errors = [line.strip()[6:].strip() for line in text.splitlines()
              if line.strip()[:6].lower() == "error:" and not any(g in line for g in generic)]
    return (errors[0][:300] if errors else " ".join(text.split())[-300:] or f"exit {result.returncode}").rstrip(".")


def mlfleet_wheel(out_dir: Path) -> Path:
    """A wheel of the mlfleet this process runs, in ``out_dir``."""
    try:
        dist = importlib.metadata.distribution("mlfleet")
    except importlib.metadata.PackageNotFoundError:
        raise UsageError("this mlfleet is not an installed distribution (no mlfleet in pip's list); install it "
                         "with pip (pip install mlfleet, or pip install -e . in a clone) to bootstrap nodes") from None
    source = _editable_source(dist)
    _check_running(dist, source)
    if source is not None:
        return _build_from_source(source, out_dir)
    return _pack_installed(dist, out_dir)


def _check_running(dist: importlib.metadata.Distribution, source: Path | None) -> None:
    """The distribution pip lists must be the mlfleet this process imported, or a node gets another one."""
    import mlfleet

    running = Path(mlfleet.__file__).resolve()
    listed = (source / "package" / "__init__.py") if source is not None else Path(str(dist.locate_file("mlfleet/__init__.py")))
    if listed.resolve() != running:
        raise UsageError(f"this process runs the mlfleet in {running.parent}, but the installed distribution pip "
                         f"lists is {listed.parent}; bootstrap from one installation (uninstall the other)")


def _editable_source(dist: importlib.metadata.Distribution) -> Path | None:
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    if not direct.get("dir_info", {}).get("editable"):
        return None
    url = urlparse(str(direct.get("url", "")))
    return Path(unquote(url.path)) if url.scheme == "file" else None


def _build_from_source(root: Path, out_dir: Path) -> Path:
    if not (root / "pyproject.toml").exists():
        raise UsageError(f"mlfleet was installed from the checkout {root}, which is no longer there; "
                         "install it again (pip install -e . in a clone, or pip install mlfleet)")
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out_dir), str(root)]
    # With the setuptools already here first: no index needed (a controller offline, a laptop on a plane);
    # in an isolated build environment (setuptools fetched from the index) when that fails.
    for extra in (["--no-build-isolation"], []):
        try:
            result = subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=600,
                                    stdin=subprocess.DEVNULL, cwd="/")
        except subprocess.TimeoutExpired:
            raise UnavailableError("building the mlfleet wheel did not finish within 600 s") from None
        wheels = sorted(out_dir.glob("mlfleet-*.whl"))
        if result.returncode == 0 and wheels:
            return wheels[-1]
    raise UnavailableError(f"building the mlfleet wheel from {root} failed: {_pip_says(result)}; without a "
                           "package index pip needs setuptools>=68 and wheel installed beside mlfleet "
                           "(pip install 'setuptools>=68' wheel), or install mlfleet from a wheel")


def _pack_installed(dist: importlib.metadata.Distribution, out_dir: Path) -> Path:
    """Pack the installed files of a wheel install into a wheel again (a new RECORD, the same WHEEL tags)."""
    files = [f for f in dist.files or [] if f.parts and f.parts[0] != ".."]  # ../bin/mlfleet: pip makes it again
    info = next((f.parts[0] for f in files if len(f.parts) == 2 and f.parts[0].endswith(".dist-info")
                 and f.parts[1] == "METADATA"), None)
    if info is None:
        raise UsageError("the installed mlfleet lists no files (its RECORD is missing); reinstall it with pip")
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")]
    if "Root-Is-Purelib: true" not in wheel_meta or not tags:
        raise UsageError("the installed mlfleet is not a pure-Python wheel install; bootstrap from a clone instead")
    name = f"{info.removesuffix('.dist-info')}-{tags[0]}.whl"
    records: list[str] = []
    partial = out_dir / f".{name}.part"
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as wheel:
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc" or (file.parts[0] == info and file.name in _SKIPPED):
                continue
            try:
                data = Path(str(file.locate())).read_bytes()
            except OSError as exc:
                raise UsageError(f"the installed mlfleet is missing {file} ({exc.strerror}); reinstall it with pip") from None
            arcname = file.as_posix()
            wheel.writestr(zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{arcname},sha256={digest},{len(data)}")
        records.append(f"{info}/RECORD,,")
        wheel.writestr(zipfile.ZipInfo(f"{info}/RECORD", date_time=(1980, 1, 1, 0, 0, 0)),
                       "\n".join(records) + "\n", zipfile.ZIP_DEFLATED)
    partial.rename(out_dir / name)
    return out_dir / name
