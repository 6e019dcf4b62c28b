"""Lineage on the node: what a run read and which Python ran it, recorded before the job starts.

The runner calls :func:`node_lineage` and writes the answer to the run's
``lineage.json``; the controller stores it with the run.

Inputs (the spec's ``inputs:``, relative to the workdir, globs allowed) are
hashed in full (sha256); a folder with the shared tree hash (core/base/tree_hash.py),
so a link or FIFO inside one is an input error naming it, not followed. Hashes are cached in ``STATE_DIR/hash-cache/`` by
(real path, size, mtime_ns, inode): a 200 GB dataset is read once, and
again only when it changes. Like git's index and rsync, this trusts that a
file rewritten in place keeps neither its size nor its mtime.

Python and packages: the interpreter that runs the job is ``argv[0]`` when
it is a Python (``python``, ``python3.11``, a venv's ``bin/python``);
otherwise (``/bin/sh -c ...``, a binary) it is the agent's own. Packages
are that interpreter's ``importlib.metadata`` distributions as sorted
``name==version`` lines, recorded as a count and a sha256.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec

from mlfleet.core.base.models import InputDigest, NodeLineage
from mlfleet.core.base.tree_hash import TreeError, digest_at

from mlfleet.agents.rundir import write_json_atomic

_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
_GLOB = re.compile(r"[*?[]")
_ENV_SCRIPT = (
    "import sys, platform, importlib.metadata as m\n"
    "names = sorted({(d.metadata['Name'] or '').lower() + '==' + (d.version or '') for d in m.distributions()})\n"
    "print(platform.python_version()); print(sys.executable)\n"
    "print('\\n'.join(names))\n"
)


class HashCache:
    """sha256 of files by (real path, size, mtime_ns, inode), one small JSON file per path."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.hashed_bytes = 0

    def entry_path(self, real: str) -> Path:
        return self.folder / f"{hashlib.sha256(real.encode('utf-8', 'surrogateescape')).hexdigest()}.json"

    def sha256(self, path: str) -> tuple[str, int]:
        real = os.path.realpath(path)
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return self.sha256_open(fd, real, os.fstat(fd))
        finally:
            os.close(fd)

    def sha256_open(self, fd: int, real: str, st: os.stat_result) -> tuple[str, int]:
        """The sha256 of the open file ``fd`` (at ``real``, with ``st``), from the cache when it is unchanged."""
        key = {"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
        entry = self.entry_path(real)
        try:
            cached = json.loads(entry.read_text())
            if {k: cached.get(k) for k in key} == key and isinstance(cached.get("sha256"), str):
                return cached["sha256"], st.st_size
        except (OSError, ValueError):
            pass
        h = hashlib.sha256()
        os.lseek(fd, 0, os.SEEK_SET)
        while chunk := os.read(fd, 4 << 20):
            h.update(chunk)
            self.hashed_bytes += len(chunk)
        digest = h.hexdigest()
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns):  # unchanged while we read it
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_json_atomic(entry, {**key, "sha256": digest})
        return digest, st.st_size


def hash_inputs(patterns: list[str], workdir: str, cache: HashCache) -> list[InputDigest]:
    """One entry per matched file or folder (per pattern when nothing matches)."""
    out: list[InputDigest] = []
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else os.path.join(workdir, pattern)
        matches = sorted(glob.glob(full, recursive=True)) if _GLOB.search(pattern) else [full]
        matches = [m for m in matches if os.path.exists(m)]
        if not matches:
            out.append(InputDigest(path=pattern, error="no such file or folder"))
            continue
        for match in matches:
            shown = match if os.path.isabs(pattern) else os.path.relpath(match, workdir)
            try:
                out.append(_digest(shown, match, cache))
            except OSError as exc:
                out.append(InputDigest(path=shown, error=exc.strerror or str(exc)))
    return out


def _digest(shown: str, path: str, cache: HashCache) -> InputDigest:
    if not os.path.isdir(path):
        digest, size = cache.sha256(path)
        return InputDigest(path=shown, sha256=digest, size=size)
    # A folder: the shared tree hash (core/base/tree_hash.py), the one pipelines key on; each file through the cache.
    real = os.path.realpath(path)  # the folder itself may be reached through links; nothing inside it is followed

    def cached(fd: int, rel: str, st: os.stat_result) -> tuple[str, int]:
        return cache.sha256_open(fd, os.path.join(real, rel) if rel else real, st)

    try:
        sha, size, files = digest_at(Path(os.path.dirname(real)), [os.path.basename(real)], cached)
    except TreeError as exc:
        return InputDigest(path=shown, error=exc.problem)
    return InputDigest(path=shown, sha256=sha, size=size, files=files)


def job_interpreter(argv: list[str], env: dict[str, str]) -> str:
    """The Python that runs the job: argv[0] if it is one, else the agent's own."""
    if argv:
        found = shutil.which(argv[0], path=env.get("PATH")) if "/" not in argv[0] else argv[0]
        if found and _PYTHON.match(os.path.basename(argv[0])):
            return found
    return sys.executable


def python_environment(interpreter: str, env: dict[str, str], cwd: str) -> dict[str, object]:
    """Version, executable and a digest of the distributions ``interpreter`` sees in the job's environment."""
    try:
        done = subprocess.run([interpreter, "-c", _ENV_SCRIPT], capture_output=True, text=True, timeout=120,
                              env=env, cwd=cwd, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) < 2:
        return {}
    packages = [line for line in lines[2:] if line]
    return {"python": lines[0], "python_executable": lines[1],
            "packages_hash": hashlib.sha256("\n".join(packages).encode()).hexdigest(), "packages": len(packages)}


def hash_launch_inputs(launch: dict, state_dir: Path) -> tuple[list[InputDigest], int]:
    """The digests of a launch's inputs, and how many bytes had to be read for them."""
    cache = HashCache(state_dir / "hash-cache")
    inputs = hash_inputs(list(launch.get("inputs") or []), launch["workdir"], cache)
    return inputs, cache.hashed_bytes


def node_lineage(launch: dict, inputs: list[InputDigest], hashed_bytes: int) -> NodeLineage:
    """Inputs (hashed before the job started) plus the job's Python (looked up while it runs)."""
    env = dict(launch.get("env") or {})
    found = python_environment(job_interpreter(list(launch.get("argv") or []), env), env, launch["workdir"])
    return msgspec.convert({**found, "inputs": msgspec.to_builtins(inputs), "hashed_bytes": hashed_bytes},
                           NodeLineage)
