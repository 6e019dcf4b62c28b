"""A step's declared outputs, content-hashed when it ends, and a cache hit's outputs checked before reuse.

"Outputs are content-hashed when the step ends" and "a cache hit whose
outputs are gone or changed is a miss, never a false hit" (issue 17). A
file's hash is the sha256 of its bytes; a folder's is the sha256 over one
line ``RELATIVE/PATH\\0SHA256\\n`` per file, the lines sorted by path (its
UTF-8 bytes), so the same tree hashes the same wherever and however it
was written. Empty folders add nothing (as in git).

The walk is core/base/tree_hash.py's (shared with the agent, which hashes
what it packs, and with lineage). Hostile trees are refused, never followed: the walk goes from the workdir
down by directory file descriptors with ``O_NOFOLLOW``, so a symbolic link
anywhere (``out`` -> ``/etc``, a link inside a folder) is an error naming
it, and a FIFO, socket or device is refused without being opened for
reading (it could block, or be endless). Why links are refused rather than
hashed: outputs are copied between hosts, and a link's target is a path on
the host that wrote it. A declared path that is absolute or holds ``..``
is refused before anything is opened.

Every byte is read on each check: no (size, mtime) shortcut, because such
a shortcut is exactly how a changed output could pass as cached.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.tree_hash import CHUNK, MAX_FILES, TreeError, digest_at, relative_parts
from mlfleet.core.pipelines.state import OutputDigest

__all__ = ["CHUNK", "MAX_FILES", "OutputError", "hash_output", "hash_outputs", "verify_output", "verify_outputs"]


class OutputError(MlfleetError):
    """A declared output could not be hashed: missing, a link, a special file, or a path leaving the workdir."""

    def __init__(self, name: str, path: str, problem: str) -> None:
        self.name = name
        self.path = path
        self.problem = problem
        super().__init__(f"output {name} ({path}) {problem}")


def hash_outputs(workdir: Path, outputs: Mapping[str, str]) -> dict[str, OutputDigest]:
    """Every declared output (name -> path relative to ``workdir``) hashed; raises OutputError on the first bad one."""
    return {name: hash_output(workdir, name, path) for name, path in outputs.items()}


def hash_output(workdir: Path, name: str, path: str) -> OutputDigest:
    """One output's digest, walked from ``workdir`` without following any link."""
    try:
        sha, size, files = digest_at(workdir, relative_parts(path))
    except TreeError as exc:
        raise OutputError(name, path, exc.problem) from None
    return OutputDigest(name=name, path=path, sha256=sha, size=size, files=files)


def verify_output(digest: OutputDigest, root: Path | None = None) -> str | None:
    """None when the output is still there with the recorded sha256; else one sentence saying what moved.

    Where it is looked for: ``digest.stored`` (an absolute path the
    controller keeps), or ``root / digest.path`` (the workdir it was written in).
    """
    label = f"output {digest.name} ({digest.stored or digest.path})"
    if digest.stored is not None:
        stored = Path(digest.stored)
        base, parts = stored.parent, [stored.name]
    elif root is not None:
        base, parts = root, None
    else:
        return f"{label} has no known place"
    try:
        if parts is None:
            parts = relative_parts(digest.path)
        sha, size, files = digest_at(base, parts)
    except TreeError as exc:
        return f"{label} {exc.problem}"
    if (files is None) != (digest.files is None):
        was, now = ("a file", "a folder") if digest.files is None else ("a folder", "a file")
        return f"{label} was {was} and is now {now}"
    if sha != digest.sha256:
        return f"{label} changed (sha256 {_short(digest.sha256, sha)} → {_short(sha, digest.sha256)})"
    return None


def verify_outputs(outputs: Mapping[str, OutputDigest], root: Path | None = None) -> list[str]:
    """The problems of a cache hit's outputs, one sentence each; empty: every output is there, unchanged."""
    return [problem for digest in outputs.values() if (problem := verify_output(digest, root)) is not None]


def _short(text: str, other: str, keep: int = 8) -> str:
    differ = next((i for i, (a, b) in enumerate(zip(text, other)) if a != b), min(len(text), len(other)))
    keep = max(keep, differ + 1)
    return text if len(text) <= keep else text[:keep] + "…"
