"""A pipeline step's declared outputs, hashed and packed on the node where the job ran, then read by the controller.

When a job step ends succeeded, the controller asks ``outputs_pack(run_id,
outputs={name: path})`` and then reads each packed tar with ``outputs_read``
(docs/pipelines.md, "Where outputs live"). Each output is walked once, with
the shared tree hash (core/base/tree_hash.py), and written into its tar in
the same pass: the sha256 answered is the hash of exactly the bytes packed,
even if the job's files were to change under the walk. Links, FIFOs,
sockets and devices are refused with the tree hash's sentence (a link's
target is a path on this host; a FIFO could block the agent).

The tars are deterministic (sorted names, zero times and owners, modes
0644/0755 only). They carry what the hash covers: the files, and a folder
output's own folder (so an empty one arrives as a folder); an empty folder
inside one adds nothing to its hash and is not carried (as in git). The
tars live in ``RUN/outputs/``, beside ``index.json``, which records what
was packed: asking again with the same paths answers the same, without
reading the outputs again. The path is read in the run's work
folder: its copy of the code snapshot (``work/``), or for a run without code
the launch workdir; both are ``launch.json``'s ``workdir``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import tarfile
import threading
from pathlib import Path
from typing import Any

from mlfleet.core.base.errors import NotFoundError, UsageError
from mlfleet.core.base.tree_hash import TreeError, digest_at, relative_parts

from mlfleet.agents.rundir import RunDir, read_json, write_json_atomic

OUTPUTS_DIR = "outputs"
INDEX = "index.json"
MAX_OUTPUTS = 256  # outputs in one pack request
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
_locks: dict[str, threading.Lock] = {}  # one pack at a time per run (two asks at once pack once)
_locks_guard = threading.Lock()


def pack_outputs(run: RunDir, outputs: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``{name: {path, sha256, size, files, archive_size}}`` for the declared outputs, each packed into its tar."""
    if not isinstance(outputs, dict) or not outputs:
        raise UsageError("outputs_pack needs at least one output (name -> path)")
    if len(outputs) > MAX_OUTPUTS:
        raise UsageError(f"outputs_pack asks for {len(outputs)} outputs; {MAX_OUTPUTS} at most")
    for name, path in outputs.items():
        _check_name(name)
        if not isinstance(path, str):
            raise UsageError(f"output {name}: its path must be text")
    launch = run.launch
    if not launch or not launch.get("workdir"):
        raise NotFoundError(f"run {run.run_id} has no launch record on this host")
    workdir = Path(launch["workdir"])
    with _lock(run):
        folder = run.file(OUTPUTS_DIR)
        folder.mkdir(mode=0o700, exist_ok=True)
        index = read_json(folder / INDEX) or {}
        answer: dict[str, dict[str, Any]] = {}
        for name, path in outputs.items():
            known = index.get(name)
            if isinstance(known, dict) and known.get("path") == path and (folder / f"{name}.tar").is_file():
                answer[name] = _public(known)
                continue
            index[name] = _pack_one(workdir, folder, name, path)
            write_json_atomic(folder / INDEX, index)
            answer[name] = _public(index[name])
        return answer


def read_packed(run: RunDir, name: str, offset: int, max_bytes: int) -> dict[str, Any]:
    """Raw bytes (``data``, msgpack bin on the wire) of output ``name``'s tar from ``offset``, with ``end`` and ``eof``."""
    _check_name(name)
    if not isinstance(offset, int) or offset < 0:
        raise UsageError("offset cannot be negative")
    index = read_json(run.file(OUTPUTS_DIR) / INDEX) or {}
    if name not in index:
        raise NotFoundError(f"run {run.run_id} has no packed output {name!r} on this host; ask outputs_pack first")
    with open(run.file(OUTPUTS_DIR) / f"{name}.tar", "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(offset)
        data = fh.read(max_bytes)
    return {"run_id": run.run_id, "name": name, "offset": offset, "end": offset + len(data), "size": size,
            "data": data, "eof": offset + len(data) >= size}


def _pack_one(workdir: Path, folder: Path, name: str, path: str) -> dict[str, Any]:
    try:
        parts = relative_parts(path)
    except TreeError as exc:
        raise UsageError(f"output {name} ({path}) {exc.problem}") from None
    top = parts[-1]
    final = folder / f"{name}.tar"
    tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
                def pack(fd: int, rel: str, info: os.stat_result) -> tuple[str, int]:
                    member = _member(f"{top}/{rel}" if rel else top, 0o755 if info.st_mode & 0o111 else 0o644)
                    member.size = info.st_size
                    reader = _HashingReader(fd)
                    try:
                        tar.addfile(member, reader)
                    except (OSError, tarfile.TarError):  # shorter than its size when listed: written while packed
                        raise TreeError(f"changed while it was packed ({path}/{rel}); pack it once the job is done"
                                        if rel else "changed while it was packed; pack it once the job is done")
                    return reader.hash.hexdigest(), reader.size

                try:
                    sha, size, files = digest_at(workdir, parts, pack)
                except TreeError as exc:
                    error = NotFoundError if exc.missing else UsageError
                    raise error(f"output {name} ({path}) {exc.problem}") from None
                if files is not None:  # the folder itself, so that an empty one arrives as a folder
                    folder_member = _member(top, 0o755)
                    folder_member.type = tarfile.DIRTYPE
                    tar.addfile(folder_member)
        archive_size = tmp.stat().st_size
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": path, "sha256": sha, "size": size, "files": files, "archive_size": archive_size}


class _HashingReader(io.RawIOBase):
    """A file descriptor read for tarfile, hashed on the way: the hash is of exactly what was packed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = os.read(self.fd, n if n >= 0 else 1 << 20)
        self.hash.update(data)
        self.size += len(data)
        return data


def _member(name: str, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = mode
    return info


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record.get(key) for key in ("path", "sha256", "size", "files", "archive_size")}


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(f"invalid output name {name!r} (letters, digits, _ . -; a letter or _ first)")


def _lock(run: RunDir) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(run.root), threading.Lock())

